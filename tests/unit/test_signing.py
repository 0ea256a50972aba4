"""What a signature covers and what `sign` and the trust check do, on SIF files made here (no root).

Apptainer itself is replaced by a recorder that answers ``verify`` the way
Apptainer 1.4 does; the integration tests (test_trust_small.py) do the same
with the real one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sifmaker import GROUP, IMAGE, LAUNCH, PARTITION, SIGNATURE, SIGNED, FakeApptainer
from sifmaker import write_sif as make_sif

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.probes.report import passed_report
from sms_services.trust.keys import create_keypair
from sms_services.trust.sif import content_digest, read_sif
from sms_services.trust.signing import Trust, check, release_sign, sign


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


# --- the content digest: everything a signature covers ---------------------------------

def test_the_digest_ignores_signatures_but_not_the_header_descriptors_or_data(tmp_path: Path) -> None:
    base = content_digest(make_sif(tmp_path / "a.sif", IMAGE))
    assert content_digest(make_sif(tmp_path / "signed.sif", SIGNED)) == base  # signing keeps it
    # The launch script (the header's first 32 bytes, what `./image.sif` runs): the repro.
    evil = LAUNCH.replace(b"run-singularity", b"sh -c 'id>/x'  ")
    assert content_digest(make_sif(tmp_path / "l.sif", SIGNED, launch=evil)) != base
    assert content_digest(make_sif(tmp_path / "u.sif", IMAGE, uuid=b"\x08" * 16)) != base
    renamed = [IMAGE[0], (*IMAGE[1][:4], b"other", IMAGE[1][5])]  # a descriptor field, same data
    assert content_digest(make_sif(tmp_path / "n.sif", renamed)) != base
    extra = [IMAGE[0], (*IMAGE[1][:5], IMAGE[1][5][:4] + b"\x03")]  # partition type in "extra"
    assert content_digest(make_sif(tmp_path / "e.sif", extra)) != base
    data = [IMAGE[0], (*IMAGE[1][:3], IMAGE[1][3].replace(b"root", b"r00t"), *IMAGE[1][4:])]
    assert content_digest(make_sif(tmp_path / "d.sif", data)) != base
    added = [*SIGNED, (PARTITION, 0, 0, b"unsigned data", b"extra", b"")]  # no group: no signature covers it
    assert content_digest(make_sif(tmp_path / "p.sif", added)) != base


def test_a_truncated_or_foreign_file_is_one_line(tmp_path: Path) -> None:
    whole = make_sif(tmp_path / "a.sif", SIGNED).read_bytes()
    (tmp_path / "t.sif").write_bytes(whole[:-5])
    with pytest.raises(UserError, match=r"t.sif: truncated SIF \(object 3 ends at byte \d+, the file at \d+\)"):
        read_sif(tmp_path / "t.sif")
    (tmp_path / "j.sif").write_bytes(b"#!/bin/sh\n" + bytes(200))
    with pytest.raises(UserError, match="j.sif: not a SIF"):
        read_sif(tmp_path / "j.sif")
    objs = read_sif(tmp_path / "a.sif").objects
    assert [(o.id, o.kind) for o in objs] == [(1, "Def.FILE"), (2, "FS"), (3, "Signature")]
    assert objs[2].link == GROUP | 1 and objs[2].data_type == SIGNATURE


# --- sign: the signature it replaces must check first ----------------------------------

def report(path: Path, digest: str) -> Path:
    path.write_text(json.dumps({"ok": True, "failed_services": [], "sif_content_sha256": digest}))
    return path


def test_sign_require_verified_refuses_a_launch_script_changed_after_verify(
        tmp_path: Path, config: Path) -> None:
    """Issue 10 item 1: the copy's report still matched, because the digest left the header out."""
    key = create_keypair(tmp_path / "release").private.with_suffix("")
    verified = make_sif(tmp_path / "verified.sif", SIGNED)
    rep = report(tmp_path / "verify.json", content_digest(verified))
    evil = make_sif(tmp_path / "evil.sif", SIGNED, launch=b"#!/bin/sh\nid > /tmp/owned; exit\n")
    before = evil.read_bytes()
    app = FakeApptainer()
    with pytest.raises(UserError, match="reports on another image"):
        release_sign(app, evil, key, require=lambda c: passed_report(rep, content_digest(c), evil))  # type: ignore[arg-type]
    assert evil.read_bytes() == before and not app.did("sign") and not app.did("del")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sms-sign")] == []


