"""A local CA and the certificates it signs, for development; checks on key files.

``ferryman cert NAME...`` keeps its CA in a directory (``~/.local/share/ferryman/ca`` unless
told otherwise) so every certificate made on one machine chains to one root a developer can
trust once. Keys are EC P-256, written with mode 0600: the same rule :func:`check_key_file`
enforces at load, since a private key readable by others is a key anyone may have copied.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferryman.tls import TlsError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def default_ca_dir() -> Path:
    """``$FERRYMAN_CA_DIR``, else ``$XDG_DATA_HOME/ferryman/ca`` (``~/.local/share/...``)."""
    if os.environ.get("FERRYMAN_CA_DIR"):
        return Path(os.environ["FERRYMAN_CA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ferryman" / "ca"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: a chmod after writing leaves a window where it is readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
    path.write_bytes(pem)


def ensure_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``ca_dir``, created on first use."""
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_path}: the CA key is not an EC key")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ferryman local development CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert, [])
    return cert, key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_cert(
    names: list[str], cert_path: Path, key_path: Path, ca_dir: Path | None = None, days: int = 825
) -> None:
    """A certificate for ``names`` (DNS names, wildcards or IP addresses) signed by the CA.

    The file holds the certificate then the CA's, so clients that trust the CA verify it."""
    if not names:
        raise TlsError("a certificate needs at least one name")
    ca_cert, ca_key = ensure_ca(ca_dir or default_ca_dir())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert, [ca_cert])


def check_key_file(path: Path) -> None:
    """Refuse a private key that group or others may read, or that is not there."""
    try:
        st = path.stat()
    except OSError as e:
        raise TlsError(f"{path}: cannot read the key: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(st.st_mode)
        raise TlsError(
            f"{path}: the private key is readable by group or others (mode {mode:04o});"
            f" run: chmod 600 {path}"
        )


def check_pair(cert_path: Path, key_path: Path) -> list[str]:
    """Check that the key belongs to the certificate; return the certificate's DNS names."""
    check_key_file(key_path)
    try:
        certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except OSError as e:
        raise TlsError(f"{cert_path}: cannot read the certificate: {e.strerror}") from None
    except ValueError as e:
        raise TlsError(f"{cert_path}: not a PEM certificate: {e}") from None
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (ValueError, TypeError) as e:
        raise TlsError(f"{key_path}: not an unencrypted PEM private key: {e}") from None
    pub = (
        certs[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    own = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != own:
        raise TlsError(f"{key_path}: the key does not match the certificate {cert_path}")
    try:
        san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return list(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return []
