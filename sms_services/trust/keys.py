"""Signing keys: made with the ``cryptography`` package, in the PEM forms Apptainer reads.

A key pair is ``PREFIX.key`` (PKCS#8, mode 0600, never printed) and
``PREFIX.pub`` (SubjectPublicKeyInfo). With a site CA, ``PREFIX.crt`` is a
code-signing certificate issued by ``CA.crt`` so that hosts can trust the CA
(``--certificate-roots``) instead of every key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sms_services.errors import UserError
from sms_services.files import atomic_write

KEY_TYPES = ("ec", "ed25519", "rsa")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    certificate: Path | None
    fingerprint: str
    kind: str


def _generate(kind: str) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise UserError(f"key type {kind!r} unknown: use one of {', '.join(KEY_TYPES)}")


def describe(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    return type(public_key).__name__


def fingerprint(public_key: object) -> str:
    """sha256 of the DER public key: what `library list` and signers are named by."""
    der = public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_public(path: Path) -> object:
    """A public key from a .pub file, a certificate, or the public half of a .key file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read key ({err.strerror})") from None
    try:
        if b"CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: not a PEM public key, private key or certificate ({err})") from None


def _write_private(path: Path, key: PrivateKey) -> None:
    atomic_write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600)


def private_dir(folder: Path) -> None:
    """Make ``folder`` (and any missing parent) 0700, whatever the umask: a key folder
    others can write lets them swap the key. Folders that exist are left as they are."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another smsctl: it is made 0700 there too
            continue
        except OSError as err:
            raise UserError(f"{p}: cannot make the key folder ({err.strerror})") from None
        os.chmod(p, 0o700)  # exactly, whatever the umask took away


def _file(prefix: Path, suffix: str) -> Path:
    """PREFIX plus a suffix; PREFIX may itself contain dots (site.release)."""
    return prefix.with_name(prefix.name + suffix)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sms-services"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _certificate(subject: str, issuer: x509.Name | None, public_key: object, signer: PrivateKey, days: int,
                 *, ca: bool) -> bytes:
    """A CA certificate (signs certificates) or a code-signing leaf (signs images)."""
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer or _name(subject))
               .public_key(public_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(signer, _sign_hash(signer)).public_bytes(serialization.Encoding.PEM)


def create_ca(prefix: Path, *, kind: str = "ec", name: str = "sms-services site CA", days: int = 3650) -> Path:
    """A self-signed site CA (PREFIX.key, PREFIX.crt); returns the certificate's path."""
    private = _file(prefix, ".key")
    if private.exists():
        raise UserError(f"{private}: exists already; refusing to overwrite a CA key (choose another --out)")
    key = _generate(kind)
    private_dir(prefix.parent)
    _write_private(private, key)
    crt = _file(prefix, ".crt")
    atomic_write(crt, _certificate(name, None, key.public_key(), key, days, ca=True), 0o644)
    return crt


def _issue(key: PrivateKey, ca_prefix: Path, cn: str, days: int) -> bytes:
    try:
        ca_key = serialization.load_pem_private_key(_file(ca_prefix, ".key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(_file(ca_prefix, ".crt").read_bytes())
    except OSError as err:
        raise UserError(f"{ca_prefix}: cannot read the CA's .key/.crt ({err.strerror}); "
                        "create one with 'smsctl keys create-ca'") from None
    except ValueError as err:
        raise UserError(f"{ca_prefix}: the CA's .key/.crt are not PEM ({err})") from None
    return _certificate(cn, ca_cert.subject, key.public_key(), ca_key, days, ca=False)  # type: ignore[arg-type]


def create_keypair(prefix: Path, *, kind: str = "ec", ca: Path | None = None, name: str | None = None,
                   days: int = 730, force: bool = False) -> KeyPair:
    """PREFIX.key (0600) and PREFIX.pub; with ``ca``, PREFIX.crt issued by that CA."""
    private, public = _file(prefix, ".key"), _file(prefix, ".pub")
    if private.exists() and not force:
        raise UserError(f"{private}: exists already; refusing to overwrite a signing key (choose another --out)")
    key = _generate(kind)
    private_dir(prefix.parent)
    _write_private(private, key)
    atomic_write(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    cert = None
    if ca is not None:
        cert = _file(prefix, ".crt")
        atomic_write(cert, _issue(key, ca, name or prefix.name, days), 0o644)
    return KeyPair(private, public, cert, fingerprint(key.public_key()), describe(key.public_key()))


def key_files(prefix: str | Path) -> tuple[Path, Path]:
    """(private, public) for a PREFIX, a PREFIX.key or a PREFIX.pub given on the command line."""
    p = Path(prefix)
    base = p.with_suffix("") if p.suffix in (".key", ".pub", ".crt") else p
    return _file(base, ".key"), _file(base, ".pub")
