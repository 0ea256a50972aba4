"""Start exactly what was checked: the private copy `start` and `cutover` check and start (no root)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from sifmaker import SIGNED, FakeApptainer
from sifmaker import write_sif as make_sif

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.runtime import deploy
from sms_services.runtime import pin as pin_module
from sms_services.runtime.pin import checked, checked_copy, holding, pin, prune
from sms_services.trust.keys import create_keypair
from sms_services.trust.signing import Trust

ROOT = Path(__file__).resolve().parents[2]


def test_the_copy_is_private_read_only_and_named_by_its_content(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    folder = tmp_path / "state" / "images"
    copy, made = pin(sif, folder)
    assert made and copy.parent == folder.resolve()
    assert copy.name == hashlib.sha256(sif.read_bytes()).hexdigest() + ".sif"
    assert copy.stat().st_mode & 0o777 == 0o444 and folder.stat().st_mode & 0o777 == 0o700
    assert copy.read_bytes() == sif.read_bytes() and copy.stat().st_ino != sif.stat().st_ino  # a copy, not a link
    assert pin(sif, folder) == (copy, False)  # the same image again: the same copy, kept
    assert [p.name for p in folder.iterdir()] == [copy.name]  # no temporary file left


def test_a_planted_link_or_changed_copy_is_not_used(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    folder = tmp_path / "images"
    folder.mkdir(mode=0o700)
    name = hashlib.sha256(sif.read_bytes()).hexdigest() + ".sif"
    other = tmp_path / "other.sif"
    other.write_bytes(b"not the image")
    (folder / name).symlink_to(other)
    copy, made = pin(sif, folder)
    assert made and not copy.is_symlink() and copy.read_bytes() == sif.read_bytes()
    assert other.read_bytes() == b"not the image"  # written through nothing
    link = tmp_path / "linked-images"
    link.symlink_to(folder)
    with pytest.raises(UserError, match="linked-images: not a folder"):
        pin(sif, link)


def test_a_refused_copy_is_removed_and_the_message_names_the_given_file(tmp_path: Path) -> None:
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    pub = create_keypair(tmp_path / "site").public
    app = FakeApptainer(lambda a: "Failed to verify container: integrity: object 2: object not signed")
    with pytest.raises(UserError) as err:
        checked_copy(app, sif, Trust([pub]), tmp_path / "images")  # type: ignore[arg-type]
    assert str(err.value).startswith(f"{sif}: ") and "object 2: object not signed" in str(err.value)
    assert list((tmp_path / "images").iterdir()) == []


def test_a_checked_copy_stays_only_when_the_command_keeps_it(tmp_path: Path) -> None:
    """init never keeps its copy, start keeps it once started, a failed start or cutover does not."""
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    pub = create_keypair(tmp_path / "site").public
    app, folder = FakeApptainer(lambda a: ""), tmp_path / "images"
    with checked(app, sif, Trust([pub]), folder) as copy:  # type: ignore[arg-type]
        assert copy.path.read_bytes() == sif.read_bytes()
    assert list(folder.iterdir()) == []
    with pytest.raises(RuntimeError), checked(app, sif, Trust([pub]), folder) as copy:  # type: ignore[arg-type]
        raise RuntimeError("the start failed")
    assert list(folder.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), checked(app, sif, Trust([pub]), folder) as copy:  # type: ignore[arg-type]
        copy.keep = True  # a cutover's record names it by now
        raise KeyboardInterrupt
    assert list(folder.iterdir()) == [copy.path]
    copy.path.chmod(0o644)
    copy.path.unlink()
    with checked(app, sif, Trust([pub]), folder) as copy:  # type: ignore[arg-type]
        copy.keep = True
    assert list(folder.iterdir()) == [copy.path]
    with checked(app, sif, Trust([pub]), folder) as again:  # type: ignore[arg-type]
        pass  # not made by this call: a record may name it, so it stays
    assert again.path == copy.path and copy.path.exists()


def test_copies_no_record_names_go_when_a_command_ends(tmp_path: Path) -> None:
    """A cutover from A to B: once the record names B, A's copy goes; B's stays."""
    a, b = make_sif(tmp_path / "a.sif", SIGNED), make_sif(tmp_path / "b.sif", SIGNED, uuid=b"\x08" * 16)
    pub = create_keypair(tmp_path / "site").public
    app, folder = FakeApptainer(lambda a: ""), tmp_path / "images"
    record: set[str] = set()
    with checked(app, a, Trust([pub]), folder, named=lambda: record) as first:  # type: ignore[arg-type]
        record = {first.path.name}
        first.keep = True
    with checked(app, b, Trust([pub]), folder, named=lambda: record) as second:  # type: ignore[arg-type]
        assert first.path.exists()  # the old image runs until the cutover is done
        record = {second.path.name}
        second.keep = True
    assert sorted(folder.iterdir()) == [second.path]
    # A rolled-back cutover: the record still names B, the refused C goes.
    c = make_sif(tmp_path / "c.sif", SIGNED, uuid=b"\x09" * 16)
    with checked(app, c, Trust([pub]), folder, named=lambda: record) as third:  # type: ignore[arg-type]
        pass
    assert sorted(folder.iterdir()) == [second.path] and not third.path.exists()
    # A record that does not load: nothing is removed.
    (folder / ("0" * 64 + ".sif")).write_bytes(b"an old copy")

    def broken() -> set[str]:
        raise UserError("a record that does not load")
    with checked(app, b, Trust([pub]), folder, named=broken):  # type: ignore[arg-type]
        pass
    assert len(list(folder.iterdir())) == 2


def test_a_copy_another_command_holds_is_never_removed(tmp_path: Path) -> None:
    """init and start of the same image at once: init ends first and must not remove the copy
    start is about to start (and record)."""
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    pub = create_keypair(tmp_path / "site").public
    app, folder = FakeApptainer(lambda a: ""), tmp_path / "images"
    with checked(app, sif, Trust([pub]), folder, named=set) as start:  # type: ignore[arg-type]
        with checked(app, sif, Trust([pub]), folder, named=set) as init:  # type: ignore[arg-type]
            assert init.path == start.path
        assert start.path.exists()  # init's end removed nothing start holds
        assert prune(folder, []) == []
        start.keep = True
    assert start.path.exists()
    assert prune(folder, []) == [start.path.name]  # nobody holds it, no record names it
    (folder / "notes.txt").write_text("the admin's")
    assert prune(folder, []) == [] and (folder / "notes.txt").exists()  # only copies pin made


def test_a_cutovers_old_image_is_kept_until_the_cutover_ends(tmp_path: Path) -> None:
    """The record names the new copy from the new start on; a rollback still needs the old
    one, so no other smsctl's cleanup may remove it meanwhile."""
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    old, _ = pin(sif, tmp_path / "images")
    with holding(old):
        assert prune(tmp_path / "images", []) == [] and old.exists()
    assert prune(tmp_path / "images", []) == [old.name]
    with holding(old):  # (gone already: nothing to hold, no error)
        pass


