"""Backup and restore against a hostile backup folder and overlay path (issue 10.2, 10.3, 10.5, 10.9).

No instance runs here: the overlay is a plain file, so nothing is frozen or mounted.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import pytest

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.files import sha256_file
from sms_services.runtime import backup as bk


@pytest.fixture(autouse=True)
def no_instance(monkeypatch) -> None:
    monkeypatch.setattr(bk, "usage", lambda overlay: (1 << 20, overlay.stat().st_size))
    monkeypatch.setattr(bk, "frozen", lambda overlay: nullcontext())
    monkeypatch.setattr(bk, "in_use", lambda overlay: False)


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "sms.img"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        fh.write(b"ext3 superblock")
        fh.seek(8 << 20)
        fh.write(b"slurm state")
        fh.truncate(32 << 20)
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "precious.img"
    v.write_text("not a backup\n")
    return v


def test_rotation_removes_only_backups_it_made_in_the_backup_folder(overlay: Path, tmp_path: Path,
                                                                    victim: Path) -> None:
    dest = tmp_path / "backups"
    first = bk.backup(overlay, dest, keep=1)
    # Records planted beside the backups, older than any, naming files elsewhere
    # (or in the folder under names backup() never gives).
    (dest / "keep.img").write_text("an admin's file\n")
    for name, image in (("a-20000101T000000000000Z.img.json", str(victim)),
                        ("keep.img.json", str(dest / "keep.img")),
                        ("sms-20000101T000000000000Z.img.json", str(dest / "../precious.img"))):
        record = {**json.loads(Path(first.record).read_text()), "image": image, "created": "2000-01-01T00:00:00"}
        (dest / name).write_text(json.dumps(record))
    second = bk.backup(overlay, dest, keep=1)
    assert victim.read_text() == "not a backup\n"
    assert (dest / "keep.img").read_text() == "an admin's file\n"
    assert not Path(first.image).exists() and not Path(first.record).exists()  # its own old one goes
    assert Path(second.image).is_file() and sha256_file(Path(second.image)) == sha256_file(overlay)
    assert Path(second.image).stat().st_blocks * 512 < 1 << 20  # still a sparse copy


def test_rotation_unlinks_a_link_planted_as_a_backup_never_its_target(overlay: Path, tmp_path: Path,
                                                                      victim: Path) -> None:
    dest = tmp_path / "backups"
    first = bk.backup(overlay, dest, keep=1)
    Path(first.image).unlink()
    Path(first.image).symlink_to(victim)
    bk.backup(overlay, dest, keep=1)
    assert victim.read_text() == "not a backup\n" and not os.path.lexists(first.image)


def test_restore_refuses_a_symlinked_overlay(overlay: Path, tmp_path: Path) -> None:
    b = bk.backup(overlay, tmp_path / "backups")
    link = tmp_path / "sms-link.img"
    link.symlink_to(overlay)
    with open(overlay, "r+b") as fh:
        fh.write(b"EXT3 changed after the backup")
    changed = sha256_file(overlay)
    with pytest.raises(UserError, match="a symbolic link .*pass the real path") as err:
        bk.restore(Path(b.image), link)
    assert str(overlay) in str(err.value) and "\n" not in str(err.value)
    assert link.is_symlink() and sha256_file(overlay) == changed
    bk.restore(Path(b.image), overlay)  # the real path: restored
    assert sha256_file(overlay) == b.sha256


def test_restore_follows_no_link_planted_at_the_old_temporary_names(overlay: Path, tmp_path: Path,
                                                                   victim: Path) -> None:
    b = bk.backup(overlay, tmp_path / "backups")
    for name in (f".{overlay.name}.restoring", f"..{overlay.name}.restoring.partial", f".{overlay.name}.partial"):
        (overlay.parent / name).symlink_to(victim)
    overlay.write_bytes(b"damaged")
    bk.restore(Path(b.image), overlay)
    assert victim.read_text() == "not a backup\n"
    assert sha256_file(overlay) == b.sha256 and not overlay.is_symlink()
    assert len(list(overlay.parent.iterdir())) == 4  # the overlay and the three links, nothing staged


def test_a_corrupted_backup_leaves_the_overlay_alone(overlay: Path, tmp_path: Path) -> None:
    b = bk.backup(overlay, tmp_path / "backups")
    with open(b.image, "r+b") as fh:
        fh.write(b"bit rot")
    before = sha256_file(overlay)
    with pytest.raises(UserError, match="CORRUPTED"):
        bk.restore(Path(b.image), overlay)
    assert sha256_file(overlay) == before


def smsctl(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


def test_backup_to_a_file_and_restore_onto_a_folder_are_one_line(capsys, overlay: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, err = smsctl(capsys, "backup", "--overlay", str(overlay), "--to", str(afile))
    assert rc == 2 and err.count("\n") == 1 and "not a folder" in err
    rc, err = smsctl(capsys, "backup", "--overlay", str(overlay), "--to", str(afile / "sub"))
    assert rc == 2 and err.count("\n") == 1
    b = bk.backup(overlay, tmp_path / "backups")
    rc, err = smsctl(capsys, "restore", b.image, "--overlay", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "a folder; --overlay names the overlay image file" in err
    rc, err = smsctl(capsys, "restore", b.image, "--overlay", str(tmp_path / "new.img"))
    assert rc == 0 and sha256_file(tmp_path / "new.img") == b.sha256
