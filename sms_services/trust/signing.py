"""Signatures inside the SIF (Apptainer's own DSSE objects) and the trust that checks them.

Trust model, in the order an image meets it:

* **build key** -- every SIF ``smsctl build`` writes is signed with this host's
  build key (made on first use, ``<config>/keys/build.key``). It says "built
  here, unchanged since", and is enough for ``verify`` to start the candidate in
  the lab. Nothing else trusts it.
* **release keys** -- an admin signs an image that passed verify with a site
  key (``smsctl sign --key``); that signature replaces the build key's (once it
  checked), so the SIF carries exactly one signer and ``apptainer verify --key``
  works on it as is.
  Hosts trust release keys (``--key`` or the ``<config>/trusted/`` folder of
  ``.pub`` files) or a site CA (``--certificate``/``--certificate-roots``).

Starting an instance refuses an unsigned SIF, one signed by an untrusted key and a
tampered one; ``--allow-unsigned`` lets local development through, loudly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.trust.keys import create_keypair, describe, fingerprint, key_files, load_public
from sms_services.trust.sif import Descriptor, read_sif
from sms_services.trust.sif import content_digest as sif_content_digest


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


def sif_objects(apptainer: Apptainer | None, sif: Path) -> list[Descriptor]:
    """The data objects of ``sif`` (read here: ``apptainer`` is not asked)."""
    return list(read_sif(sif).objects)


def signatures(apptainer: Apptainer | None, sif: Path) -> list[int]:
    """Object ids of the signature objects in ``sif``."""
    return [o.id for o in read_sif(sif).signatures]


def content_digest(apptainer: Apptainer | None, sif: Path) -> str:
    """What a signature vouches for: header, descriptors and data of every object but the
    signatures (trust/sif.py). Re-signing changes the file's sha256 but not this."""
    return sif_content_digest(sif)


def _warn_if_readable(private: Path, warn: Callable[[str], None]) -> None:
    mode = private.stat().st_mode & 0o777
    if mode & 0o077:
        warn(f"WARNING: {private} is readable by others (mode {mode:04o}): whoever can read it can sign "
             f"images your hosts trust; chmod 600 {private} (and make a new key if it may have been copied)")


def sign(apptainer: Apptainer, sif: Path, key: str | Path, *, replaces: Trust | None,
         warn: Callable[[str], None] = lambda s: None) -> Signer:
    """Sign ``sif`` with ``key`` (a PREFIX); the signatures it carries are removed first.

    One signer per image: ``apptainer verify --key`` demands that every signature
    verify with the one key it is given. A signature is removed only once it
    checked under ``replaces`` (the build key, the key signing now, trusted keys):
    otherwise a changed image would leave here carrying a fresh, good signature.
    ``replaces=None`` is for the build alone, whose record's sha256 proved the bytes.
    """
    private, _ = key_files(key)
    if not private.exists():
        raise UserError(f"{private}: no such private key (make one with 'smsctl keys create --out {key}')")
    if not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    _warn_if_readable(private, warn)
    signer = _signer(key)
    old = signatures(apptainer, sif)
    if old and replaces is not None:
        try:
            check(apptainer, sif, replaces)
        except UserError as err:
            reason = str(err).removeprefix(f"{sif}: ")
            raise UserError(f"{sif}: refusing to sign: the signature it carries does not check, so nothing "
                            f"vouches for its contents ({reason}); only an image signed by this host's build "
                            f"key, a trusted key or the signing key itself is signed again") from None
    for obj in sorted(old, reverse=True):
        res = apptainer.run(["sif", "del", str(obj), str(sif)], timeout=60)
        if res.returncode != 0:
            raise UserError(f"{sif}: cannot remove old signature {obj} ({last_line(res.stderr)})")
    res = apptainer.run(["sign", "--key", str(private), str(sif)], timeout=300)
    if res.returncode != 0:
        raise UserError(f"{sif}: signing with {private} failed: {last_line(res.stderr)}")
    return signer