def test_sign_checks_the_signature_it_replaces(tmp_path: Path, config: Path) -> None:
    key = create_keypair(tmp_path / "release").private.with_suffix("")
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    # Apptainer: the header no longer matches the build signature.
    app = FakeApptainer(lambda a: "Failed to verify container: integrity: header integrity compromised")
    with pytest.raises(UserError) as err:
        release_sign(app, sif, key)  # type: ignore[arg-type]
    assert "refusing to sign" in str(err.value) and "TAMPERED" in str(err.value)
    assert str(sif) in str(err.value) and ".sms-sign" not in str(err.value)
    assert not app.did("del") and not app.did("sign")  # the old signature is still there
    # Signed by a key nobody here knows: refused too, naming the keys tried.
    app = FakeApptainer(lambda a: "Failed to verify container: integrity: signature object 3 not valid: dsse: "
                                  "verify envelope failed: accepted signatures do not match threshold")
    with pytest.raises(UserError, match="not by a trusted key.*release.pub"):
        release_sign(app, sif, key)  # type: ignore[arg-type]
    assert not app.did("del")
    # By the signing key itself (or the build key): removed, then signed.
    app = FakeApptainer()
    release_sign(app, sif, key)  # type: ignore[arg-type]
    assert app.did("verify") and app.did("del")[0][2] == "3" and app.did("sign")


def test_require_verified_refuses_an_unsigned_image(tmp_path: Path, config: Path) -> None:
    key = create_keypair(tmp_path / "release").private.with_suffix("")
    sif = make_sif(tmp_path / "image.sif", IMAGE)
    rep = report(tmp_path / "verify.json", content_digest(sif))
    app = FakeApptainer()
    with pytest.raises(UserError, match="not signed, so nothing shows it is the image verify ran"):
        release_sign(app, sif, key, require=lambda c: passed_report(rep, content_digest(c), sif))  # type: ignore[arg-type]
    assert not app.did("sign")


def test_a_readable_signing_key_is_warned_about_not_refused(tmp_path: Path, config: Path) -> None:
    pair = create_keypair(tmp_path / "release")
    sif = make_sif(tmp_path / "image.sif", IMAGE)
    warned: list[str] = []
    sign(FakeApptainer(), sif, pair.private, replaces=None, warn=warned.append)  # type: ignore[arg-type]
    assert warned == []
    os.chmod(pair.private, 0o644)
    sign(FakeApptainer(), sif, pair.private, replaces=None, warn=warned.append)  # type: ignore[arg-type]
    assert len(warned) == 1 and "readable by others (mode 0644)" in warned[0] and "chmod 600" in warned[0]


def test_a_key_folder_made_under_umask_000_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pair = create_keypair(tmp_path / "new" / "keys" / "site")
    finally:
        os.umask(old)
    for folder in (tmp_path / "new", tmp_path / "new" / "keys"):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert pair.private.stat().st_mode & 0o777 == 0o600


# --- the trust check keeps Apptainer's reason --------------------------------------------

@pytest.mark.parametrize("reason", [
    "Failed to verify container: x509: certificate has expired or is not yet valid: current time "
    "2026-12-02T03:57:30Z is after 2026-12-01T03:57:30Z",
    "Failed to verify container: integrity: object 4: object not signed",
    "Failed to verify container: integrity: non-signature object not associated with object group",
    "Failed to verify container: integrity: EOF",
])
def test_apptainers_reason_is_kept(tmp_path: Path, reason: str) -> None:
    pub = create_keypair(tmp_path / "site").public
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    with pytest.raises(UserError) as err:
        check(FakeApptainer(lambda a: reason), sif, Trust([pub]))  # type: ignore[arg-type]
    msg = str(err.value)
    assert reason.removeprefix("Failed to verify container: ") in msg
    assert "trust its signer's .pub" not in msg and "\n" not in msg


def test_another_signer_is_still_named_as_such(tmp_path: Path) -> None:
    pub = create_keypair(tmp_path / "site").public
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    app = FakeApptainer(lambda a: "Failed to verify container: integrity: signature object 3 not valid: dsse: "
                                  "verify envelope failed: accepted signatures do not match threshold, Found: 0")
    with pytest.raises(UserError, match="signed, but not by a trusted key"):
        check(app, sif, Trust([pub]))  # type: ignore[arg-type]


def test_a_missing_roots_file_or_truncated_sif_is_named(tmp_path: Path) -> None:
    create_keypair(tmp_path / "ca-signed")
    from sms_services.trust.keys import create_ca
    create_ca(tmp_path / "ca")
    pair = create_keypair(tmp_path / "rel", ca=tmp_path / "ca")
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    app = FakeApptainer()
    with pytest.raises(UserError, match=r"nope.crt \(given as --certificate-roots\): no such file"):
        check(app, sif, Trust(certificate=pair.certificate, roots=tmp_path / "nope.crt"))  # type: ignore[arg-type]
    assert not app.calls
    (tmp_path / "cut.sif").write_bytes(sif.read_bytes()[:-10])
    with pytest.raises(UserError, match="cut.sif: truncated SIF"):
        check(app, tmp_path / "cut.sif", Trust([pair.public]))  # type: ignore[arg-type]


def test_library_list_of_a_file_or_missing_folder_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "index.json").write_text("{}")
    for lib, says in ((tmp_path / "index.json", "not a folder"), (tmp_path / "nope", "no such library folder")):
        assert cli.main(["library", "list", "--library", str(lib)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
