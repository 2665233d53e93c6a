"""A real HTTP receiver for webhook tests: records every POST it gets."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Listen on a loopback port and record POSTed requests (path, headers, body).

    ``status`` is the HTTP code answered (set it to 503 to play a receiver that is down).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    code = receiver.status
                    if code < 300:
                        receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def payloads(self, path: str | None = None) -> list[dict]:
        with self._lock:
            return [json.loads(r["body"]) for r in self.requests if path is None or r["path"] == path]

    def wait_for(self, predicate, timeout: float = 30.0, path: str | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.payloads(path)
            if predicate(got):
                return got
            time.sleep(0.1)
        raise AssertionError(f"receiver: condition not met within {timeout} s; got {self.payloads(path)}")

    def close(self):
        self._server.shutdown()
        self._server.server_close()