def replaceable(key: str | Path) -> Trust:
    """The signatures ``smsctl sign`` may replace: this host's build key (if it has one),
    the trusted keys, and the key signing now (signing again)."""
    trust = Trust.release()
    build_pub = key_files(config_dir() / "keys" / "build")[1]
    own = key_files(key)[1]
    trust.keys += [p for p in (build_pub, own) if p.exists() and p not in trust.keys]
    return trust


def release_sign(apptainer: Apptainer, sif: Path, key: str | Path, *,
                 require: Callable[[Path], object] | None = None,
                 warn: Callable[[str], None] = lambda s: None) -> Signer:
    """``smsctl sign``: check and sign a private copy, then rename it over ``sif``.

    ``require`` checks the copy before anything else (the verify report's content
    digest); the copy's own signature must check (``replaceable``). Working on a
    copy in a folder made here means what was checked is what gets signed, even
    if someone can write ``sif`` meanwhile.
    """
    if not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    sif = sif.resolve()
    try:
        work = Path(tempfile.mkdtemp(prefix=".sms-sign-", dir=sif.parent))  # 0700, made exclusively
    except OSError as err:
        raise UserError(f"{sif.parent}: cannot make a private folder to sign a copy in ({err.strerror})") from None
    copy = work / sif.name
    try:
        mode = sif.stat().st_mode & 0o755
        shutil.copyfile(sif, copy)
        if require is not None:
            require(copy)
            if not signatures(apptainer, copy):
                raise UserError(f"{sif}: not signed, so nothing shows it is the image verify ran; "
                                "verify starts only signed images: build it again with smsctl build")
        signer = sign(apptainer, copy, key, replaces=replaceable(key), warn=warn)
        os.chmod(copy, mode)
        os.replace(copy, sif)
    except UserError as err:  # name the file the admin gave, not the private copy
        raise UserError(str(err).replace(str(copy), str(sif)), exit_code=err.exit_code) from None
    except OSError as err:
        raise UserError(f"{sif}: cannot copy, sign and put it back ({err.strerror}); it is unchanged") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return signer


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{path} (given as {what}): no such file")


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
            _readable(trust.roots, "--certificate-roots")
            args += ["--certificate-roots", str(trust.roots)]
        if trust.intermediates:
            _readable(trust.intermediates, "--certificate-intermediates")
            args += ["--certificate-intermediates", str(trust.intermediates)]
        tries.append((args, Signer(cert.subject.rfc4514_string(), fingerprint(cert.public_key()),
                                   describe(cert.public_key()))))
    return tries


# What `apptainer verify` says when the signature is sound but made by another key, or the
# certificate chains to another CA: the only refusals "not by a trusted key" describes.
OTHER_SIGNER = ("dsse: verify envelope failed", "signed by unknown authority")


def check(apptainer: Apptainer, sif: Path, trust: Trust,
          warn: Callable[[str], None] = lambda s: None) -> Signer | None:
    """The signer of ``sif`` under ``trust``, or one clear line saying why it is refused.

    Apptainer's reason is kept: an expired certificate, an unsigned object or a
    damaged file is not "signed by another key", and the fix differs.
    """
    if not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    if not signatures(apptainer, sif):  # (reads the header: a truncated SIF ends here, named so)
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
    other: list[str] = []
    for args, signer in tries:
        res = apptainer.run(["verify", *args, str(sif)], timeout=300)
        if res.returncode == 0:
            return signer
        reason = last_line(res.stderr).removeprefix("Failed to verify container: ")
        if "integrity compromised" in reason or "digest mismatch" in reason.lower():
            raise UserError(f"{sif}: TAMPERED: its contents no longer match the signature of {signer} "
                            f"({reason}); do not start it, rebuild or pull it again")
        if not any(s in reason for s in OTHER_SIGNER):
            other.append(f"{signer.name}: {reason}")
    if other:
        raise UserError(f"{sif}: signature refused by apptainer verify ({'; '.join(other)})")
    raise UserError(f"{sif}: signed, but not by a trusted key (tried {trust.describe()}); "
                    "sign it with a trusted key or trust its signer's .pub")
