"""Signatures inside the SIF (Apptainer's own DSSE objects) and the trust that checks them.

Trust model, in the order an image meets it:

* **build key** -- every SIF ``smsctl build`` writes is signed with this host's
  build key (made on first use, ``<config>/keys/build.key``). It says "built
  here, unchanged since", and is enough for ``verify`` to start the candidate in
  the lab. Nothing else trusts it.
* **release keys** -- an admin signs an image that passed verify with a site
  key (``smsctl sign --key``); that signature replaces the build key's, so the
  SIF carries exactly one signer and ``apptainer verify --key`` works on it as is.
  Hosts trust release keys (``--key`` or the ``<config>/trusted/`` folder of
  ``.pub`` files) or a site CA (``--certificate``/``--certificate-roots``).

Starting an instance refuses an unsigned SIF, one signed by an untrusted key and a
tampered one; ``--allow-unsigned`` lets local development through, loudly.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.trust.keys import create_keypair, describe, fingerprint, key_files, load_public


def config_dir() -> Path:
    base = os.environ.get("SMS_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "sms-services")
    return Path(base)


def build_key() -> Path:
    """This host's build key prefix, made the first time a build needs it."""
    prefix = config_dir() / "keys" / "build"
    private, _ = key_files(prefix)
    if not private.exists():
        create_keypair(prefix, kind="ec")
    return prefix


def build_signer() -> Signer:
    """How a signature by this host's current build key is recorded."""
    return _signer(build_key())


def _signer(key: str | Path) -> Signer:
    private, public = key_files(key)
    pub = load_public(private)
    return Signer(public.stem if public.exists() else private.stem, fingerprint(pub), describe(pub))


@dataclass(frozen=True)
class Signer:
    """Who vouches for an image: the trusted key or certificate that verified it."""
    name: str
    fingerprint: str
    kind: str

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}, {self.fingerprint[:23]}...)"


@dataclass
class Trust:
    """The keys and CA an image is checked against."""
    keys: list[Path] = field(default_factory=list)  # public keys (.pub, or the .pub of a PREFIX)
    certificate: Path | None = None  # the signer's certificate, checked against roots
    roots: Path | None = None
    intermediates: Path | None = None
    allow_unsigned: bool = False

    @classmethod
    def release(cls, keys: list[str] | None = None, *, certificate: str | None = None,
                roots: str | None = None, intermediates: str | None = None,
                allow_unsigned: bool = False) -> Trust:
        """Release trust: the given keys, else every ``.pub`` in ``<config>/trusted/``."""
        paths = [_public_of(k) for k in keys or []]
        if not paths and not certificate:
            trusted = config_dir() / "trusted"
            paths = sorted(trusted.glob("*.pub")) if trusted.is_dir() else []
        return cls(paths, Path(certificate) if certificate else None, Path(roots) if roots else None,
                   Path(intermediates) if intermediates else None, allow_unsigned)

    @classmethod
    def candidate(cls, keys: list[str] | None = None, **kw) -> Trust:
        """What ``verify`` may start: release trust plus this host's build key."""
        trust = cls.release(keys, **kw)
        trust.keys.append(key_files(build_key())[1])
        return trust

    def describe(self) -> str:
        what = [str(k) for k in self.keys]
        if self.certificate:
            what.append(f"certificate {self.certificate} (roots {self.roots})")
        return ", ".join(what) or "nothing"


def _public_of(key: str) -> Path:
    p = Path(key)
    if p.suffix in (".pub", ".crt", ".pem") and p.exists():
        return p
    public = key_files(p)[1]
    if not public.exists():
        raise UserError(f"{key}: no public key {public} (make one with 'smsctl keys create --out {key}')")
    return public


@dataclass(frozen=True)
class SifObject:
    id: int
    start: int
    end: int
    kind: str


def sif_objects(apptainer: Apptainer, sif: Path) -> list[SifObject]:
    """The data objects of ``sif`` as `apptainer sif list` shows them."""
    res = apptainer.run(["sif", "list", str(sif)], timeout=60)
    if res.returncode != 0:
        raise UserError(f"{sif}: not a readable SIF ({last_line(res.stderr)})")
    return [SifObject(int(m[1]), int(m[2]), int(m[3]), m[4].strip()) for m in
            re.finditer(r"(?m)^(\d+)\s*\|[^|]*\|[^|]*\|\s*(\d+)-(\d+)\s*\|(.*)$", res.stdout)]


