"""HTTP endpoints: /metrics, /healthz, /readyz, /status, /report."""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

from monitor.webconfig import WebSecurity

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class HttpServer:
    """Serve the service's endpoints on a background thread.

    Parameters
    ----------
    service : object
        Exposes ``registry``, ``ready() -> (bool, str)`` and ``status() -> dict``.
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    web_config_file : str, optional
        Exporter-toolkit web configuration (TLS, basic auth), see :mod:`monitor.webconfig`; loaded
        here, so that a bad file fails before anything starts.
    """

    def __init__(self, service, host: str = "0.0.0.0", port: int = 9108, web_config_file: str | None = None):
        self.service = service
        self.host = host
        self.port = port
        self.web_config_file = web_config_file
        self.web = WebSecurity(web_config_file) if web_config_file else None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "HttpServer":
        service = self.service
        web = self.web

        class Handler(BaseHTTPRequestHandler):
            web_settings = None
            tls_error: Exception | None = None

            def setup(self):
                if web is not None:
                    self.web_settings = web.current()
                    if web.tls:
                        # The handshake runs here, on this connection's thread, never on the accept loop.
                        self.request.settimeout(getattr(self, "timeout", None) or 10.0)
                        try:
                            self.request = web.wrap(self.request, self.web_settings)
                        except (ssl.SSLError, OSError) as exc:
                            self.tls_error = exc
                super().setup()

            def finish(self):
                try:
                    super().finish()
                finally:
                    if web is not None and web.tls and self.tls_error is None:
                        self.request.close()  # the TLS socket; the server closes only the raw one it accepted

            def handle(self):
                if self.tls_error is not None:  # a scanner, plain HTTP, or a refused client certificate
                    log.debug("TLS handshake with %s failed: %s", self.client_address[0], self.tls_error)
                    return
                super().handle()

            def _send(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                extra = dict(self.web_settings.headers) if self.web_settings is not None else {}
                for name, value in {**extra, **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 (the stdlib's naming)
                path = self.path.split("?", 1)[0]
                if web is not None and not web.authorized(self.web_settings, path, self.headers.get("Authorization")):
                    self._send(401, b"unauthorized\n", "text/plain; charset=utf-8",
                               {"WWW-Authenticate": 'Basic realm="driftmon"'})
                elif path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept"))
                    self._send(200, encoder(service.registry), content_type)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ready, why = service.ready()
                    self._send(200 if ready else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/status":
                    body = json.dumps(service.status(), indent=1, sort_keys=True, allow_nan=False).encode()
                    self._send(200, body + b"\n", "application/json")
                elif path == "/report" and hasattr(service, "report"):
                    code, body = service.report(self.path.partition("?")[2])
                    self._send(code, body, "text/html; charset=utf-8" if code == 200 else "text/plain; charset=utf-8")
                else:
                    self._send(404, b"not found: try /metrics /healthz /readyz /status /report\n", "text/plain")

            do_HEAD = do_GET

            def log_message(self, fmt, *args):  # scrapes every 15 s would flood the log
                log.debug("http %s", fmt % args)

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="driftmon-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
