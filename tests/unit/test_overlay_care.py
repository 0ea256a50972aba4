"""Overlay check, repair and grow on real ext3 images made in the test (mkfs.ext3 needs no root)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sms_services.cli.main import main
from sms_services.errors import UserError
from sms_services.runtime import overlay_care as oc
from sms_services.runtime.init import parse_size

MKFS = shutil.which("mkfs.ext3") or shutil.which("mkfs.ext3", path="/usr/sbin:/sbin")
DEBUGFS = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(not (MKFS and DEBUGFS), reason="e2fsprogs not installed")


def overlay(tmp_path: Path, mib: int = 32) -> Path:
    tree = tmp_path / "tree"
    (tree / "upper/var/spool/slurmctld").mkdir(parents=True)
    (tree / "upper/var/spool/slurmctld/job_state").write_text("state\n")
    img = tmp_path / "sms-overlay.img"
    subprocess.run(["truncate", "-s", f"{mib}M", str(img)], check=True)
    subprocess.run([MKFS, "-F", "-q", "-d", str(tree), str(img)], check=True)
    return img


def damage(img: Path) -> None:
    subprocess.run([DEBUGFS, "-w", "-R", "set_inode_field /upper/var/spool/slurmctld/job_state links_count 5",
                    str(img)], check=True, capture_output=True)


def test_a_clean_overlay_passes_and_a_damaged_one_is_refused_with_how_to_repair(tmp_path: Path) -> None:
    img = overlay(tmp_path)
    assert oc.check(img).clean
    oc.require_clean(img, name="sms")
    damage(img)
    with pytest.raises(UserError) as err:
        oc.require_clean(img, name="sms")
    msg = str(err.value)
    assert "ref count is 5, should be 1" in msg and "smsctl overlay repair --name sms" in msg, msg
    assert "\n" not in msg


def test_repair_takes_a_backup_first_then_fixes(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sms_services.runtime.backup.frozen", _not_running)
    img = overlay(tmp_path)
    damage(img)
    damaged = img.read_bytes()
    assert main(["overlay", "repair", "--overlay", str(img), "--backup-to", str(tmp_path / "bk")]) == 0
    out = capsys.readouterr().out
    assert "backup before repair" in out and "Fix? yes" in out and "repaired" in out, out
    assert oc.check(img).clean
    (saved,) = (tmp_path / "bk").glob("*.img")
    assert saved.read_bytes() == damaged  # the backup holds the state before e2fsck -y touched it


def test_check_exits_1_naming_the_damage(tmp_path: Path, capsys) -> None:
    img = overlay(tmp_path)
    assert main(["overlay", "check", "--overlay", str(img)]) == 0
    damage(img)
    assert main(["overlay", "check", "--overlay", str(img)]) == 1
    assert "ref count" in capsys.readouterr().err


def test_grow_grows_the_filesystem_sparsely_and_keeps_files(tmp_path: Path) -> None:
    img = overlay(tmp_path, 32)
    blocks = img.stat().st_blocks
    assert oc.grow(img, 96 * 2**20) == (32 * 2**20, 96 * 2**20)
    # sparse: only the new groups' metadata is written, not the 64 MiB added
    assert img.stat().st_size == 96 * 2**20 and (img.stat().st_blocks - blocks) * 512 < 16 * 2**20
    out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    assert int(fields["Block count"]) * int(fields["Block size"]) == 96 * 2**20
    got = subprocess.run([DEBUGFS, "-R", "cat /upper/var/spool/slurmctld/job_state", str(img)],
                         capture_output=True, text=True).stdout
    assert got == "state\n"
    assert oc.check(img).clean


@pytest.mark.parametrize("size", [16 * 2**20, 32 * 2**20])
def test_grow_never_shrinks(tmp_path: Path, size: int) -> None:
    img = overlay(tmp_path, 32)
    before = img.read_bytes()
    with pytest.raises(UserError, match="never shrunk"):
        oc.grow(img, size)
    assert img.read_bytes() == before


def test_grow_refuses_a_link_and_a_bad_size(tmp_path: Path) -> None:
    img = overlay(tmp_path)
    link = tmp_path / "link.img"
    link.symlink_to(img)
    with pytest.raises(UserError, match="not a link"):
        oc.grow(link, 2**30)
    for bad in ("lots", "8X", "-1G", "1.5G"):
        with pytest.raises(UserError, match="give a size like"):
            parse_size(bad)
    # One reading of a size for init and grow: a bare number is MiB in both.
    assert parse_size("4GiB") == parse_size("4G") == parse_size("4096") == 4096


def _not_running(overlay: Path):  # backup freezes a running instance's filesystem; none runs here
    from contextlib import nullcontext
    return nullcontext()


def test_a_new_overlay_and_its_copies_are_readable_by_root_only(tmp_path: Path) -> None:
    """It holds the munge key: with debugfs, any user who can read the file could read the key."""
    from sms_services.runtime.overlay import copy_overlay, create_overlay

    img = tmp_path / "new.img"
    create_overlay(img, {"/etc/munge/munge.key": b"k" * 1024}, size_mib=16)
    assert img.stat().st_mode & 0o777 == 0o600
    copy_overlay(img, tmp_path / "copy.img")
    assert (tmp_path / "copy.img").stat().st_mode & 0o777 == 0o600
