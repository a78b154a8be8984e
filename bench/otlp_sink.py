#!/usr/bin/env python3
"""An OTLP/HTTP sink for benchmarks: answers every POST 200 after reading its body, counts spans'
requests and bytes, decodes nothing (the cost measured is the gateway's, not the collector's).

Usage: python bench/otlp_sink.py [--port 4318]   (prints "listening <port>", then a count per 5 s)
"""
from __future__ import annotations

import argparse
import http.server
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=4318)
    a = ap.parse_args()
    stats = {"posts": 0, "bytes": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(n)
            stats["posts"] += 1
            stats["bytes"] += n
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("listening", server.server_address[1], flush=True)

    def report() -> None:
        while True:
            time.sleep(5)
            print(f"posts {stats['posts']} bytes {stats['bytes']}", flush=True)

    threading.Thread(target=report, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
