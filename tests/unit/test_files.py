"""files.replacing, the one way smsctl writes a file: no planted link is ever followed (issue 10.2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.files import atomic_write, copy_file, read_file, replacing, sha256_file


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the folder written to, that a planted link points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    v = outside / "passwd"
    v.write_text("root:x:0:0\n")
    v.chmod(0o644)
    return v


def untouched(victim: Path) -> bool:
    return victim.read_text() == "root:x:0:0\n" and (victim.stat().st_mode & 0o777) == 0o644 \
        and [p.name for p in victim.parent.iterdir()] == [victim.name]


def test_atomic_write_follows_no_link_at_the_old_temporary_name_or_the_target(tmp_path: Path, victim: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    target = folder / "index.json"
    (folder / ".index.json.partial").symlink_to(victim)  # the name the old code wrote, then renamed
    atomic_write(target, "new\n")
    assert untouched(victim)
    assert target.read_text() == "new\n" and not target.is_symlink()

    target.unlink()
    target.symlink_to(victim)  # a link at the target itself is replaced, not written through
    atomic_write(target, "newer\n", 0o600)
    assert untouched(victim)
    assert not target.is_symlink() and target.read_text() == "newer\n"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [".index.json.partial", "index.json"]


def test_a_linked_folder_is_refused_in_one_line(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "shared").symlink_to(victim.parent)
    with pytest.raises(UserError, match="a symbolic link") as err:
        atomic_write(tmp_path / "shared" / "passwd", "pwned\n")
    assert "\n" not in str(err.value)
    assert untouched(victim)


def test_under_a_root_no_folder_on_the_way_may_be_a_link(tmp_path: Path, victim: Path) -> None:
    root = tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "slurm").symlink_to(victim.parent)  # what a container could leave in its overlay
    with pytest.raises(UserError, match="etc/slurm: a symbolic link"):
        with replacing(root / "etc" / "slurm" / "passwd", root=root, create=True) as new:
            new.file.write(b"pwned\n")
    assert untouched(victim)
    with pytest.raises(UserError, match="a symbolic link"):
        read_file(root / "etc" / "slurm" / "passwd", root=root)
    # Missing folders are made, as real folders.
    with replacing(root / "etc" / "munge" / "munge.key", 0o400, root=root, create=True) as new:
        new.file.write(b"key")
    assert (root / "etc" / "munge" / "munge.key").read_bytes() == b"key"
    assert read_file(root / "etc" / "munge" / "munge.key", root=root) == b"key"
    (root / "etc" / "link").symlink_to(victim)
    assert read_file(root / "etc" / "link", root=root) is None  # a link is not read either


def test_a_failed_write_leaves_the_target_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "overlay.img"
    target.write_bytes(b"old")
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with replacing(target) as new:
                new.file.write(b"half")
                raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.img"]


def test_keep_existing_never_replaces_a_file_or_a_link(tmp_path: Path, victim: Path) -> None:
    target = tmp_path / "1.sif"
    target.write_bytes(b"published")
    with pytest.raises(UserError, match="exists already and is never replaced"):
        with replacing(target, keep_existing=True) as new:
            new.file.write(b"other")
    assert target.read_bytes() == b"published"
    target.unlink()
    target.symlink_to(victim)
    with pytest.raises(UserError, match="never replaced"):
        with replacing(target, keep_existing=True) as new:
            new.file.write(b"other")
    assert untouched(victim) and target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.sif", "outside"]


def test_a_tool_writes_through_the_staged_path(tmp_path: Path, victim: Path) -> None:
    target = tmp_path / "image.sif"
    (tmp_path / f".{target.name}.{os.getpid()}.partial").symlink_to(victim)
    with replacing(target) as new:
        subprocess.run(["sh", "-c", f"rm -f '{new.path}' && printf tool > '{new.path}'"], check=True)
    assert target.read_bytes() == b"tool"
    assert untouched(victim)


def test_a_sparse_copy_keeps_holes_and_is_checked_before_it_lands(tmp_path: Path, victim: Path) -> None:
    src = tmp_path / "overlay.img"
    with open(src, "wb") as fh:
        fh.write(b"superblock")
        fh.seek(20 << 20)
        fh.write(b"\0" * (1 << 20) + b"journal")  # zeros written out become holes too
        fh.truncate(64 << 20)
    dst = tmp_path / "copy.img"
    (tmp_path / ".copy.img.partial").symlink_to(victim)  # copy_overlay's old temporary name
    copy_file(src, dst, sparse=True, sha256=sha256_file(src))
    assert sha256_file(dst) == sha256_file(src) and dst.stat().st_size == 64 << 20
    assert dst.stat().st_blocks * 512 < 1 << 20
    assert untouched(victim)

    with pytest.raises(UserError, match="does not match"):
        copy_file(src, tmp_path / "bad.img", sparse=True, sha256="0" * 64)
    assert not (tmp_path / "bad.img").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".copy.img.partial", "copy.img", "outside", "overlay.img"]


def test_writing_onto_a_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "overlay.img").mkdir()
    with pytest.raises(UserError, match="a folder; name a file"):
        atomic_write(tmp_path / "overlay.img", "x")
