"""Persistent ext3 overlays, made and seeded without starting a container.

An Apptainer overlay image is an ext3 filesystem whose ``upper/`` holds the
container's changes and ``work/`` is overlayfs' scratch space. ``mkfs.ext3 -d``
copies a prepared tree in at creation time, so site configuration and secrets
land in the overlay directly (as the paper's SMS-services keeps its state).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sms_services.errors import UserError
from sms_services.files import copy_file, read_file, replacing


def create_overlay(path: Path, files: dict[str, str | bytes], *, size_mib: int = 256,
                   owners: dict[str, tuple[int, int]] | None = None,
                   modes: dict[str, int] | None = None,
                   folders: dict[str, tuple[int, int, int]] | None = None,
                   replace: bool = False) -> None:
    """A new overlay at ``path`` whose upper layer holds ``files`` (image path -> content)
    and ``folders`` (image path -> uid, gid, mode; parents before children).

    It is built under a name made exclusively in the target folder and renamed
    into place only when complete, so a failure or Ctrl-C leaves nothing half
    made; without ``replace`` an overlay that appears meanwhile is not overwritten.
    """
    if path.exists() and not replace:
        raise UserError(f"{path}: overlay exists already; remove it or choose another path")
    if shutil.which("mkfs.ext3") is None:
        raise UserError("mkfs.ext3 not found: install e2fsprogs")
    seed = Path(tempfile.mkdtemp(prefix=f".{path.name}.seed-", dir=path.parent))
    try:
        (seed / "upper").mkdir(mode=0o755)
        (seed / "work").mkdir(mode=0o755)
        for folder, (uid, gid, mode) in sorted((folders or {}).items()):
            dest = seed / "upper" / folder.lstrip("/")
            dest.mkdir(parents=True, exist_ok=True)
            os.chown(dest, uid, gid)
            dest.chmod(mode)
        for target, content in files.items():
            dest = seed / "upper" / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                dest.write_text(content)
            dest.chmod((modes or {}).get(target, 0o644))
            if owners and target in owners:
                os.chown(dest, *owners[target])
        # mkfs writes the staged file through this process' open folder (files.replacing):
        # never a link planted at a name beside the overlay; without ``replace`` an overlay
        # that appeared meanwhile is kept (a link, never a rename over it).
        # 0600: the overlay holds the munge key and slurmdbd.conf, and debugfs reads any file it can open.
        with replacing(path, 0o600, keep_existing=not replace) as new:
            proc = subprocess.run(["mkfs.ext3", "-q", "-F", "-d", str(seed), str(new.path), f"{size_mib}M"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"{path}: cannot create overlay: {proc.stderr.strip()[:200]}")
    finally:
        shutil.rmtree(seed, ignore_errors=True)


def copy_overlay(src: Path, dst: Path, *, sha256: str | None = None) -> None:
    """A sparse copy (an overlay is mostly holes), in place only when complete and, with
    ``sha256``, only if the copy read back has that digest (files.replacing: no link followed)."""
    try:
        copy_file(src, dst, sparse=True, sha256=sha256)
    except OSError as err:
        raise UserError(f"{src}: cannot copy overlay to {dst}: {err.strerror or err}") from None


def read_overlay_file(overlay: Path, path: str) -> bytes:
    """A file from the overlay's upper layer, read without mounting it (debugfs)."""
    proc = subprocess.run(["debugfs", "-R", f"cat /upper/{path.lstrip('/')}", str(overlay)],
                          capture_output=True)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "File not found" in err or not proc.stdout:
        raise UserError(f"{overlay}: no {path} in the overlay (is it an SMS-services overlay?)")
    return proc.stdout


