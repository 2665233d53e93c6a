"""The HTTP server under misbehaving clients, with real sockets: idle, slow, many, and impatient ones."""

from __future__ import annotations

import logging
import socket
import struct
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from monitor.server import HttpServer


class Service:
    """A service whose /metrics is large enough (~250 kB) that a client hanging up early breaks the write."""

    def __init__(self):
        self.registry = CollectorRegistry()
        gauge = Gauge("driftmon_test_value", "A test series.", ["i"], registry=self.registry)
        for i in range(5_000):
            gauge.labels(str(i)).set(i)

    def ready(self):
        return True, "ready"

    def status(self):
        return {"ok": True}


@pytest.fixture
def server():
    s = HttpServer(Service(), "127.0.0.1", 0, request_timeout=1.5, max_connections=8).start()
    yield s
    s.stop()


def get(server, path: str = "/healthz", timeout: float = 10.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def wait_closed(sock: socket.socket, timeout: float = 30.0) -> float:
    """Block until the server closes the connection; returns how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_client_that_sends_nothing_is_dropped_after_the_timeout(server):
    sock = connect(server)
    try:
        took = wait_closed(sock)  # raises socket.timeout (fails) if the server never drops it
    finally:
        sock.close()
    assert took >= 1.0, f"dropped after {took:.2f} s, before the 1.5 s request timeout"
    assert server.dropped >= 1


def test_a_client_that_sends_half_a_request_is_dropped_at_the_deadline(server):
    sock = connect(server)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        took = wait_closed(sock)
    finally:
        sock.close()
    assert took < 30


def test_idle_connections_past_the_limit_do_not_stop_healthz(server):
    idle = [connect(server) for _ in range(40)]  # five times max_connections, none sends anything
    try:
        for _ in range(10):
            assert get(server) == (200, b"ok\n")
        # The oldest idle connections were closed to make room (the limit holds).
        closed = 0
        for sock in idle[:8]:
            sock.settimeout(10)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                closed += 1
        assert closed == 8
    finally:
        for sock in idle:
            sock.close()


def test_clients_that_hang_up_early_leave_no_traceback(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="monitor.server")
    server = HttpServer(Service(), "127.0.0.1", 0, request_timeout=30, max_connections=100).start()
    try:
        hang_up(server, capfd, caplog)
    finally:
        server.stop()


def hang_up(server, capfd, caplog):
    for _ in range(30):
        sock = connect(server)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        sock.close()
    for _ in range(30):  # and ones that read a little of the response first
        sock = connect(server)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(100)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    status, body = get(server, "/metrics")  # still serving, and the response is whole
    assert status == 200 and body.count(b"driftmon_test_value{") == 5_000
    # wait until the workers have dealt with every aborted connection
    deadline = time.monotonic() + 30
    while server._open({}) and time.monotonic() < deadline:
        time.sleep(0.05)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert all(r.exc_info is None and r.levelno <= logging.DEBUG for r in caplog.records), \
        [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert any("ended early" in r.getMessage() for r in caplog.records)  # the hang-ups were seen, at debug


def test_a_port_in_use_fails_before_any_thread_starts():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(OSError):
            HttpServer(Service(), "127.0.0.1", holder.getsockname()[1]).start()
    finally:
        holder.close()
