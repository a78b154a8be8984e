"""A real HTTP webhook receiver for tests: a thread serving http.server on 127.0.0.1, recording every
POST (headers and raw body) and answering with a status the test chooses; it can be stopped and
started again on the same port (a receiver that is down, then back). `reserve()` holds a port for
a receiver that is down: bound but not listening, so connections are refused and no other process
can take the port before start() listens on that same socket."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from typing import Any


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        # Seconds between recording a POST and answering it: the window in which the receiver has
        # the event and the sender does not know yet (a loaded machine opens it by itself).
        self.answer_delay = 0.0
        self.lock = threading.Lock()
        self.port = port
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.reserved: socket.socket | None = None

    def reserve(self) -> Receiver:
        """Bind a port without listening: connections to it are refused until start()."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", self.port))
        self.reserved = sock
        self.port = sock.getsockname()[1]
        return self

    def start(self) -> Receiver:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.received.append({"headers": dict(self.headers), "body": body, "path": self.path,
                                           "status": outer.status})
                    status = outer.status
                if outer.answer_delay:
                    time.sleep(outer.answer_delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        if self.reserved is not None:
            # The reserved socket itself starts listening: the port was never free in between.
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
            self.server.socket.close()
            self.server.socket, self.reserved = self.reserved, None
            self.server.server_address = self.server.socket.getsockname()
            self.server.server_activate()
        else:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, status: int | None = 200) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.received if status is None or r["status"] == status]

    def verify_all(self, secret: str) -> None:
        with self.lock:
            for r in self.received:
                want = "sha256=" + hmac.new(secret.encode(), r["body"], hashlib.sha256).hexdigest()
                assert hmac.compare_digest(r["headers"]["X-Gateway-Signature"], want), r
