"""Writing and hashing files the way every artifact here needs it.

A reader (another smsctl, CI, an admin's script) must see either the old file
or the new one, never half of one: write beside it, then rename.

smsctl runs as root in folders others may be able to write (a shared library,
a backup folder, an overlay's upper layer mounted on the host, whose contents
the container wrote). A link planted at any name it writes must never be
followed, so every write goes through :func:`replacing`, which

- opens the target's folder once, refusing a link there (and, below a given
  ``root``, at every folder on the way), and works relative to that open folder;
- stages the new file in a private folder (mode 0700) made there under an
  unpredictable name, the file created exclusively (``O_EXCL|O_NOFOLLOW``);
- fsyncs it and renames it into the opened folder: a link at the target is
  replaced, never written through; ``keep_existing`` never replaces anything;
- removes what it staged on any failure (Ctrl-C included).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sms_services.errors import UserError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20
_BLOCK = 4096  # the unit a sparse copy leaves as a hole
_ZERO = bytes(_CHUNK)


def open_folder(folder: Path, *, root: Path | None = None, create: bool = False) -> int:
    """A file descriptor for ``folder``, never reached through a link the caller did not choose.

    Without ``root`` only the last component must not be a link; with ``root``
    (itself followed: the admin named it) no component below it may be one.
    ``create`` makes missing folders (0755) on the way. The caller closes it.
    """
    if root is None:
        base, parts = (folder.parent, [folder.name]) if folder.name else (folder, [])
    else:
        parts = list(folder.relative_to(root).parts)
        base = root
        if ".." in parts:
            raise UserError(f"{folder}: '..' in a path under {root}")
    if create:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"{base}: not a folder") from None
    try:
        fd = os.open(base, _DIR)
    except NotADirectoryError:
        raise UserError(f"{base}: not a folder") from None
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nfd = _open_below(fd, part, base, parts[: i + 1])
            except OSError as err:
                if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                nfd = _open_below(fd, part, base, parts[: i + 1])
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_below(fd: int, part: str, base: Path, parts: list[str]) -> int:
    try:
        return os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as err:
        if err.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        here = base.joinpath(*parts)
        if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
            raise UserError(f"{here}: a symbolic link (to {os.readlink(part, dir_fd=fd)}); smsctl does not "
                            f"write or read through links here: give the real folder") from None
        raise UserError(f"{here}: not a folder") from None


@dataclass
class NewFile:
    """The file being written: ``file`` for Python, ``path`` for a tool (mkfs, apptainer pull)."""

    file: BinaryIO
    path: Path  # names the staged file through this process' open folder: safe to hand a tool


@contextmanager
def replacing(path: Path, mode: int = 0o644, *, root: Path | None = None, create: bool = False,
              keep_existing: bool = False) -> Iterator[NewFile]:
    """A new file that becomes ``path`` in one rename when the block ends without an error.

    ``mode`` is the new file's mode from the start (under the umask): a private key
    is never readable by others, not even for a moment. ``root`` and ``create`` are
    :func:`open_folder`'s. With ``keep_existing`` an existing ``path`` (file or link)
    is never replaced: the block's work is dropped with one line saying so.
    """
    name = path.name
    if name in ("", ".", ".."):
        raise UserError(f"{path}: not a file name")
    folder = open_folder(path.parent, root=root, create=create)
    stage = None
    stage_fd = -1
    try:
        stage, stage_fd = _private_folder(folder, name)
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=stage_fd)
        with os.fdopen(fd, "w+b") as fh:
            yield NewFile(fh, Path(f"/proc/{os.getpid()}/fd/{stage_fd}") / name)
            fh.flush()
        # A tool may have replaced the staged file: sync what is there now, and only a file.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stage_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UserError(f"{path}: what was written is not a regular file")
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep_existing:
            try:
                os.link(name, name, src_dir_fd=stage_fd, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                raise UserError(f"{path}: exists already and is never replaced") from None
        else:
            try:
                os.rename(name, name, src_dir_fd=stage_fd, dst_dir_fd=folder)
            except IsADirectoryError:
                raise UserError(f"{path}: a folder; name a file") from None
        with suppress(OSError):  # not every filesystem syncs a folder
            os.fsync(folder)
    finally:
        if stage_fd >= 0:
            os.close(stage_fd)
        if stage is not None:
            shutil.rmtree(stage, dir_fd=folder, ignore_errors=True)
        os.close(folder)


def _private_folder(folder: int, name: str) -> tuple[str, int]:
    """A new folder only this user can enter, under a name nobody can guess."""
    for _ in range(100):
        stage = f".{name[:180]}.{secrets.token_hex(8)}.partial"
        try:
            os.mkdir(stage, 0o700, dir_fd=folder)
        except FileExistsError:
            continue
        return stage, os.open(stage, _DIR | os.O_NOFOLLOW, dir_fd=folder)
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, *, root: Path | None = None) -> None:
    """Replace ``path`` in one rename; created with ``mode`` from the start (``root``: see open_folder)."""
    with replacing(path, mode, root=root) as new:
        new.file.write(data.encode() if isinstance(data, str) else data)


def read_file(path: Path, *, root: Path | None = None) -> bytes | None:
    """``path``'s bytes, or None if it is missing or not a regular file; never through a link."""
    try:
        folder = open_folder(path.parent, root=root)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
            return None
        raise
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return fh.read()