def test_a_copy_removed_while_pin_looks_at_it_is_made_again_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    folder = tmp_path / "images"
    first, _ = pin(sif, folder)

    def removed_meanwhile(dir_fd: int, name: str, sha: str) -> bool:
        os.unlink(name, dir_fd=dir_fd)  # another smsctl's cleanup, between the link and the look
        return False
    monkeypatch.setattr(pin_module, "_same", removed_meanwhile)
    again, made = pin(sif, folder)
    assert made and again == first and again.read_bytes() == sif.read_bytes()


def test_start_starts_the_checked_copy_even_if_the_file_is_swapped_after_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Issue 10 item 11: the old code checked and started one path, so a swap in between ran."""
    state = tmp_path / "state"
    monkeypatch.setenv("SMS_STATE_DIR", str(state))
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    checked = sif.read_bytes()
    key = create_keypair(tmp_path / "site")

    def verdict(args: list[str]) -> str:
        sif.write_bytes(b"swapped after the check")  # the attacker's moment
        return ""

    app = FakeApptainer(verdict)
    started: list[Path] = []
    monkeypatch.setattr("sms_services.apptainer.Apptainer.find", classmethod(lambda cls: app))
    app.labels = lambda image: {"sms-services.release": "3.5"}  # type: ignore[attr-defined]
    monkeypatch.setattr(deploy, "is_bridge", lambda name: True)
    monkeypatch.setattr(deploy, "instance_pids", lambda apptainer, name: [])
    monkeypatch.setattr(deploy, "cni_dir", lambda: tmp_path / "cni")
    monkeypatch.setattr(deploy, "start_instance", lambda apptainer, image, *a, **kw: started.append(image))
    # Not what this test is about: the overlay's fsck and the lease renewer (test_overlay_care, test_lease).
    monkeypatch.setattr(deploy, "require_clean", lambda overlay, name="": None)
    monkeypatch.setattr(deploy, "instance_list", lambda apptainer, name="": {name: 1})
    monkeypatch.setattr(deploy, "spawn_renewer", lambda *a, **kw: 0)
    overlay = tmp_path / "overlay.img"
    overlay.write_bytes(b"")
    rc = cli.main(["--root", str(ROOT), "start", str(sif), "--name", "sms", "--overlay", str(overlay),
                   "--site", str(ROOT / "overlays/lab/site.yaml"), "--provision-bridge", "br-p",
                   "--public-bridge", "br-u", "--key", str(key.public)])
    assert rc == 0, capsys.readouterr().err
    (image,) = started
    assert image.parent == (state / "images").resolve() and image.read_bytes() == checked
    verified = [c[-1] for c in app.calls if c[0] == "verify"]
    assert verified == [str(image)]  # what was checked is what started
    record = json.loads((state / "instances/sms.json").read_text())
    assert record["sif"] == str(image) and record["source"] == str(sif)
    assert os.stat(image).st_mode & 0o777 == 0o444


def test_start_by_name_alone_restarts_the_recorded_instance_as_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """What the boot unit runs (smsctl start --name N --pid-file F): the record's image, checked
    again, on the record's overlay, site and bridges; the pid file passed to Apptainer and kept."""
    state = tmp_path / "state"
    monkeypatch.setenv("SMS_STATE_DIR", str(state))
    monkeypatch.setenv("SMS_CONFIG_DIR", str(tmp_path / "config"))
    sif = make_sif(tmp_path / "image.sif", SIGNED)
    key = create_keypair(tmp_path / "site")
    app = FakeApptainer(lambda args: "")
    calls: list[tuple[Path, list[str]]] = []
    monkeypatch.setattr("sms_services.apptainer.Apptainer.find", classmethod(lambda cls: app))
    app.labels = lambda image: {"sms-services.release": "3.5"}  # type: ignore[attr-defined]
    monkeypatch.setattr(deploy, "is_bridge", lambda name: True)
    monkeypatch.setattr(deploy, "instance_pids", lambda apptainer, name: [])
    monkeypatch.setattr(deploy, "cni_dir", lambda: tmp_path / "cni")
    monkeypatch.setattr(deploy, "start_instance",
                        lambda apptainer, image, *a, extra=(), **kw: calls.append((image, list(extra))))
    monkeypatch.setattr(deploy, "require_clean", lambda overlay, name="": None)
    monkeypatch.setattr(deploy, "instance_list", lambda apptainer, name="": {name: 1})
    monkeypatch.setattr(deploy, "spawn_renewer", lambda *a, **kw: 0)
    overlay = tmp_path / "overlay.img"
    overlay.write_bytes(b"")
    site = ROOT / "overlays/lab/site.yaml"
    base = ["--root", str(ROOT), "start"]
    assert cli.main([*base, str(sif), "--name", "sms", "--overlay", str(overlay), "--site", str(site),
                     "--provision-bridge", "br-p", "--public-bridge", "br-u", "--key", str(key.public)]) == 0
    first = json.loads((state / "instances/sms.json").read_text())
    pid_file = tmp_path / "run/sms.pid"
    assert cli.main([*base, "--name", "sms", "--pid-file", str(pid_file), "--key", str(key.public)]) == 0
    again = json.loads((state / "instances/sms.json").read_text())
    assert calls[1][0] == calls[0][0] == Path(first["sif"])  # the same checked copy
    assert calls[1][1][-2:] == ["--pid-file", str(pid_file)] and pid_file.parent.is_dir()
    assert {k: again[k] for k in ("overlay", "site", "provision_bridge", "public_bridge", "source")} == \
        {k: first[k] for k in ("overlay", "site", "provision_bridge", "public_bridge", "source")}
    assert again["pid_file"] == str(pid_file)
    assert [c[-1] for c in app.calls if c[0] == "verify"] == [first["sif"]] * 2  # checked again
    capsys.readouterr()
    # Half a new start is one line, not a start with some settings from nowhere.
    assert cli.main([*base, "--name", "sms", "--overlay", str(overlay)]) == 2
    assert "drop --overlay" in capsys.readouterr().err
    assert cli.main([*base, str(sif), "--name", "sms2", "--overlay", str(overlay)]) == 2
    assert "also give --site --provision-bridge --public-bridge" in capsys.readouterr().err
    assert cli.main([*base, "--name", "nosuch"]) == 2
    assert "no record of an instance named 'nosuch'" in capsys.readouterr().err


def test_a_cutover_of_an_instance_its_unit_started_is_refused_before_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The unit follows the pid file only while its main process lives; a cutover stops that
    process first, so systemd would act on the service in the middle of it."""
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    deploy.Record("sms", str(tmp_path / "x.sif"), "3.5", str(tmp_path / "o.img"), "site.yaml", "br-p", "br-u",
                  pid_file="/run/sms-services/sms.pid").save()
    found: list[str] = []
    monkeypatch.setattr("sms_services.apptainer.Apptainer.find", classmethod(lambda cls: found.append("ran")))
    rc = cli.main(["--root", str(ROOT), "cutover", "--name", "sms", "--to", "3.6"])
    err = capsys.readouterr().err
    assert rc != 0 and "was started with --pid-file (by its unit sms-services-sms.service)" in err, err
    assert "systemctl stop sms-services-sms.service" in err and "Traceback" not in err
    assert found == []  # refused before it looked for Apptainer
