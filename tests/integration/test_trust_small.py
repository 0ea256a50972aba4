"""Issue 10's trust holes, with the real Apptainer on a SIF of a few KiB made in the test (seconds)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sms_services.apptainer import Apptainer
from sms_services.cli import main as cli
from sms_services.trust.keys import create_ca, create_keypair
from sms_services.trust.signing import build_key, content_digest, sign, signatures

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny(apptainer: Apptainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real SIF (deffile, JSON, squashfs) signed by this test's build key, as `smsctl build` leaves it."""
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hello").write_text("hello\n")
    sif = tmp_path / "tiny.sif"
    res = apptainer.run(["build", "-F", str(sif), str(root)], timeout=120)
    assert res.returncode == 0, res.stderr
    sign(apptainer, sif, build_key(), replaces=None)
    return sif


def smsctl(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main([*args])
    out, err = capsys.readouterr()
    return rc, out, err


def relaunch(sif: Path) -> None:
    """What the review did: a new launch script (the header's first 32 bytes; `./image.sif` runs it)."""
    with open(sif, "r+b") as fh:
        fh.write(b"#!/bin/sh\nid >/tmp/owned;exit\n#".ljust(32)[:32])


def test_sign_refuses_an_image_whose_launch_script_changed_after_verify(
        apptainer: Apptainer, capsys, tiny: Path, tmp_path: Path) -> None:
    key = tmp_path / "release"
    create_keypair(key)
    report = tmp_path / "verify.json"
    report.write_text(json.dumps({"ok": True, "failed_services": [],
                                  "sif_content_sha256": content_digest(apptainer, tiny)}))
    # The attacker's copy: new launch script, the build signature (which no longer matches) removed.
    stripped = tmp_path / "stripped.sif"
    shutil.copyfile(tiny, stripped)
    relaunch(stripped)
    for obj in signatures(apptainer, stripped):
        assert apptainer.run(["sif", "del", str(obj), str(stripped)]).returncode == 0
    before = stripped.read_bytes()
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), "--require-verified", str(report), str(stripped))
    assert rc != 0 and "reports on another image" in err and len(err.strip().splitlines()) == 1
    assert stripped.read_bytes() == before
    # The signature left in place: it no longer checks, so `sign` does not replace it.
    kept = tmp_path / "kept.sif"
    shutil.copyfile(tiny, kept)
    relaunch(kept)
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), str(kept))
    assert rc != 0 and "refusing to sign" in err and "header integrity compromised" in err, err
    assert apptainer.run(["verify", "--key", f"{key}.pub", str(kept)]).returncode != 0
    # Signed by a key this host does not know: not replaced either.
    other = tmp_path / "other"
    create_keypair(other)
    foreign = tmp_path / "foreign.sif"
    shutil.copyfile(tiny, foreign)
    sign(apptainer, foreign, other, replaces=None)
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), str(foreign))
    assert rc != 0 and "refusing to sign" in err and "not by a trusted key" in err, err
    # The image verify ran: signed, and its report still names it.
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), "--require-verified", str(report), str(tiny))
    assert rc == 0, err
    assert smsctl(capsys, "verify-signature", "--key", str(key), str(tiny))[0] == 0
    assert content_digest(apptainer, tiny) == json.loads(report.read_text())["sif_content_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sms-sign")]


def _expired(ca: Path, key: Path, out: Path) -> Path:
    """A code-signing certificate for ``key`` that the CA issued and that ran out yesterday."""
    ca_key = serialization.load_pem_private_key(ca.with_suffix(".key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.with_suffix(".crt").read_bytes())
    public = serialization.load_pem_private_key(key.with_suffix(".key").read_bytes(), None).public_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca_cert.subject).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def test_apptainers_reason_is_kept(apptainer: Apptainer, capsys, tiny: Path, tmp_path: Path) -> None:
    create_ca(tmp_path / "ca")
    key = tmp_path / "release"
    create_keypair(key, ca=tmp_path / "ca")
    assert smsctl(capsys, "sign", "--key", str(key), str(tiny))[0] == 0
    ca = ["--certificate-roots", str(tmp_path / "ca.crt")]
    assert smsctl(capsys, "verify-signature", "--certificate", f"{key}.crt", *ca, str(tiny))[0] == 0

    def refused(sif: Path, *trust: str) -> str:
        rc, _, err = smsctl(capsys, "verify-signature", *trust, str(sif))
        assert rc != 0 and len(err.strip().splitlines()) == 1, err
        assert "trust its signer's .pub" not in err, err
        return err

    expired = _expired(tmp_path / "ca", key, tmp_path / "expired.crt")
    assert "certificate has expired" in refused(tiny, "--certificate", str(expired), *ca)
    err = refused(tiny, "--certificate", f"{key}.crt", "--certificate-roots", str(tmp_path / "nope.crt"))
    assert "nope.crt (given as --certificate-roots): no such file" in err
    cut = tmp_path / "cut.sif"
    cut.write_bytes(tiny.read_bytes()[:-300])
    assert "truncated SIF" in refused(cut, "--key", str(key))
    (tmp_path / "data").write_bytes(b"x" * 4096)
    for group, says in (("0", "not associated with object group"), ("1", "object not signed")):
        added = tmp_path / f"added-{group}.sif"
        shutil.copyfile(tiny, added)
        res = apptainer.run(["sif", "add", "--datatype", "4", "--parttype", "3", "--partfs", "4", "--partarch", "2",
                             "--groupid", group, str(added), str(tmp_path / "data")])
        assert res.returncode == 0, res.stderr
        assert says in refused(added, "--key", str(key))
