"""Signing keys and verify reports: pure Python, no Apptainer, no root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from sms_services.errors import UserError
from sms_services.probes.report import passed_report
from sms_services.trust.keys import create_ca, create_keypair, fingerprint, key_files, load_public


@pytest.mark.parametrize("kind,described", [("ec", "EC secp256r1"), ("ed25519", "Ed25519"), ("rsa", "RSA-3072")])
def test_key_pair_files_modes_and_fingerprint(tmp_path: Path, kind: str, described: str) -> None:
    pair = create_keypair(tmp_path / "site.release", kind=kind)
    assert pair.private == tmp_path / "site.release.key" and pair.kind == described
    assert pair.private.stat().st_mode & 0o777 == 0o600
    assert pair.public.stat().st_mode & 0o777 == 0o644
    assert b"PRIVATE" not in pair.public.read_bytes()
    # the .pub and the private key's public half name the same key
    assert fingerprint(load_public(pair.public)) == fingerprint(load_public(pair.private)) == pair.fingerprint
    assert not list(tmp_path.glob(".*partial"))


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    first = create_keypair(tmp_path / "k")
    with pytest.raises(UserError, match="exists already"):
        create_keypair(tmp_path / "k", kind="ed25519")
    assert fingerprint(load_public(first.private)) == first.fingerprint


def test_unknown_type_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="use one of ec, ed25519, rsa"):
        create_keypair(tmp_path / "k", kind="dsa")
    assert list(tmp_path.iterdir()) == []


def test_certificate_is_issued_by_the_site_ca_for_code_signing(tmp_path: Path) -> None:
    ca = x509.load_pem_x509_certificate(create_ca(tmp_path / "ca", kind="ed25519").read_bytes())
    pair = create_keypair(tmp_path / "rel", ca=tmp_path / "ca", name="release signer")
    assert pair.certificate is not None
    cert = x509.load_pem_x509_certificate(pair.certificate.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises when the chain is wrong
    assert cert.subject.rfc4514_string() == "CN=release signer,O=sms-services"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = x509.load_pem_x509_certificate(create_ca(tmp_path / "other").read_bytes())
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(other)


def test_missing_ca_and_bad_pem_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read the CA"):
        create_keypair(tmp_path / "rel", ca=tmp_path / "nope")
    (tmp_path / "junk.pub").write_text("hello\n")
    with pytest.raises(UserError, match="not a PEM public key"):
        load_public(tmp_path / "junk.pub")


def test_key_files_accepts_prefix_or_either_file() -> None:
    expected = (Path("/k/site.key"), Path("/k/site.pub"))
    assert key_files("/k/site") == key_files("/k/site.key") == key_files("/k/site.pub") == expected


def _report(tmp_path: Path, **data) -> Path:
    path = tmp_path / "verify.json"
    path.write_text(json.dumps(data))
    return path


def test_passed_report_must_pass_and_name_this_image(tmp_path: Path) -> None:
    sif = Path("x.sif")
    ok = _report(tmp_path, ok=True, failed_services=[], sif_content_sha256="sha256:aa")
    assert passed_report(ok, "sha256:aa", sif).startswith("passed (report sha256:")
    with pytest.raises(UserError, match="another image"):
        passed_report(ok, "sha256:bb", sif)
    failed = _report(tmp_path, ok=False, failed_services=["nat", "cron"], sif_content_sha256="sha256:aa")
    with pytest.raises(UserError, match=r"verify FAILED \(nat, cron\)"):
        passed_report(failed, "sha256:aa", sif)
    (tmp_path / "verify.json").write_text("{")
    with pytest.raises(UserError, match="not a readable verify report"):
        passed_report(tmp_path / "verify.json", "sha256:aa", sif)
