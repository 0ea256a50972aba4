"""Start exactly what was checked: a private, read-only copy of the image, made before the check.

``smsctl start`` and ``cutover`` check a SIF's signature and start it later (a
cutover: after the old instance stopped). Checked and started by the path the
admin gave, the file could be replaced in between by anyone who can write it or
its folder. So the image is copied first into a folder only root can enter
(``$SMS_STATE_DIR/images``, 0700), as ``<sha256>.sif``, mode 0444, created
exclusively; that copy is checked and started, and the instance record names
it (and the path it came from).

Not a hard link: a link shares the inode, so whoever could write the original
could still change what runs.

Copies no record names any more are removed when a command that pinned one ends
(a cutover's old image, a refused or rolled-back new one, init's). Two commands may
pin the same image at once (init and start of one SIF): each holds a shared
``flock`` on its copy while it works, and a copy is removed only under an
exclusive one, so one command never removes what another is about to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.trust.signing import Signer, Trust, check

NAME_LEN = 64 + len(".sif")
COPY_NAME = re.compile(r"[0-9a-f]{64}\.sif")


def private_folder(folder: Path) -> None:
    """``folder`` exists, is a real folder owned by this user and nobody else may enter it."""
    missing = [p for p in [folder, *folder.parents] if not os.path.lexists(p)]
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise UserError(f"{p}: cannot make the folder for checked images ({err.strerror})") from None
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{folder}: not a folder (a link or a file); checked images are kept only in a "
                        "folder smsctl made: remove it")
    if st.st_uid != os.geteuid():
        raise UserError(f"{folder}: owned by uid {st.st_uid}, not by this user; checked images are kept only "
                        "in a folder nobody else controls: remove it")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700, follow_symlinks=False)


def pin(sif: Path, folder: Path) -> tuple[Path, bool]:
    """A private read-only copy of ``sif`` in ``folder``: (its path, whether this call made it).

    Read once through one descriptor, hashed while copied, so its name is the
    sha256 of exactly the bytes it holds.
    """
    private_folder(folder)
    if sif.parent.resolve() == folder.resolve() and len(sif.name) == NAME_LEN:
        # Already one of ours (a restart from the record, the boot unit): hashing it proves it
        # intact; copying it again would double a boot's I/O for nothing.
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if _same(dir_fd, sif.name, sif.name.removesuffix(".sif")):
                return folder.resolve() / sif.name, False
        finally:
            os.close(dir_fd)
    try:
        src = os.open(sif, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        raise UserError(f"{sif}: cannot read the image ({err.strerror})") from None
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    tmp = f".incoming.{os.getpid()}.{secrets.token_hex(6)}"
    made = False
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise UserError(f"{sif}: not a regular file")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400, dir_fd=dir_fd)
        h = hashlib.sha256()
        try:
            while chunk := os.read(src, 1 << 20):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fchmod(out, 0o444)
            os.fsync(out)
        except OSError as err:
            raise UserError(f"{folder}: cannot copy {sif} there ({err.strerror}); free space "
                            "or set $SMS_STATE_DIR") from None
        finally:
            os.close(out)
        name = f"{h.hexdigest()}.sif"
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            made = True
        except FileExistsError:
            # Not the same: a damaged copy (only root writes here), or one another smsctl's
            # cleanup removed just now; either way ours takes its place.
            if not _same(dir_fd, name, h.hexdigest()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                try:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError:
                    raise UserError(f"{folder}: another smsctl is copying {sif} there at the same moment; "
                                    "run this again") from None
                made = True
        os.fsync(dir_fd)
        return folder.resolve() / name, made
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        os.close(dir_fd)
        os.close(src)


def _same(dir_fd: int, name: str, sha: str) -> bool:
    """An earlier copy of the same image, intact and still read-only."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o777 != 0o444:
            return False
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        return h.hexdigest() == sha
    finally:
        os.close(fd)