def signatures(apptainer: Apptainer, sif: Path) -> list[int]:
    """Object ids of the signature objects in ``sif``."""
    return [o.id for o in sif_objects(apptainer, sif) if o.kind.startswith("Signature")]


def content_digest(apptainer: Apptainer, sif: Path) -> str:
    """sha256 over every object but the signatures: what a signature vouches for.

    Re-signing changes the file's sha256 but not this, so a verify report made
    on the build-signed candidate still names the release-signed image.
    """
    h = hashlib.sha256()
    with open(sif, "rb") as fh:
        for obj in sif_objects(apptainer, sif):
            if obj.kind.startswith("Signature"):
                continue
            fh.seek(obj.start)
            left = obj.end - obj.start
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    raise UserError(f"{sif}: truncated (object {obj.id} ends past the end of the file)")
                h.update(chunk)
                left -= len(chunk)
    return "sha256:" + h.hexdigest()


def sign(apptainer: Apptainer, sif: Path, key: str | Path) -> Signer:
    """Sign ``sif`` with ``key`` (a PREFIX); earlier signatures are removed first.

    One signer per image: ``apptainer verify --key`` demands that every
    signature verify with the one key it is given.
    """
    private, _ = key_files(key)
    if not private.exists():
        raise UserError(f"{private}: no such private key (make one with 'smsctl keys create --out {key}')")
    if not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    signer = _signer(key)
    for obj in sorted(signatures(apptainer, sif), reverse=True):
        res = apptainer.run(["sif", "del", str(obj), str(sif)], timeout=60)
        if res.returncode != 0:
            raise UserError(f"{sif}: cannot remove old signature {obj} ({last_line(res.stderr)})")
    res = apptainer.run(["sign", "--key", str(private), str(sif)], timeout=300)
    if res.returncode != 0:
        raise UserError(f"{sif}: signing with {private} failed: {last_line(res.stderr)}")
    return signer


def _verify_args(trust: Trust) -> list[tuple[list[str], Signer]]:
    tries = []
    for pub in trust.keys:
        key = load_public(pub)
        tries.append((["--key", str(pub)], Signer(pub.stem, fingerprint(key), describe(key))))
    if trust.certificate:
        from cryptography import x509
        try:
            cert = x509.load_pem_x509_certificate(trust.certificate.read_bytes())
        except (OSError, ValueError) as err:
            raise UserError(f"{trust.certificate}: not a PEM certificate ({err})") from None
        args = ["--certificate", str(trust.certificate)]
        if trust.roots:
            args += ["--certificate-roots", str(trust.roots)]
        if trust.intermediates:
            args += ["--certificate-intermediates", str(trust.intermediates)]
        tries.append((args, Signer(cert.subject.rfc4514_string(), fingerprint(cert.public_key()),
                                   describe(cert.public_key()))))
    return tries


def check(apptainer: Apptainer, sif: Path, trust: Trust,
          warn: Callable[[str], None] = lambda s: None) -> Signer | None:
    """The signer of ``sif`` under ``trust``, or one clear line saying why it is refused."""
    if not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    if not signatures(apptainer, sif):
        if trust.allow_unsigned:
            warn(f"WARNING: {sif} is NOT SIGNED and started anyway (--allow-unsigned): "
                 "for local development only, never for a production cluster")
            return None
        raise UserError(f"{sif}: not signed; sign it ('smsctl sign --key PREFIX {sif}') "
                        "or pass --allow-unsigned for local development")
    tries = _verify_args(trust)
    if not tries:
        raise UserError(f"{sif}: no trusted key to check it against; give --key PREFIX or put .pub files "
                        f"in {config_dir() / 'trusted'}")
    for args, signer in tries:
        res = apptainer.run(["verify", *args, str(sif)], timeout=300)
        if res.returncode == 0:
            return signer
        reason = last_line(res.stderr)
        if "integrity compromised" in reason or "digest mismatch" in reason.lower():
            raise UserError(f"{sif}: TAMPERED: its contents no longer match the signature of {signer} "
                            f"({reason}); do not start it, rebuild or pull it again")
    raise UserError(f"{sif}: signed, but not by a trusted key (tried {trust.describe()}); "
                    "sign it with a trusted key or trust its signer's .pub")
