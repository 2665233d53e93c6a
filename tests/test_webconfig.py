"""TLS and basic auth on the HTTP endpoints (exporter-toolkit web config), on the real HTTP server.

The service behind the server is a small stand-in with a private registry (the daemon itself is
tested with a real Prometheus in tests/test_web_prometheus.py); the server, TLS and bcrypt are real.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from monitor.config import ConfigError
from monitor.server import HttpServer
from monitor.webconfig import load_web_config
from tests.certs import make_pki

PASSWORD = "scrape-pass-5e2b"


class Service:
    def __init__(self):
        self.registry = CollectorRegistry()
        Counter("driftmon_test_total", "test counter", registry=self.registry).inc(3)

    def ready(self):
        return False, "waiting for partitions"

    def status(self):
        return {"features": {"car_value": {"psi": 0.1}}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def bcrypt_hash(password: str, prefix: str = "$2y$") -> str:
    # $2y$ is what htpasswd writes (the exporter-toolkit docs' example).
    return prefix + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()[4:]


def write_web_config(path, tree: dict) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def serve(web_config: str | None) -> HttpServer:
    return HttpServer(Service(), "127.0.0.1", 0, web_config).start()


def get(server, path, *, tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None):
    conn = (http.client.HTTPSConnection("127.0.0.1", server.port, context=tls, timeout=10) if tls
            else http.client.HTTPConnection("127.0.0.1", server.port, timeout=10))
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def client_context(pki, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client), str(pki.client_key), password=pki.client_key_password)
    return ctx


def test_https_with_basic_auth_protects_data_but_not_the_probes(tmp_path, pki):
    path = write_web_config(tmp_path / "web.yml", {
        "tls_server_config": {"cert_file": str(pki.server), "key_file": str(pki.server_key)},
        "http_server_config": {"headers": {"Strict-Transport-Security": "max-age=31536000"}},
        "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD)}})
    server = serve(path)
    tls = client_context(pki)
    try:
        for endpoint in ("/metrics", "/status", "/nothing"):
            code, headers, body = get(server, endpoint, tls=tls)
            assert code == 401 and headers["WWW-Authenticate"] == 'Basic realm="driftmon"', endpoint
            assert b"car_value" not in body and b"driftmon_test_total" not in body
            assert get(server, endpoint, tls=tls, auth=("prometheus", "wrong"))[0] == 401
            assert get(server, endpoint, tls=tls, auth=("nobody", PASSWORD))[0] == 401
        code, headers, body = get(server, "/metrics", tls=tls, auth=("prometheus", PASSWORD))
        assert code == 200 and b"driftmon_test_total 3.0" in body
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        assert get(server, "/status", tls=tls, auth=("prometheus", PASSWORD))[2].startswith(b"{")
        # Probes: TLS, no credentials (kubelet cannot send them easily).
        assert get(server, "/healthz", tls=tls)[:1] == (200,)
        code, _, body = get(server, "/readyz", tls=tls)
        assert (code, body) == (503, b"waiting for partitions\n")
        # Plain HTTP to the TLS port gets no answer, and the server goes on serving.
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            get(server, "/healthz")
        # A client that does not trust the server's CA refuses it.
        with pytest.raises(ssl.SSLCertVerificationError):
            get(server, "/healthz", tls=ssl.create_default_context(cafile=str(pki.other_ca)))
        assert get(server, "/healthz", tls=tls)[0] == 200
    finally:
        server.stop()


def test_client_certificates_are_required_and_verified(tmp_path, pki):
    path = write_web_config(tmp_path / "web.yml", {"tls_server_config": {
        "cert_file": str(pki.server), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca),
        "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS13"}})
    server = serve(path)
    try:
        assert get(server, "/metrics", tls=client_context(pki, cert=True))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(server, "/metrics", tls=client_context(pki))
        assert get(server, "/healthz", tls=client_context(pki, cert=True))[0] == 200
    finally:
        server.stop()


def test_changed_users_and_certificates_are_picked_up_while_serving(tmp_path, pki, caplog):
    web = tmp_path / "web.yml"
    tree = {"tls_server_config": {"cert_file": str(pki.server), "key_file": str(pki.server_key)},
            "basic_auth_users": {"prometheus": bcrypt_hash("old-password")}}
    server = serve(write_web_config(web, tree))
    tls = client_context(pki)
    try:
        assert get(server, "/metrics", tls=tls, auth=("prometheus", "old-password"))[0] == 200
        tree["basic_auth_users"] = {"prometheus": bcrypt_hash(PASSWORD)}
        write_web_config(web, tree)
        deadline = time.monotonic() + 30
        while get(server, "/metrics", tls=tls, auth=("prometheus", PASSWORD))[0] != 200:
            assert time.monotonic() < deadline, "the new password was never accepted"
            time.sleep(0.2)
        assert get(server, "/metrics", tls=tls, auth=("prometheus", "old-password"))[0] == 401
        # A broken file keeps the previous settings (and the daemon serving).
        caplog.set_level("ERROR", logger="monitor.webconfig")
        web.write_text("tls_server_config: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}\n")
        deadline = time.monotonic() + 30
        while "web config not reloaded" not in caplog.text:  # each connection may trigger the check
            assert time.monotonic() < deadline, "the broken file was never noticed"
            assert get(server, "/metrics", tls=tls, auth=("prometheus", PASSWORD))[0] == 200
            time.sleep(0.2)
        assert "/nonexistent.pem" in caplog.text
        assert get(server, "/metrics", tls=tls, auth=("prometheus", PASSWORD))[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("tree, problem", [
    ({"tls_server_config": {"cert_file": "a.pem", "key_file": "a.key", "cipher_suites": ["X"]}},
     "tls_server_config.cipher_suites is not supported by driftmon"),
    ({"rate_limit": {"interval": "1s", "burst": 2}}, "rate_limit is not supported by driftmon"),
    ({"basic_auth_user": {}}, "unknown field basic_auth_user"),
    ({"basic_auth_users": {"prometheus": "plain-text-password"}}, "basic_auth_users.prometheus: not a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "a.pem", "key_file": "a.key",
                            "client_auth_type": "RequireAndVerifyClientCert"}}, "client_ca_file` is required"),
    ({"tls_server_config": {"cert_file": "a.pem", "key_file": "a.key", "client_auth_type": "RequireAnyClientCert"}},
     "client_auth_type"),
    ({"tls_server_config": {"cert_file": "missing.pem", "key_file": "missing.key"}}, "cannot load cert_file"),
])
def test_a_bad_web_config_is_one_error_naming_the_key(tmp_path, tree, problem):
    path = write_web_config(tmp_path / "web.yml", tree)
    with pytest.raises(ConfigError) as info:
        HttpServer(Service(), "127.0.0.1", 0, path)
    assert info.value.key == "http.web_config_file"
    assert problem.replace("`", "") in str(info.value).replace("`", ""), str(info.value)
    assert "plain-text-password" not in str(info.value)


def test_relative_certificate_paths_are_resolved_against_the_web_config(tmp_path, pki):
    (tmp_path / "web").mkdir()
    path = write_web_config(tmp_path / "web" / "web.yml",
                            {"tls_server_config": {"cert_file": "../c.pem", "key_file": "../c.key"}})
    config = load_web_config(path)
    assert config.tls_server_config.cert_file == str(tmp_path / "web" / ".." / "c.pem")


def test_basic_auth_is_checked_by_bcrypt_once_per_password(tmp_path, pki, monkeypatch):
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda *a: calls.append(1) or real(*a))
    path = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD)}})
    server = serve(path)
    try:
        for _ in range(5):
            assert get(server, "/metrics", auth=("prometheus", PASSWORD))[0] == 200
        assert len(calls) == 1  # scrapes every few seconds must not pay bcrypt's cost each time
        for _ in range(2):
            assert get(server, "/metrics", auth=("prometheus", "wrong"))[0] == 401
        assert len(calls) == 3  # wrong passwords are never cached: each costs a full bcrypt check
    finally:
        server.stop()


def test_idle_tls_client_does_not_block_other_connections(tmp_path, pki):
    path = write_web_config(tmp_path / "web.yml",
                            {"tls_server_config": {"cert_file": str(pki.server), "key_file": str(pki.server_key)}})
    server = serve(path)
    try:
        idle = socket.create_connection(("127.0.0.1", server.port))  # never sends a ClientHello
        try:
            assert get(server, "/healthz", tls=client_context(pki))[0] == 200
        finally:
            idle.close()
    finally:
        server.stop()


def test_run_and_check_config_refuse_a_bad_web_config_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from monitor.synth import car_loan
    from tests.helpers import write_setup

    (tmp_path / "web.yml").write_text("basic_auth_users: {prometheus: hunter2}\n")
    path, _ = write_setup(tmp_path, car_loan(seed=1), train_rows=2000, window={"size": 100},
                          kafka={"bootstrap_servers": "127.0.0.1:9", "topic": "p", "group_id": "g"},
                          http={"web_config_file": "web.yml", "port": 0})
    for command in (["check-config"], ["run"]):
        proc = subprocess.run([sys.executable, "-m", "monitor.cli", *command, "--config", path],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("config error: http.web_config_file: "), proc.stderr
        assert "basic_auth_users.prometheus: not a bcrypt hash" in lines[0]
        assert "hunter2" not in proc.stderr
