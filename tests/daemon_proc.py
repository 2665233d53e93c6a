"""Run `driftmon run` as a real subprocess and talk to it over HTTP."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class DaemonProcess:
    def __init__(self, config_path: str, port: int, log_path: str, env: dict | None = None,
                 tls=None, auth: tuple[str, str] | None = None):
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.env = dict(env or {})  # added to the environment (e.g. secrets)
        self.tls = tls  # an ssl.SSLContext: talk HTTPS (the daemon has http.web_config_file)
        self.auth = auth  # (user, password) for basic auth
        self.proc: subprocess.Popen | None = None
        self.killed = False  # by kill9(): a test's crash, not one to stop gracefully

    def start(self) -> "DaemonProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", self.config_path, "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.wait(lambda: self.get("/healthz") is not None, 30, "healthz")
        return self

    def get(self, path: str) -> bytes | None:
        scheme = "https" if self.tls is not None else "http"
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.port}{path}")
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.tls) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            return None if exc.code >= 500 else exc.read()
        except OSError:
            return None

    def status(self) -> dict | None:
        body = self.get("/status")
        return None if body is None else json.loads(body)

    def metrics(self) -> dict[tuple, float]:
        """(name, sorted label items) -> value of every sample on /metrics."""
        text = self.get("/metrics").decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()}")
            try:
                value = predicate()
            except (TypeError, KeyError):
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.log()}")

    def wait_windows(self, n: int, timeout: float = 60) -> dict:
        return self.wait(lambda: (s := self.status()) and s["windows_evaluated"] >= n and s, timeout, f"{n} windows")

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill9(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-6000:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


def counted(state_dir: str) -> tuple[int, int]:
    """(valid events, invalid messages) in a daemon's state: every logged window plus the open window
    of its last checkpoint. Over all replicas of a group this must equal what was produced, exactly."""
    events = invalid = 0
    for name in ("windows.jsonl.1", "windows.jsonl"):
        try:
            with open(os.path.join(state_dir, name)) as fh:
                for line in fh:
                    if line.strip():
                        window = json.loads(line)["window"]
                        events += window["events"]
                        invalid += window.get("invalid", 0)
        except FileNotFoundError:
            continue
    try:
        with open(os.path.join(state_dir, "checkpoint.json")) as fh:
            window = json.load(fh)["state"]["pipeline"]["window"]
        events += window["events"]
        invalid += window.get("invalid", 0)
    except FileNotFoundError:
        pass
    return events, invalid
