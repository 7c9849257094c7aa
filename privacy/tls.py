"""A per-deployment CA and pinned mutual TLS between the coordinator and the party services.

`make_deployment` (``wenlv party certs``) creates, in one folder:

    ca.pem                      the deployment's CA certificate (ECDSA P-256, 2 years)
    ca.key                      its key: keep it offline, it is needed only to issue certificates
    <party>.pem, <party>.key    each party's certificate (SAN: DNS:<party> plus its hosts) and key
    coordinator.pem/.key        the coordinator's client certificate (SAN: DNS:coordinator)

Each organisation receives its own key and the *certificates* (never keys) of the others.
Pinning: a party service trusts only the pinned coordinator certificate (not "anything the
CA signed"), and the coordinator trusts, for each party, only that party's pinned
certificate, with the party's name checked against its SAN (sent as the TLS server name).
So a certificate from another CA, or this CA's certificate of another party, is refused
at the handshake, before any body is sent. TLS 1.3 only.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wenlv.errors import WenlvError

COORDINATOR = "coordinator"
VALID_DAYS = 730


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wenlv deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _san(name: str, hosts) -> x509.SubjectAlternativeName:
    entries: list = [x509.DNSName(name)]
    for h in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def make_deployment(out: str | Path, parties, hosts: dict | None = None, days: int = VALID_DAYS) -> dict:
    """A CA and one certificate per party plus the coordinator's; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hosts = hosts or {}
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("wenlv deployment CA")).issuer_name(_name("wenlv deployment CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (out / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key)
    written = {"ca": str(out / "ca.pem")}
    for name in [*parties, COORDINATOR]:
        if not name.isidentifier():
            raise WenlvError(f"party name {name!r} is not a plain name")
        key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if name == COORDINATOR else [ExtendedKeyUsageOID.SERVER_AUTH]
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_san(name, hosts.get(name, ())), critical=False)
                .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(out / f"{name}.key", key)
        written[name] = str(out / f"{name}.pem")
    return written


def fingerprint(pem_path: str | Path) -> str:
    """SHA-256 of a certificate's DER (hex): what the docs and logs show of a pin."""
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _need(path: Path) -> Path:
    if not path.is_file():
        raise WenlvError(f"TLS: {path} is missing (make the deployment's certificates with `wenlv party certs`)")
    return path


def _pinned(ctx: ssl.SSLContext, pins) -> ssl.SSLContext:
    """Trust exactly the pinned certificates (a leaf in the store is a trust anchor)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    for pin in pins:
        ctx.load_verify_locations(cafile=str(_need(Path(pin))))
    return ctx


def server_context(tls_dir: str | Path, party: str) -> ssl.SSLContext:
    """A party service's context: its own certificate; only the pinned coordinator may connect."""
    tls_dir = Path(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(_need(tls_dir / f"{party}.pem"), _need(tls_dir / f"{party}.key"))
    return _pinned(ctx, [tls_dir / f"{COORDINATOR}.pem"])


def client_context(tls_dir: str | Path, party: str, identity: str = COORDINATOR) -> ssl.SSLContext:
    """The coordinator's context towards one party: its client certificate; only that party's
    pinned certificate is trusted, and its name must be in the certificate's SAN."""
    tls_dir = Path(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on: the SAN must name the party
    ctx.load_cert_chain(_need(tls_dir / f"{identity}.pem"), _need(tls_dir / f"{identity}.key"))
    return _pinned(ctx, [tls_dir / f"{party}.pem"])