def loop_device(overlay: Path) -> str | None:
    """The loop device a running instance holds the overlay on, if any."""
    out = subprocess.run(["losetup", "-j", str(overlay.resolve()), "-O", "NAME", "-n"],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else None


def in_use(overlay: Path) -> bool:
    return loop_device(overlay) is not None


@contextmanager
def mounted(overlay: Path, *, device: str | None = None) -> Iterator[Path]:
    """The overlay's filesystem mounted on the host for the duration of the block.

    For an overlay a running instance holds, mounting its loop device again gives
    a second view of the very same filesystem (the kernel shares the superblock),
    which is what lets ``frozen`` freeze it from outside the container.
    """
    where = Path(tempfile.mkdtemp(prefix="sms-overlay-mnt-"))
    source = device or str(overlay)
    args = ["mount", "-o", "noatime" if device else "loop,noatime", source, str(where)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        where.rmdir()
        raise UserError(f"{overlay}: cannot mount the overlay ({proc.stderr.strip()[:200]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        where.rmdir()


@contextmanager
def frozen(overlay: Path) -> Iterator[None]:
    """Writes to the overlay held for the block: a point-in-time, consistent image.

    fsfreeze flushes the journal and blocks every writer until thawed, so a copy
    taken meanwhile is what a clean unmount would have left. Ctrl-C cannot leave
    the services frozen: the thaw runs with SIGINT ignored.
    """
    device = loop_device(overlay)
    if device is None:  # not running: nothing writes, nothing to freeze
        yield
        return
    with mounted(overlay, device=device) as where:
        proc = subprocess.run(["fsfreeze", "--freeze", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{overlay}: cannot freeze the overlay ({proc.stderr.strip()[:200]})")
        try:
            yield
        finally:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                subprocess.run(["fsfreeze", "--unfreeze", str(where)], capture_output=True)
            finally:
                signal.signal(signal.SIGINT, old)


def remap_owners(tree: Path, uids: dict[int, int], gids: dict[int, int]) -> int:
    """Give every file under ``tree`` owned by an old id the new one; how many changed.

    A new image may number its system accounts differently (munge, postfix,
    _chrony...): state the old image's daemons wrote must follow the names.
    """
    changed = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            uid, gid = uids.get(st.st_uid, st.st_uid), gids.get(st.st_gid, st.st_gid)
            if (uid, gid) != (st.st_uid, st.st_gid):
                os.lchown(path, uid, gid)
                changed += 1
    return changed


def write_overlay_files(overlay: Path, files: dict[str, str | bytes], *,
                        owners: dict[str, tuple[int, int]] | None = None,
                        modes: dict[str, int] | None = None,
                        remap: tuple[dict[int, int], dict[int, int]] | None = None) -> list[str]:
    """Replace files in a stopped overlay's upper layer (after moving owners by ``remap``,
    old id -> new id for users and groups); the paths that changed."""
    if in_use(overlay):
        raise UserError(f"{overlay}: in use by a running instance; stop it before changing its files")
    changed = []
    with mounted(overlay) as root:
        if remap and (remap[0] or remap[1]):
            remap_owners(root / "upper", *remap)
        upper = root / "upper"
        for target, content in files.items():
            dest = upper / target.lstrip("/")
            data = content if isinstance(content, bytes) else content.encode()
            # The container wrote this tree: no link in it is followed (files.replacing).
            if read_file(dest, root=upper) == data:
                continue
            with replacing(dest, 0o600, root=upper, create=True) as new:
                new.file.write(data)
                os.fchmod(new.file.fileno(), (modes or {}).get(target, 0o644))
                if owners and target in owners:
                    os.fchown(new.file.fileno(), *owners[target])
            changed.append(target)
    return changed


def usage(overlay: Path) -> tuple[int, int]:
    """(used, total) bytes of the overlay's filesystem."""
    device = loop_device(overlay)
    if device is not None:  # running: the superblock on disk lags, ask the live filesystem
        with mounted(overlay, device=device) as where:
            st = os.statvfs(where)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize
    proc = subprocess.run(["dumpe2fs", "-h", str(overlay)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{overlay}: not an ext3 overlay ({proc.stderr.strip().splitlines()[-1:]})")
    fields = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    size = int(fields["Block size"])
    total = int(fields["Block count"]) * size
    return total - int(fields["Free blocks"]) * size, total
