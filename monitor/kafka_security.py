"""TLS and SASL towards Kafka: the client's TLS context, and a one-shot check of each bootstrap broker.

kafka-python treats a certificate the client cannot verify, a client certificate the broker refuses
and a wrong SASL password like a network blip: it reconnects with backoff, logs an error each time,
and gives up only when its bootstrap times out, with "Unable to bootstrap". None of these heal by
waiting, so before the Kafka clients start, :func:`check_brokers` connects once to each bootstrap
server on a connection of its own (TLS handshake, an ApiVersions request, SASL handshake and
authentication, exactly as the clients will) and turns a refusal into a :class:`KafkaSecurityError`
naming the broker, the problem and the config key to look at. Network failures (nothing listens, a
timeout) are left to the clients, which retry them.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct

from monitor.config import ConfigError, KafkaConfig

__all__ = ["KafkaSecurityError", "check_brokers", "ssl_context"]

log = logging.getLogger(__name__)

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_ERRORS = {33: "unsupported SASL mechanism", 34: "illegal SASL state", 58: "SASL authentication failed"}


class KafkaSecurityError(ConfigError):
    """A broker refused the client's TLS or SASL settings: one line, exit 2, no retries."""


def ssl_context(cfg: KafkaConfig, password: str | None) -> ssl.SSLContext:
    """The TLS context every Kafka client of the daemon uses (kafka-python's, plus clear errors).

    Parameters
    ----------
    cfg : KafkaConfig
    password : str or None
        Passphrase of ``ssl_keyfile`` when the key is encrypted (from env or a mounted file).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.ssl_check_hostname
    try:
        if cfg.ssl_cafile:
            ctx.load_verify_locations(cfg.ssl_cafile)
        else:
            ctx.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("kafka.ssl_cafile", f"cannot load CA certificates from {cfg.ssl_cafile}: "
                          f"{_reason(exc)}") from None
    if cfg.ssl_keyfile and not cfg.ssl_certfile:
        raise ConfigError("kafka.ssl_certfile", "required with kafka.ssl_keyfile (the client certificate)")
    if cfg.ssl_certfile:
        try:
            # An empty passphrase must not reach OpenSSL's terminal prompt for an encrypted key.
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile, password=password or "")
        except FileNotFoundError as exc:
            # load_cert_chain leaves exc.filename None: name the file that is not there
            missing = exc.filename or next((p for p in (cfg.ssl_certfile, cfg.ssl_keyfile)
                                            if p and not os.path.exists(p)), cfg.ssl_certfile)
            key = "kafka.ssl_keyfile" if missing == cfg.ssl_keyfile else "kafka.ssl_certfile"
            raise ConfigError(key, f"cannot read {missing}: {exc.strerror}") from None
        except (OSError, ssl.SSLError) as exc:
            hint = ("wrong or missing key passphrase (kafka.ssl_password_env / kafka.ssl_password_file)"
                    if "bad decrypt" in str(exc).lower() or "PEM lib" in str(exc) else _reason(exc))
            raise ConfigError("kafka.ssl_keyfile", f"cannot load the client certificate "
                              f"{cfg.ssl_certfile} and key {cfg.ssl_keyfile or '(in the certificate file)'}: "
                              f"{hint}") from None
    return ctx


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc)


def _servers(bootstrap: str | list[str]) -> list[tuple[str, int]]:
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("kafka.bootstrap_servers", f"{item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


class _Conn:
    """One blocking Kafka connection: size-prefixed requests with header v1, responses with header v0."""

    def __init__(self, sock, client_id: str):
        self.sock = sock
        self.client_id = client_id.encode()
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhih", api_key, version, self.correlation, len(self.client_id)) + self.client_id
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        size = struct.unpack(">i", self._read(4))[0]
        frame = self._read(size)
        return frame[4:]  # skip the correlation id

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionResetError("the broker closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def _string(data: bytes, at: int) -> tuple[str | None, int]:
    n = struct.unpack_from(">h", data, at)[0]
    at += 2
    if n < 0:
        return None, at
    return data[at:at + n].decode(errors="replace"), at + n


def _authenticate(conn: _Conn, options: dict, where: str) -> None:
    mechanism = options["sasl_mechanism"]
    body = conn.request(_SASL_HANDSHAKE, 1, struct.pack(">h", len(mechanism)) + mechanism.encode())
    error = struct.unpack_from(">h", body, 0)[0]
    if error:
        count, at, offered = struct.unpack_from(">i", body, 2)[0], 6, []
        for _ in range(max(count, 0)):
            name, at = _string(body, at)
            offered.append(name)
        raise KafkaSecurityError("kafka.sasl_mechanism", f"broker {where} does not accept SASL mechanism "
                                 f"{mechanism}; it offers {', '.join(offered) or 'none'}")
    from monitor.kafka_client import sasl_mechanism  # not at the top: kafka_client imports this module

    client = sasl_mechanism(options)
    for _ in range(5):  # PLAIN takes one round trip, SCRAM two
        token = client.auth_bytes()
        body = conn.request(_SASL_AUTHENTICATE, 0, struct.pack(">i", len(token)) + token)
        error = struct.unpack_from(">h", body, 0)[0]
        message, at = _string(body, 2)
        if error:
            user = options.get("sasl_plain_username")
            raise KafkaSecurityError(
                "kafka.sasl_password_env",
                f"broker {where} rejected SASL {mechanism} user {user!r}: "
                f"{message or _ERRORS.get(error, f'error code {error}')} (check kafka.sasl_plain_username "
                "and the password in kafka.sasl_password_env / kafka.sasl_password_file)")
        size = struct.unpack_from(">i", body, at)[0]
        client.receive(body[at + 4:at + 4 + max(size, 0)])
        if client.is_done():
            return


def _refusal(exc: ssl.SSLError, where: str) -> KafkaSecurityError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "mismatch" in reason or "hostname" in reason.lower():
            return KafkaSecurityError(
                "kafka.bootstrap_servers",
                f"broker {where}: its TLS certificate is not valid for this address ({reason}); connect by a "
                "name the certificate lists (kafka.ssl_check_hostname: false turns the check off, not advised)")
        return KafkaSecurityError(
            "kafka.ssl_cafile", f"broker {where}: its TLS certificate does not verify ({reason}); "
                                "kafka.ssl_cafile must hold the CA that signed the broker's certificate")
    reason = str(exc.reason or exc)
    if "CERTIFICATE" in reason.upper() and "ALERT" in reason.upper():
        return KafkaSecurityError(
            "kafka.ssl_certfile", f"broker {where} refused the TLS connection ({reason}): it wants a client "
                                  "certificate signed by a CA it trusts (kafka.ssl_certfile, kafka.ssl_keyfile)")
    return KafkaSecurityError("kafka.security_protocol",
                              f"broker {where}: TLS failed ({reason}); is this a TLS listener?")


def check_brokers(cfg: KafkaConfig, options: dict, timeout: float = 5.0) -> int:
    """Connect once to each bootstrap server as the clients will; raise KafkaSecurityError on a refusal.

    Parameters
    ----------
    cfg : KafkaConfig
    options : dict
        The clients' options (:func:`monitor.kafka_client.client_options`): TLS context and SASL credentials.
    timeout : float
        Seconds per socket operation.

    Returns
    -------
    int
        How many bootstrap servers answered and accepted the credentials (0 when none could be
        reached: that is for the clients to retry, not an error here).
    """
    tls = cfg.security_protocol in ("SSL", "SASL_SSL")
    sasl = cfg.security_protocol.startswith("SASL") and cfg.sasl_mechanism not in (None, "OAUTHBEARER")
    accepted = 0
    for host, port in _servers(cfg.bootstrap_servers):
        where = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            log.info("broker %s not reachable for the security check (%s); the clients will retry", where,
                     _reason(exc))
            continue
        try:
            if tls:
                sock = options["ssl_context"].wrap_socket(sock, server_hostname=host)
            conn = _Conn(sock, cfg.client_id)
            conn.request(_API_VERSIONS, 0, b"")  # TLS 1.3: a refused client certificate shows here
            if sasl:
                _authenticate(conn, options, where)
            accepted += 1
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            log.warning("broker %s closed the connection during the TLS/SASL check (%s): is "
                        "kafka.security_protocol right for this listener?", where, _reason(exc))
        except ssl.SSLError as exc:
            raise _refusal(exc, where) from None
        except (OSError, struct.error) as exc:
            log.info("security check of broker %s inconclusive: %s", where, _reason(exc))
        finally:
            sock.close()
    return accepted