def copy_into(src: Path, dst: BinaryIO, *, sparse: bool = False) -> None:
    """``src``'s bytes into the new file ``dst``; ``sparse`` leaves holes where ``src`` has
    holes or zeros (an overlay is mostly holes), as ``cp --sparse=always`` does."""
    out = dst.fileno()
    with open(src, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        if not sparse:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                dst.write(chunk)
            dst.flush()
            return
        dst.flush()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    break
                if err.errno != errno.EINVAL:
                    raise
                start, end = pos, size  # no SEEK_DATA here: read it all
            while start < end:
                chunk = os.pread(fd, min(_CHUNK, end - start), start)
                if not chunk:
                    break
                _write_nonzero(out, chunk, start)
                start += len(chunk)
            pos = end
        os.ftruncate(out, size)


def _write_nonzero(out: int, chunk: bytes, offset: int) -> None:
    if chunk == _ZERO[: len(chunk)]:
        return
    run = -1  # start of the current run of blocks that are not all zero
    for i in range(0, len(chunk), _BLOCK):
        zero = chunk[i:i + _BLOCK] == _ZERO[: min(_BLOCK, len(chunk) - i)]
        if zero and run >= 0:
            _pwrite_all(out, chunk[run:i], offset + run)
            run = -1
        elif not zero and run < 0:
            run = i
    if run >= 0:
        _pwrite_all(out, chunk[run:], offset + run)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_file(src: Path, dst: Path, *, mode: int | None = None, sparse: bool = False,
              sha256: str | None = None, root: Path | None = None, create: bool = False,
              keep_existing: bool = False) -> None:
    """Copy ``src`` to ``dst`` through :func:`replacing` (``mode``: default ``src``'s).

    With ``sha256`` the copy, read back before it is renamed into place, must have
    that digest (the disk under us): otherwise ``dst`` is left as it was.
    """
    if mode is None:
        mode = stat.S_IMODE(os.stat(src).st_mode)
    with replacing(dst, mode, root=root, create=create, keep_existing=keep_existing) as new:
        copy_into(src, new.file, sparse=sparse)
        if sha256 is not None and sha256_fd(new.file.fileno()) != sha256:
            raise UserError(f"{dst}: the copy does not match {src} (sha256); check the disk and try again")


def sha256_fd(fd: int) -> str:
    """The sha256 of an open file, read from its start (its position is left alone)."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
