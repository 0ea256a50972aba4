"""Signing, trust and the library, with real Apptainer signatures and a real registry."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.files import sha256_file
from sms_services.image.build import Builder
from sms_services.inputs.project import Project
from sms_services.lab.verify import open_lab, prepare_images
from sms_services.trust.library import DirectoryLibrary
from sms_services.trust.signing import (
    Trust,
    build_signer,
    check,
    config_dir,
    content_digest,
    sif_objects,
    signatures,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built_sif(apptainer, project: Project) -> Path:
    # Both images, with this host's build key, before any test swaps the config dir:
    # open_lab would otherwise build the compute image with a throwaway key.
    sms, _ = prepare_images(project, apptainer, "3.5", None, say=lambda s: None)
    return sms


@pytest.fixture
def sif(built_sif: Path, tmp_path: Path, monkeypatch) -> Path:
    # The same host (its build key, which `sign` checks before it replaces that signature),
    # but no trusted keys.
    host_keys = config_dir() / "keys"
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "config/keys").mkdir(parents=True, mode=0o700)
    for name in ("build.key", "build.pub"):
        shutil.copy2(host_keys / name, tmp_path / "config/keys" / name)
    copy = tmp_path / "image.sif"
    shutil.copyfile(built_sif, copy)
    return copy


def smsctl(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main([*args])
    out, err = capsys.readouterr()
    return rc, out, err


def keys(capsys, prefix: Path, kind: str = "ec", *extra: str) -> Path:
    rc, out, err = smsctl(capsys, "keys", "create", "--out", str(prefix), "--type", kind, *extra)
    assert rc == 0, err
    assert "PRIVATE KEY" not in out + err
    return prefix


@pytest.mark.parametrize("kind", ["ec", "ed25519", "rsa"])
def test_sign_and_verify_round_trip(capsys, sif: Path, tmp_path: Path, kind: str) -> None:
    rc, out, err = smsctl(capsys, "keys", "create", "--out", str(tmp_path / f"site-{kind}"), "--type", kind, "--json")
    assert rc == 0 and "PRIVATE KEY" not in out + err, err
    made = json.loads(out)
    key = tmp_path / f"site-{kind}"
    assert (tmp_path / f"site-{kind}.key").stat().st_mode & 0o777 == 0o600
    assert smsctl(capsys, "sign", "--key", str(key), str(sif))[0] == 0
    rc, out, err = smsctl(capsys, "verify-signature", "--key", str(key), "--json", str(sif))
    assert rc == 0, err
    data = json.loads(out)
    assert data["signer"] == f"site-{kind}" and data["fingerprint"] == made["fingerprint"]
    # Plain Apptainer agrees: exactly one signature, by this key.
    res = subprocess.run(["apptainer", "verify", "--key", str(key) + ".pub", str(sif)], capture_output=True)
    assert res.returncode == 0


def test_tampered_image_is_refused(apptainer, capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    with open(sif, "r+b") as fh:  # one byte flipped inside the root filesystem partition
        fh.seek(next(o.start for o in sif_objects(apptainer, sif) if o.kind.startswith("FS")) + 4_000_000)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    rc, _, err = smsctl(capsys, "verify-signature", "--key", str(key), str(sif))
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and "TAMPERED" in err


def test_wrong_key_and_missing_key_are_refused(capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    other = keys(capsys, tmp_path / "other", "ed25519")
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    rc, _, err = smsctl(capsys, "verify-signature", "--key", str(other), str(sif))
    assert rc != 0 and "not by a trusted key" in err and len(err.strip().splitlines()) == 1
    rc, _, err = smsctl(capsys, "verify-signature", "--key", str(tmp_path / "nokey"), str(sif))
    assert rc != 0 and "no public key" in err
    rc, _, err = smsctl(capsys, "keys", "create", "--out", str(tmp_path / "k"), "--type", "dsa")
    assert rc != 0 and "use one of ec, ed25519, rsa" in err and not (tmp_path / "k.key").exists()


def test_site_ca_certificate_chain(capsys, sif: Path, tmp_path: Path) -> None:
    assert smsctl(capsys, "keys", "create-ca", "--out", str(tmp_path / "ca"))[0] == 0
    assert smsctl(capsys, "keys", "create-ca", "--out", str(tmp_path / "other-ca"))[0] == 0
    key = keys(capsys, tmp_path / "release", "ec", "--ca", str(tmp_path / "ca"), "--name", "release signer")
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    rc, out, err = smsctl(capsys, "verify-signature", "--certificate", f"{key}.crt", "--certificate-roots",
                          str(tmp_path / "ca.crt"), str(sif))
    assert rc == 0 and "release signer" in out, err
    rc, _, err = smsctl(capsys, "verify-signature", "--certificate", f"{key}.crt", "--certificate-roots",
                        str(tmp_path / "other-ca.crt"), str(sif))
    assert rc != 0


def test_unsigned_image_does_not_start_without_the_flag(apptainer, project: Project, sif: Path) -> None:
    for obj in signatures(apptainer, sif):
        subprocess.run(["apptainer", "sif", "del", str(obj), str(sif)], check=True)
    with pytest.raises(UserError, match="not signed"):
        with open_lab(project, apptainer, "3.5", sif=sif, name="smsunsigned"):
            pytest.fail("an unsigned image was started")
    warned = []
    assert check(apptainer, sif, Trust(allow_unsigned=True), warn=warned.append) is None
    assert "NOT SIGNED" in warned[0]


def test_build_signs_with_the_build_key_and_verify_trusts_only_that_and_release_keys(
        apptainer, built_sif: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    signer = check(apptainer, built_sif, Trust.candidate())
    assert signer is not None and signer.name == "build"
    # An empty trusted/ folder, whatever this host trusts.
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(UserError, match="no trusted key"):
        check(apptainer, built_sif, Trust.release([]))  # production trust does not include the build key


def test_a_kept_image_follows_the_hosts_build_key(apptainer, built_sif: Path, project: Project,
                                                   monkeypatch, tmp_path: Path) -> None:
    """A replaced config dir (new build key) must not leave build/ images that verify refuses."""
    variant = project.matrix.get("3.5").variant()
    here = build_signer().fingerprint
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "other-host"))
    other = build_signer().fingerprint
    assert other != here
    with pytest.raises(UserError, match="not by a trusted key"):
        check(apptainer, built_sif, Trust.candidate())
    assert Builder(project, apptainer).build(variant).layers["final"] == "cached"
    assert check(apptainer, built_sif, Trust.candidate()).fingerprint == other
    monkeypatch.undo()  # back to this host's key: kept again, signed again
    Builder(project, apptainer).build(variant)
    assert check(apptainer, built_sif, Trust.candidate()).fingerprint == here


def test_sign_only_what_verify_passed(apptainer, capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    report = tmp_path / "verify.json"
    content = content_digest(apptainer, sif)
    report.write_text(json.dumps({"ok": False, "failed_services": ["nat"], "sif_content_sha256": content}))
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), "--require-verified", str(report), str(sif))
    assert rc != 0 and "verify FAILED (nat)" in err
    report.write_text(json.dumps({"ok": True, "failed_services": [], "sif_content_sha256": "sha256:" + "0" * 64}))
    rc, _, err = smsctl(capsys, "sign", "--key", str(key), "--require-verified", str(report), str(sif))
    assert rc != 0 and "another image" in err
    report.write_text(json.dumps({"ok": True, "failed_services": [], "sif_content_sha256": content}))
    before = sha256_file(sif)
    assert smsctl(capsys, "sign", "--key", str(key), "--require-verified", str(report), str(sif))[0] == 0
    # The file changed (new signature), what the signature vouches for did not.
    assert sha256_file(sif) != before and content_digest(apptainer, sif) == content


# --- the directory library ------------------------------------------------------------

def _signed_copy(capsys, sif: Path, key: Path, name: str) -> Path:
    copy = sif.with_name(name)
    shutil.copyfile(sif, copy)
    assert smsctl(capsys, "sign", "--key", str(key), str(copy))[0] == 0  # new signature, new bytes
    return copy


def test_publish_pull_promote_rollback(apptainer, capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    lib = tmp_path / "lib"
    # The report was made on the build-signed candidate, before the release signature.
    report = tmp_path / "verify.json"
    report.write_text(json.dumps({"ok": True, "failed_services": [],
                                  "sif_content_sha256": content_digest(apptainer, sif)}))
    one, two = _signed_copy(capsys, sif, key, "one.sif"), _signed_copy(capsys, sif, key, "two.sif")
    base = ["--library", str(lib), "--key", str(key)]
    assert smsctl(capsys, "publish", *base, "--sif", str(one), "--tag", "stable", "--verify-report", str(report),
                  "3.5")[0] == 0
    assert smsctl(capsys, "publish", *base, "--sif", str(two), "--tag", "testing", "3.5")[0] == 0
    rc, _, err = smsctl(capsys, "publish", *base, "--sif", str(two), "3.5")
    assert rc != 0 and "already published as 3.5:2" in err

    rc, out, _ = smsctl(capsys, "pull", *base, "3.5:stable")
    assert rc == 0 and sha256_file(Path(out.splitlines()[-1])) == sha256_file(one)
    assert smsctl(capsys, "library", "tag", "--library", str(lib), "3.5:2", "stable")[0] == 0
    rc, out, _ = smsctl(capsys, "pull", *base, "3.5:stable")
    assert sha256_file(Path(out.splitlines()[-1])) == sha256_file(two)
    assert smsctl(capsys, "library", "rollback", "--library", str(lib), "3.5", "stable")[0] == 0
    rc, out, _ = smsctl(capsys, "pull", *base, "3.5:stable")
    assert sha256_file(Path(out.splitlines()[-1])) == sha256_file(one)

    rc, out, _ = smsctl(capsys, "library", "list", "--library", str(lib), "--json")
    entries = {e["version"]: e for e in json.loads(out)}
    assert entries["1"]["tags"] == ["stable"] and entries["2"]["tags"] == ["testing"]
    assert entries["1"]["verify"].startswith("passed") and entries["2"]["verify"] == "not verified"
    assert entries["1"]["slurm"].startswith("24.11") and entries["1"]["fingerprint"].startswith("sha256:")
    published = lib / entries["1"]["path"]
    assert published.stat().st_mode & 0o222 == 0  # immutable
    # A 3.5 image is not published as another release (its sms-services.release label).
    rc, _, err = smsctl(capsys, "publish", *base, "--sif", str(one), "3.6")
    assert rc != 0 and "built as release 3.5" in err and err.count("\n") == 1


def test_corrupt_published_file_and_corrupt_index_are_never_served(capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    lib = tmp_path / "lib"
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    assert smsctl(capsys, "publish", "--library", str(lib), "--key", str(key), "--sif", str(sif), "3.5")[0] == 0
    published = lib / "sms-services/3.5/1.sif"
    published.chmod(0o644)
    with open(published, "ab") as fh:
        fh.write(b"x")
    rc, out, err = smsctl(capsys, "pull", "--library", str(lib), "--key", str(key), "3.5")
    assert rc != 0 and out == "" and "sha256 does not match" in err
    (lib / "index.json").write_text("{not json")
    rc, _, err = smsctl(capsys, "library", "list", "--library", str(lib))
    assert rc != 0 and "corrupt library index" in err and len(err.strip().splitlines()) == 1


def test_an_interrupted_publish_leaves_no_entry_and_no_partial_file(apptainer, capsys, sif: Path,
                                                                    tmp_path: Path, monkeypatch) -> None:
    key = keys(capsys, tmp_path / "site")
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    lib = DirectoryLibrary(tmp_path / "lib", apptainer)

    def copy_then_die(src, dst, **kw):
        dst.write(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr("sms_services.files.copy_into", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        lib.publish(sif, "3.5", Trust.release([str(key)]), tags=["stable"], verify_report=None,
                    labels=apptainer.labels(sif))
    assert lib.entries() == []
    assert not [p for p in (tmp_path / "lib").rglob("*.sif*")]


def test_concurrent_publishers_do_not_corrupt_the_index(capsys, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    copies = [_signed_copy(capsys, sif, key, f"c{i}.sif") for i in range(4)]
    lib = tmp_path / "lib"
    procs = [subprocess.Popen([sys.executable, "-m", "sms_services.cli.main", "--root", str(ROOT), "publish",
                               "--library", str(lib), "--key", str(key), "--sif", str(c), "--tag", "testing", "3.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in copies]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    entries = json.loads(smsctl(capsys, "library", "list", "--library", str(lib), "--json")[1])
    assert sorted(e["version"] for e in entries) == ["1", "2", "3", "4"]
    assert sorted(e["sha256"] for e in entries) == sorted(sha256_file(c) for c in copies)
    for e in entries:
        assert sha256_file(lib / e["path"]) == e["sha256"]


# --- an OCI registry (Debian's docker-registry, on 127.0.0.1) ------------------------

@pytest.fixture
def registry(tmp_path: Path):
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry missing: scripts/install-host.sh installs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "registry.yml"
    conf.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([binary, "serve", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"oras://127.0.0.1:{port}/sms-services"
    finally:
        proc.terminate()
        proc.wait(10)


def test_registry_publish_and_pull(capsys, registry: str, sif: Path, tmp_path: Path) -> None:
    key = keys(capsys, tmp_path / "site")
    other = keys(capsys, tmp_path / "other")
    smsctl(capsys, "sign", "--key", str(key), str(sif))
    rc, _, err = smsctl(capsys, "publish", "--library", registry, "--key", str(key), "--sif", str(sif),
                        "--tag", "stable", "3.5")
    assert rc == 0, err
    rc, out, err = smsctl(capsys, "pull", "--library", registry, "--key", str(key), "--dest",
                          str(tmp_path / "pulled"), "3.5:stable")
    assert rc == 0, err
    assert sha256_file(Path(out.splitlines()[-1])) == sha256_file(sif)
    # No tag: <release>-latest, which publish pushed too (the last version published).
    rc, out, err = smsctl(capsys, "pull", "--library", registry, "--key", str(key), "--dest",
                          str(tmp_path / "pulled"), "3.5")
    assert rc == 0, err
    assert out.splitlines()[-1].endswith("sms-services-3.5-latest.sif")
    assert sha256_file(Path(out.splitlines()[-1])) == sha256_file(sif)
    rc, _, err = smsctl(capsys, "publish", "--library", registry, "--key", str(key), "--sif", str(sif), "3.6")
    assert rc != 0 and "built as release 3.5" in err
    rc, out, err = smsctl(capsys, "pull", "--library", registry, "--key", str(other), "--dest",
                          str(tmp_path / "refused"), "3.5:stable")
    assert rc != 0 and "not by a trusted key" in err
    assert not list((tmp_path / "refused").glob("*"))
