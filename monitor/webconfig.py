"""TLS and basic auth for the HTTP endpoints, from a Prometheus exporter-toolkit web configuration file.

The format is the one every Prometheus exporter reads with ``--web.config.file``
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md), so the same
file, Secret and ServiceMonitor settings work for driftmon::

    tls_server_config:
      cert_file: /etc/driftmon/web/tls.crt
      key_file: /etc/driftmon/web/tls.key
      client_ca_file: /etc/driftmon/web/ca.crt           # optional: client certificates
      client_auth_type: RequireAndVerifyClientCert       # or VerifyClientCertIfGiven, NoClientCert
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...                              # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Keys of the format that driftmon does not implement (inline ``cert``/``key``/``client_ca``,
``client_allowed_sans``, cipher and curve choices, ``rate_limit``, client auth types that do not
verify the certificate) are errors, not silently ignored. Like the exporters, driftmon re-reads the
file and the certificates when they change (cert-manager rotations), keeping the previous settings if
the new ones do not load. Unlike them, ``/healthz`` and ``/readyz`` answer without basic auth, so that
kubelet probes work (they still go over TLS; see docs/helm.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import threading
import time
from typing import Literal

import msgspec
import yaml

from monitor.config import ConfigError

__all__ = ["PUBLIC_PATHS", "WebConfig", "WebSecurity", "load_web_config"]

log = logging.getLogger(__name__)

#: Paths served without basic auth: kubelet probes cannot easily send credentials, and these
#: bodies say only "ok" or why the daemon is not ready.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})

_KEY = "http.web_config_file"
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_UNSUPPORTED = {
    "tls_server_config": ("cert", "key", "client_ca", "client_allowed_sans", "cipher_suites",
                          "prefer_server_cipher_suites", "curve_preferences"),
    "": ("rate_limit",),
}


class _Node(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TlsServerConfig(_Node):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] = \
        "NoClientCert"
    min_version: Literal["TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS12", "TLS13"] = "TLS13"

    def __post_init__(self):
        if self.client_auth_type != "NoClientCert" and not self.client_ca_file:
            raise ValueError(f"`client_ca_file` is required with client_auth_type {self.client_auth_type}")
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            raise ValueError("`min_version` is above `max_version`")


class HttpServerConfig(_Node):
    http2: bool = True  # accepted for compatibility; driftmon serves HTTP/1.1
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self):
        for name, value in self.headers.items():
            if not name or any(c in name + value for c in "\r\n"):
                raise ValueError(f"`headers`: invalid header {name!r}")


class WebConfig(_Node):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = msgspec.field(default_factory=HttpServerConfig)
    basic_auth_users: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self):
        for user, hashed in self.basic_auth_users.items():
            if not user or ":" in user:
                raise ValueError(f"`basic_auth_users`: invalid user name {user!r}")
            if not (isinstance(hashed, str) and hashed[:4] in ("$2a$", "$2b$", "$2y$") and len(hashed) == 60):
                raise ValueError(f"`basic_auth_users.{user}`: not a bcrypt hash (htpasswd -nBC 10 \"\" | tr -d ':\\n')")


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web configuration file; ConfigError naming ``http.web_config_file`` otherwise.

    Relative certificate paths are resolved against the file's folder (as the exporter toolkit does).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(_KEY, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_KEY, f"{path} is not valid YAML: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(_KEY, f"{path}: must be a mapping of keys")
    for section, keys in _UNSUPPORTED.items():
        node = data.get(section) if section else data
        for key in keys:
            if isinstance(node, dict) and key in node:
                where = f"{section}.{key}" if section else key
                raise ConfigError(_KEY, f"{path}: {where} is not supported by driftmon")
    try:
        config = msgspec.convert(data, WebConfig)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`", "")
        raise ConfigError(_KEY, f"{path}: {text}") from None
    base = os.path.dirname(os.path.abspath(path))
    tls = config.tls_server_config
    if tls is not None:
        tls.cert_file = os.path.join(base, tls.cert_file)
        tls.key_file = os.path.join(base, tls.key_file)
        if tls.client_ca_file:
            tls.client_ca_file = os.path.join(base, tls.client_ca_file)
    return config


def _server_context(tls: TlsServerConfig, path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(_KEY, f"{path}: cannot load cert_file {tls.cert_file} / key_file {tls.key_file}: "
                          f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}") from None
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(_KEY, f"{path}: cannot load client_ca_file {tls.client_ca_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    ctx.verify_mode = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                       "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}[tls.client_auth_type]
    return ctx


def _stamp(names: list[str]) -> tuple:
    """What identifies the files' present content: a changed (or replaced) file changes it."""
    out = []
    for name in names:
        try:
            st = os.stat(name)
            out.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((name, None, None, None))
    return tuple(out)


class _Settings:
    """One consistent set of settings: a connection uses the one current when it arrived."""

    __slots__ = ("context", "users", "headers", "stamp")

    def __init__(self, context, users, headers, stamp):
        self.context = context
        self.users = users
        self.headers = headers
        self.stamp = stamp


class WebSecurity:
    """TLS context, basic-auth users and extra headers of the HTTP server, reloaded when files change.

    Parameters
    ----------
    path : str
        The web configuration file.
    check_interval : float
        At most this often (seconds) the file and certificates are checked for changes.
    """

    _CACHE_SIZE = 64

    def __init__(self, path: str, check_interval: float = 1.0):
        self.path = path
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._settings = self._load()
        self.tls = self._settings.context is not None  # fixed at start: a port does not switch protocols
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, str] = {}  # hmac(user:password) -> the hash it matched
        self._dummy: str | None = None  # checked for unknown users, so that they cost as much time as known ones
        if self.tls and not self._settings.users:
            log.info("HTTP endpoints served over TLS, without basic auth")
        if not self.tls and self._settings.users:
            log.warning("basic auth without TLS: passwords cross the network in the clear")

    def _files(self, config: WebConfig) -> list[str]:
        names = [self.path]
        tls = config.tls_server_config
        if tls is not None:
            names += [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        return names

    def _load(self) -> _Settings:
        config = load_web_config(self.path)
        tls = config.tls_server_config
        context = None if tls is None else _server_context(tls, self.path)
        return _Settings(context, dict(config.basic_auth_users), dict(config.http_server_config.headers),
                         _stamp(self._files(config)))

    def current(self) -> _Settings:
        """The settings for a new connection, after picking up changed files (at most every check_interval)."""
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return self._settings
        with self._lock:
            if now - self._checked < self.check_interval:
                return self._settings
            self._checked = now
            settings = self._settings
            stamp = _stamp([name for name, *_ in settings.stamp])
            if stamp != settings.stamp:
                try:
                    fresh = self._load()
                except ConfigError as exc:
                    log.error("web config not reloaded, keeping the previous settings: %s", exc)
                    settings.stamp = stamp  # log once per change, not on every connection
                else:
                    if (fresh.context is not None) != self.tls:
                        log.error("web config not reloaded: TLS cannot be switched on or off while running")
                        settings.stamp = stamp
                    else:
                        log.info("web config reloaded from %s", self.path)
                        self._settings = fresh
                        self._verified.clear()
            return self._settings

    def wrap(self, sock, settings: _Settings):
        """Server-side TLS on an accepted socket (the handshake runs now, under the socket's timeout)."""
        return settings.context.wrap_socket(sock, server_side=True)

    def authorized(self, settings: _Settings, path: str, header: str | None) -> bool:
        """Whether a request may see ``path``: no users configured, a public path, or valid basic auth."""
        if not settings.users or path in PUBLIC_PATHS:
            return True
        if not header or not header[:6].lower() == "basic ":
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = settings.users.get(user)
        key = hmac.new(self._cache_key, f"{user}:{password}".encode(), hashlib.sha256).digest()
        if hashed is not None and self._verified.get(key) == hashed:
            return True  # bcrypt costs ~50-100 ms by design: verify a password once, not on every scrape
        import bcrypt

        if hashed is None and self._dummy is None:
            self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10)).decode()
        try:
            ok = bcrypt.checkpw(password.encode(), (hashed or self._dummy).encode())
        except ValueError:
            ok = False
        if ok and hashed is not None:
            if len(self._verified) >= self._CACHE_SIZE:
                self._verified.clear()
            self._verified[key] = hashed
            return True
        return False
