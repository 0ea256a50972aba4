"""Overlay care: check before every start, repair with a backup first, grow while stopped.

The overlay is the whole state of the cluster's controller (Slurm's job and node
state, the accounting database, mail queue, logs). A start on a damaged one can
turn a small fault into lost jobs, so every start checks it first; repairs are
never done silently, since ``e2fsck -y`` may delete what it cannot place.

All of this needs the overlay unused: e2fsck's verdict on a mounted filesystem
is meaningless and resize2fs of a loop-mounted image would race the instance.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sms_services.errors import UserError
from sms_services.runtime.overlay import in_use

def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise UserError(f"{name}: not found; install e2fsprogs (scripts/install-host.sh does)")
    return found


def _unused(overlay: Path, what: str) -> None:
    if overlay.is_symlink() or not overlay.is_file():
        raise UserError(f"{overlay}: no such overlay file (give the real path, not a link)")
    if in_use(overlay):
        raise UserError(f"{overlay}: in use by a running instance; stop it first (smsctl stop) to {what}")


@dataclass
class Fsck:
    overlay: Path
    code: int  # e2fsck's exit code: 0 clean, 1/2 corrected, 4 uncorrected, 8+ operational error
    output: str

    @property
    def clean(self) -> bool:
        return self.code == 0

    def problems(self, limit: int = 3) -> str:
        lines = [re.sub(r"\s+Fix\? no$", "", ln.strip()) for ln in self.output.splitlines()
                 if ln.strip() and not ln.startswith(("Pass ", "e2fsck ")) and "files," not in ln
                 and "*****" not in ln]
        return "; ".join(lines[:limit]) or f"e2fsck exit {self.code}"


def replay_journal(overlay: Path) -> None:
    """What the kernel would do at mount: after a host crash the journal holds the last
    writes, and a read-only check before replaying them reports damage that is not there."""
    subprocess.run([_tool("e2fsck"), "-E", "journal_only", "-p", str(overlay)], capture_output=True, text=True)


def check(overlay: Path) -> Fsck:
    """A read-only full check (``e2fsck -fn``) after the journal replay."""
    _unused(overlay, "check it")
    replay_journal(overlay)
    proc = subprocess.run([_tool("e2fsck"), "-fn", str(overlay)], capture_output=True, text=True)
    return Fsck(overlay, proc.returncode, proc.stdout + proc.stderr)


def require_clean(overlay: Path, *, name: str = "") -> None:
    """Refuse to start on a damaged overlay, saying how to repair it."""
    result = check(overlay)
    if not result.clean:
        who = f"--name {name}" if name else f"--overlay {overlay}"
        raise UserError(f"{overlay}: the filesystem has errors ({result.problems()}); not starting on it. "
                        f"Repair it with smsctl overlay repair {who} (takes a backup first)")


def repair(overlay: Path) -> Fsck:
    """``e2fsck -fy``; the caller has taken a backup. Code 4 or more: damage left."""
    _unused(overlay, "repair it")
    replay_journal(overlay)
    proc = subprocess.run([_tool("e2fsck"), "-fy", str(overlay)], capture_output=True, text=True)
    return Fsck(overlay, proc.returncode, proc.stdout + proc.stderr)


def grow(overlay: Path, size: int) -> tuple[int, int]:
    """Grow the overlay file and its filesystem to ``size`` bytes; (old, new) file sizes.

    Never shrinks: resize2fs can, but a shrink that goes wrong loses the controller's state,
    and no admin needs a smaller overlay in a hurry."""
    _unused(overlay, "grow it")
    old = overlay.stat().st_size
    if size <= old:
        raise UserError(f"{overlay}: is {old / 2**20:.0f} MiB; {size / 2**20:.0f} MiB would not grow it "
                        "(overlays are never shrunk)")
    free = shutil.disk_usage(overlay.parent).free
    if size - old > free:
        # Sparse, so not needed at once; but a controller that later fills it would find no room.
        raise UserError(f"{overlay.parent}: {free / 2**20:.0f} MiB free, growing by "
                        f"{(size - old) / 2**20:.0f} MiB could not be backed; free space first")
    fsck = subprocess.run([_tool("e2fsck"), "-fp", str(overlay)], capture_output=True, text=True)
    if fsck.returncode >= 4:
        raise UserError(f"{overlay}: the filesystem has errors; repair it first (smsctl overlay repair)")
    fd = os.open(overlay, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.truncate(fd, size)  # sparse: the new blocks cost nothing until written
        proc = subprocess.run([_tool("resize2fs"), str(overlay)], capture_output=True, text=True)
        if proc.returncode != 0:
            os.truncate(fd, old)
            raise UserError(f"{overlay}: resize2fs failed ({(proc.stderr or proc.stdout).strip().splitlines()[-1:]}); "
                            "the overlay is unchanged")
    finally:
        os.close(fd)
    return old, size