def _hold(copy: Path) -> int | None:
    """A shared lock on ``copy`` (its descriptor), or None if the name no longer is that file
    (removed, or replaced, between the pin and the lock)."""
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        same = os.stat(copy, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


@contextmanager
def holding(copy: Path) -> Iterator[None]:
    """Keep ``copy`` from any other smsctl's cleanup inside the block (a cutover's old image:
    the record stops naming it at the new start, but a rollback needs it until the end)."""
    fd = _hold(copy)
    try:
        yield
    finally:
        if fd is not None:
            _release(fd)


def _pinned_and_held(sif: Path, folder: Path) -> tuple[Path, int, bool]:
    for _ in range(5):  # another command's cleanup may remove the copy between pin and lock
        copy, made = pin(sif, folder)
        fd = _hold(copy)
        if fd is not None:
            return copy, fd, made
    raise UserError(f"{folder}: the checked copy of {sif} went away again and again while it was being "
                    "checked; another smsctl is removing copies there: run this again when it is done")


def _remove_unheld(folder: Path, name: str) -> bool:
    """Remove copy ``name`` of ``folder`` if no command holds it (never anything else)."""
    if not COPY_NAME.fullmatch(name):
        return False
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another command is starting it
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                return False
            os.unlink(name, dir_fd=dir_fd)
            return True
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def unpin(path: Path, folder: Path) -> None:
    """Remove a copy ``pin`` made that was then refused (never anything outside ``folder``),
    unless another command holds it."""
    if path.parent == folder.resolve() and len(path.name) == NAME_LEN:
        _remove_unheld(folder, path.name)


def prune(folder: Path, named: Iterable[str]) -> list[str]:
    """Remove every copy in ``folder`` that is not ``named`` (file names) and no command holds:
    the names removed."""
    if not folder.is_dir():
        return []
    keep = set(named)
    return [name for name in sorted(os.listdir(folder))
            if name not in keep and COPY_NAME.fullmatch(name) and _remove_unheld(folder, name)]


def _release(fd: int) -> None:
    os.close(fd)  # (closing the last descriptor drops the flock)


def checked_copy(apptainer: Apptainer, sif: Path, trust: Trust, folder: Path,
                 warn: Callable[[str], None] = lambda s: None) -> tuple[Path, Signer | None, bool]:
    """Pin ``sif``, then check the copy: (the copy to start, its signer, whether this call made it).

    A refused copy is removed again. Messages name ``sif``, the file the admin gave.
    """
    found = _checked(apptainer, sif, trust, folder, warn)
    _release(found.fd)
    return found.path, found.signer, found.made


@dataclass
class Checked:
    """A checked private copy, kept after the block only when the caller says it now runs."""

    path: Path
    signer: Signer | None
    keep: bool = False
    made: bool = False
    fd: int = -1  # holds the shared lock on the copy while the command works


def _checked(apptainer: Apptainer, sif: Path, trust: Trust, folder: Path,
             warn: Callable[[str], None]) -> Checked:
    copy, fd, made = _pinned_and_held(sif, folder)
    try:
        signer = check(apptainer, copy, trust, warn=lambda s: warn(s.replace(str(copy), str(sif))))
    except UserError as err:
        _release(fd)
        if made:
            unpin(copy, folder)
        raise UserError(str(err).replace(str(copy), str(sif)), exit_code=err.exit_code) from None
    except BaseException:
        _release(fd)
        if made:
            unpin(copy, folder)
        raise
    return Checked(copy, signer, made=made, fd=fd)


@contextmanager
def checked(apptainer: Apptainer, sif: Path, trust: Trust, folder: Path,
            warn: Callable[[str], None] = lambda s: None,
            named: Callable[[], Iterable[str]] | None = None) -> Iterator[Checked]:
    """:func:`checked_copy` for one command: the copy this call made goes again unless the
    block set ``keep`` (however it ended: a cutover interrupted after the record named the
    copy must keep it). A copy made earlier is never removed: a record may name it.

    With ``named`` (the copies the host's instance records name, read at the end), every
    other copy no command holds goes too: the old image after a cutover, a rolled-back one.
    """
    found = _checked(apptainer, sif, trust, folder, warn)
    try:
        yield found
    finally:
        _release(found.fd)
        if named is not None:
            try:
                keep = set(named())
            except Exception:  # noqa: BLE001 (a record that does not load: remove nothing it might name)
                keep = None
            if keep is not None:
                prune(folder, keep | ({found.path.name} if found.keep else set()))
        elif found.made and not found.keep:
            unpin(found.path, folder)
