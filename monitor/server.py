"""HTTP endpoints: /metrics, /healthz, /readyz, /status, /report.

The server is built to stay up under misbehaving clients (scrapers that hang up, port scanners,
idle keep-alive pools, slow readers):

* Connections wait in a selector, not in threads, until their request arrives: an idle connection
  costs a file descriptor, never a thread.
* At most ``max_connections`` are open; a new one past the limit closes the connection that has been
  idle the longest (or, when every connection is busy, is itself closed), so idle clients cannot lock
  out a probe.
* Every connection has one deadline, ``request_timeout`` after it was accepted: a client that sends
  nothing, sends slowly or does not read its response is disconnected then.
* A handful of worker threads answer requests; handlers only read in-memory snapshots (no lock held
  across I/O), so a request takes microseconds to milliseconds.
* A client that goes away early is logged at debug level, never as a traceback.
* With a web config file (:mod:`monitor.webconfig`) the TLS handshake runs on the worker, within the
  connection's deadline, never on the accept loop.
"""

from __future__ import annotations

import collections
import json
import logging
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client.exposition import choose_encoder

from monitor.webconfig import WebSecurity

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)

#: Requests handled at once; handlers do no I/O but the response, so a few threads are plenty.
WORKERS = 4


class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0 semantics: the server closes after the response)."""

    service = None  # set on the subclass made per server
    web: WebSecurity | None = None  # likewise
    web_settings = None
    tls_error: Exception | None = None
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self):
        web = self.web
        if web is not None:
            self.web_settings = web.current()
            if web.tls:  # the socket's timeout (the connection's deadline) bounds the handshake
                try:
                    self.request = web.wrap(self.request, self.web_settings)
                except (ssl.SSLError, OSError) as exc:
                    self.tls_error = exc
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.web is not None and self.web.tls and self.tls_error is None:
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
        service, web = self.service, self.web
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
        log.debug("http %s %s", self.client_address[0], fmt % args)


class HttpServer:
    """Serve the service's endpoints on background threads.

    Parameters
    ----------
    service : object
        Exposes ``registry``, ``ready() -> (bool, str)`` and ``status() -> dict``; none of them may
        block on a lock held across I/O.
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    web_config_file : str, optional
        Exporter-toolkit web configuration (TLS, basic auth), see :mod:`monitor.webconfig`; loaded
        here, so that a bad file fails before anything starts.
    request_timeout : float
        Seconds from accepting a connection until its response must be written.
    max_connections : int
        Connections open at once, idle ones included.
    """

    def __init__(self, service, host: str = "0.0.0.0", port: int = 9108, web_config_file: str | None = None,
                 request_timeout: float = 10.0, max_connections: int = 64):
        self.service = service
        self.host = host
        self.port = port
        self.web_config_file = web_config_file
        self.web = WebSecurity(web_config_file) if web_config_file else None
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.dropped = 0  # connections closed for the limit or the deadline (for tests and debugging)
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._wake_r = self._wake_w = None
        self._lock = threading.Lock()
        self._busy: dict[socket.socket, float] = {}  # handed to a worker -> deadline
        self._done: collections.deque = collections.deque()  # finished by workers, to forget

    def start(self) -> "HttpServer":
        """Bind and listen (raises OSError, e.g. EADDRINUSE, before any thread starts), then serve."""
        handler = type("Handler", (_Handler,), {"service": self.service, "web": self.web})
        self._httpd = HTTPServer((self.host, self.port), handler)  # binds and listens
        self._httpd.socket.setblocking(False)
        self.port = self._httpd.server_address[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="driftmon-http-worker")
        self._thread = threading.Thread(target=self._loop, name="driftmon-http", daemon=True)
        self._thread.start()
        return self

    # ---- the accept/dispatch loop ----------------------------------------------------------------

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        listener = self._httpd.socket
        sel.register(listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle: collections.OrderedDict = collections.OrderedDict()  # socket -> (deadline, address), oldest first
        try:
            while not self._stopping.is_set():
                try:
                    self._step(sel, listener, idle)
                except Exception:  # never let one bad connection stop the server
                    log.exception("http: error in the accept loop")
                    time.sleep(0.05)
        finally:
            for sock in list(idle):
                _close(sock)
            sel.close()

    def _step(self, sel, listener, idle) -> None:
        for key, _events in sel.select(timeout=0.5):
            if key.data == "listen":
                self._accept(sel, listener, idle)
            elif key.data == "wake":
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            else:  # the request (or a hang-up) arrived: a worker reads and answers it
                sock = key.fileobj
                if sock not in idle:
                    continue  # closed earlier in this round to make room for a new connection
                sel.unregister(sock)
                deadline, address = idle.pop(sock)
                with self._lock:
                    self._busy[sock] = deadline
                self._pool.submit(self._serve, sock, address, deadline)
        self._expire(sel, idle)

    def _open(self, idle) -> int:
        """Connections open now (waiting for their request or being answered)."""
        with self._lock:
            while self._done:
                self._busy.pop(self._done.popleft(), None)
            return len(idle) + len(self._busy)

    def _accept(self, sel, listener, idle) -> None:
        for _ in range(64):  # bounded, so the deadlines are still checked under a connection flood
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                log.warning("http: cannot accept a connection: %s", exc)
                return
            if self._open(idle) >= self.max_connections:
                if idle:  # make room: the connection idle the longest goes
                    oldest, _ = idle.popitem(last=False)
                    sel.unregister(oldest)
                    _close(oldest)
                else:  # every connection is being answered: refuse this one
                    self.dropped += 1
                    log.debug("http: %d connections busy, closing one from %s", self.max_connections, address[0])
                    _close(sock)
                    continue
                self.dropped += 1
            sock.setblocking(False)
            idle[sock] = (time.monotonic() + self.request_timeout, address)
            sel.register(sock, selectors.EVENT_READ, "client")

    def _expire(self, sel, idle) -> None:
        now = time.monotonic()
        while idle:
            sock, (deadline, address) = next(iter(idle.items()))
            if deadline > now:
                break  # idle is in accept order, so deadlines are increasing
            idle.popitem(last=False)
            sel.unregister(sock)
            self.dropped += 1
            log.debug("http: %s sent no request within %.0f s, closing", address[0], self.request_timeout)
            _close(sock)
        self._open(idle)  # forget finished connections
        with self._lock:
            late = [sock for sock, deadline in self._busy.items() if deadline <= now]
        for sock in late:  # a slow sender or reader: wake its worker with an error
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- a worker ----------------------------------------------------------------------------------

    def _serve(self, sock: socket.socket, address, deadline: float) -> None:
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request deadline passed before a worker was free")
            sock.setblocking(True)
            sock.settimeout(remaining)  # per call; the loop enforces the total by shutting the socket
            self._httpd.RequestHandlerClass(sock, address, self._httpd)
        except (OSError, ValueError) as exc:  # went away, timed out, reset, or sent garbage
            log.debug("http: connection from %s ended early: %s", address[0], exc)
        except Exception:  # a bug in a handler must not kill the worker; the client gets a closed socket
            log.exception("http: error answering %s", address[0])
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)  # send FIN after the response, as socketserver does
            except OSError:
                pass
            _close(sock)
            self._done.append(sock)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._httpd.server_close()
        for s in (self._wake_r, self._wake_w):
            _close(s)
        self._httpd = None


def _close(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass

