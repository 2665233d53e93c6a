"""Certificates for the TLS tests, generated with the ``cryptography`` package (no CLI tools).

:func:`make_pki` writes, into a folder, a test CA and certificates it signed, as PEM files:

* ``ca.pem``: the CA certificate (what clients and servers trust);
* ``server.pem`` / ``server.key``: a server certificate for ``localhost`` and ``127.0.0.1``;
  ``server-keystore.pem`` holds key and certificate together (Kafka's ``ssl.keystore.type=PEM``,
  which wants the key unencrypted in PKCS#8);
* ``wronghost.pem`` / ``wronghost.key`` (and ``wronghost-keystore.pem``): signed by the same CA but for
  ``kafka.invalid`` only, so a client connecting to 127.0.0.1 must refuse it;
* ``client.pem`` / ``client.key``: a client certificate (CN ``driftmon``) whose key is encrypted with
  :data:`CLIENT_KEY_PASSWORD`;
* ``other-ca.pem``: an unrelated CA that signed nothing here (a "wrong CA" for clients).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CLIENT_KEY_PASSWORD", "Pki", "make_pki"]

#: The passphrase of ``client.key`` (tests hand it to driftmon through env or a file).
CLIENT_KEY_PASSWORD = "client-key-passphrase-0f3a"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, dns: list[str], ips: list[str], usage):
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now() - datetime.timedelta(minutes=5))
               .not_valid_after(_now() + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key, password: str | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class Pki:
    """Paths of the files :func:`make_pki` wrote (attributes named after the files)."""

    def __init__(self, folder: Path):
        self.folder = folder
        for name in ("ca", "other-ca", "server", "wronghost", "client"):
            setattr(self, name.replace("-", "_"), folder / f"{name}.pem")
        self.server_key = folder / "server.key"
        self.server_keystore = folder / "server-keystore.pem"
        self.wronghost_key = folder / "wronghost.key"
        self.wronghost_keystore = folder / "wronghost-keystore.pem"
        self.client_key = folder / "client.key"
        self.client_key_password = CLIENT_KEY_PASSWORD


def make_pki(folder: str | Path) -> Pki:
    """Write a CA, server, wrong-host and client certificates into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)
    ca_key, ca_cert = _ca("driftmon test CA")
    _other_key, other_cert = _ca("some other CA")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.other_ca.write_bytes(_pem(other_cert))
    server = _leaf(ca_key, ca_cert, "localhost", ["localhost"], ["127.0.0.1"], ExtendedKeyUsageOID.SERVER_AUTH)
    wrong = _leaf(ca_key, ca_cert, "kafka.invalid", ["kafka.invalid"], [], ExtendedKeyUsageOID.SERVER_AUTH)
    for (key, cert), cert_path, key_path, store in ((server, pki.server, pki.server_key, pki.server_keystore),
                                                    (wrong, pki.wronghost, pki.wronghost_key,
                                                     pki.wronghost_keystore)):
        cert_path.write_bytes(_pem(cert))
        key_path.write_bytes(_key_pem(key))
        store.write_bytes(_key_pem(key) + _pem(cert))
    client_key, client_cert = _leaf(ca_key, ca_cert, "driftmon", [], [], ExtendedKeyUsageOID.CLIENT_AUTH)
    pki.client.write_bytes(_pem(client_cert))
    pki.client_key.write_bytes(_key_pem(client_key, CLIENT_KEY_PASSWORD))
    for path in (pki.server_key, pki.wronghost_key, pki.client_key, pki.server_keystore, pki.wronghost_keystore):
        path.chmod(0o600)
    return pki
