"""Certificates for the orchestrator and a node shim to know each other across machines.

Each remote instance gets two fresh self-signed pairs, made here: the shim's (its server
certificate) and the orchestrator's (its client certificate for that shim). Each side trusts
exactly the other's certificate, and checks it by its SHA-256 too (pinning: trusting a chain is
not enough, as any certificate signed by a trusted one would pass). The private keys never go on
a command line or into an environment: the shim's travels in its private configuration file,
and files holding a key live only while ``ssl`` loads them.

EC P-256 keys: every OpenSSL that has TLS 1.3 signs and checks with them (Ed25519 works with
recent ones, but a cluster node's Python may be linked to an older or stricter build).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import shutil
import ssl
import tempfile
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SHIM_NAME = "ywmagics-node"  # the certificates' DNS name; hostnames are not checked (pinning)


def self_signed(common_name: str, days: int = 3650) -> tuple[str, str]:
    """A new certificate and its private key, ``(cert_pem, key_pem)``, good as a TLS server's
    and a client's. It is its own CA (so that ``cadata=`` trusts it), valid from five minutes
    ago (clocks of a cluster differ a little) for ``days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SHIM_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        # Both key identifiers: strict verification (VERIFY_X509_STRICT) asks for them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return cert_pem, key_pem


def fingerprint(cert_pem: str) -> str:
    """The SHA-256 of the certificate's DER form, in hex."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest()


def pinned(sslobj: ssl.SSLObject | ssl.SSLSocket, cert_pem: str) -> bool:
    """Whether the peer of a finished handshake showed exactly ``cert_pem``."""
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return False
    return hmac.compare_digest(hashlib.sha256(der).hexdigest(), fingerprint(cert_pem))


def load_chain(
    context: ssl.SSLContext,
    cert_pem: str,
    key_pem: str,
    folder: str | os.PathLike[str] | None = None,
) -> None:
    """Load a certificate and its key into ``context``. ``ssl`` reads them from files only: they
    are written 0600 in a new 0700 folder (inside ``folder``, if given: a private one) and
    removed as soon as they are loaded."""
    private = tempfile.mkdtemp(prefix="yw-tls-", dir=folder)
    try:
        paths = []
        for name, text in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(private, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])
    finally:
        shutil.rmtree(private, ignore_errors=True)


def client_context(
    server_cert_pem: str,
    client_cert_pem: str,
    client_key_pem: str,
    alpn: list[str],
    folder: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts only ``server_cert_pem`` and shows the client
    certificate; ``alpn`` says what the connections are (a shim's ``yw-lease``, ``http/1.1``,
    ``yw-reverse``). Host names are not checked: the certificate is pinned, check
    :func:`pinned` after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=server_cert_pem)
    load_chain(context, client_cert_pem, client_key_pem, folder)
    context.set_alpn_protocols(alpn)
    return context
