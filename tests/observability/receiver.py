"""A real HTTP webhook receiver for tests: a thread serving http.server on 127.0.0.1, recording every
POST (headers and raw body) and answering with a status the test chooses; it can be stopped and
started again on the same port (a receiver that is down, then back)."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from typing import Any


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.lock = threading.Lock()
        self.port = port
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Receiver:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.received.append({"headers": dict(self.headers), "body": body, "path": self.path,
                                           "status": outer.status})
                    status = outer.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.allow_reuse_address = True
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
