"""Consistent backups of a live SMS-services overlay, and restoring one.

The overlay is the whole state of SMS-services (Slurm state, accounting DB, mail
queue, synced accounts, munge key), so a backup is a copy of it. While an
instance runs, the copy is taken with the filesystem frozen (overlay.frozen):
writers block for the few milliseconds a sparse copy takes, then carry on, and
the copy is what a clean unmount would have left. Each backup has a record
beside it with its sha256; a backup whose bytes no longer match is never
restored.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sms_services.errors import UserError
from sms_services.files import atomic_write, open_folder, sha256_file
from sms_services.runtime.lease import require_free
from sms_services.runtime.overlay import copy_overlay, frozen, in_use, usage


@dataclass
class Backup:
    image: str
    sha256: str
    overlay: str
    created: str
    overlay_bytes: int  # the overlay's size (what the filesystem can hold)
    used_bytes: int  # what the filesystem held when the copy was taken
    stored_bytes: int  # what the sparse copy takes on disk
    frozen_s: float  # how long the services' writes were held
    seconds: float

    @property
    def record(self) -> Path:
        return record_of(Path(self.image))


def record_of(image: Path) -> Path:
    return image.with_name(image.name + ".json")


# The names backup() gives: <overlay's stem>-<UTC time to the microsecond>Z.img
_NAME = re.compile(r"^[^/]+-[0-9]{8}T[0-9]{12}Z\.img$")


def backups(dest: Path, overlay: Path | None = None) -> list[Backup]:
    """The backups in ``dest`` (of ``overlay`` only, if given), oldest first.

    Only what backup() made is listed (and so ever rotated away): a record named
    after its image, which is a file of backup()'s naming in ``dest`` itself,
    whatever path the record's ``image`` field says.
    """
    found = []
    for rec in sorted(dest.glob("*.img.json")):
        try:
            b = Backup(**json.loads(rec.read_text()))
        except (ValueError, TypeError, OSError):
            continue  # a record we did not write: not ours to list or delete
        name = Path(str(b.image)).name
        if not isinstance(b.image, str) or rec.name != f"{name}.json" or not _NAME.match(name):
            continue
        b.image = str(dest / name)
        if overlay is None or Path(str(b.overlay)) == overlay.resolve():
            found.append(b)
    return sorted(found, key=lambda b: str(b.created))


def _remove(dest: Path, names: list[str]) -> None:
    """Unlink ``names`` in the folder ``dest`` (a link there is removed, never followed)."""
    folder = open_folder(dest)
    try:
        for name in names:
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder)
    finally:
        os.close(folder)


def backup(overlay: Path, dest: Path, *, keep: int = 7) -> Backup:
    """Copy ``overlay`` into ``dest`` (frozen if an instance is running); keep the newest ``keep``."""
    if not overlay.is_file():
        raise UserError(f"{overlay}: no such overlay")
    if keep < 1:
        raise UserError(f"--keep {keep}: keep at least one backup")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: not a folder; --to names the folder backups go to")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{dest}: cannot make the backup folder ({err.strerror})") from None
    stamp = datetime.now(UTC)
    image = dest / f"{overlay.stem}-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.img"
    start = time.monotonic()
    used, total = usage(overlay)
    with frozen(overlay):
        t = time.monotonic()
        copy_overlay(overlay, image)
        held = time.monotonic() - t
    try:
        b = Backup(str(image), sha256_file(image), str(overlay.resolve()), stamp.isoformat(timespec="microseconds"),
                   total, used, image.stat().st_blocks * 512, round(held, 3), 0.0)
        b.seconds = round(time.monotonic() - start, 3)
        atomic_write(b.record, json.dumps(asdict(b), indent=2) + "\n")  # the record last: a backup without one is not a backup
    except BaseException:
        _remove(dest, [image.name])
        raise
    for old in backups(dest, overlay)[:-keep]:
        _remove(dest, [Path(old.image).name, old.record.name])
    return b


def check_backup(image: Path) -> Backup:
    """The backup's record, after proving its bytes are the ones recorded."""
    rec = record_of(image)
    if not image.is_file():
        raise UserError(f"{image}: no such backup")
    try:
        b = Backup(**json.loads(rec.read_text()))
    except (OSError, ValueError, TypeError):
        raise UserError(f"{image}: no readable record {rec.name} beside it; not a backup smsctl can vouch for") from None
    if sha256_file(image) != b.sha256:
        raise UserError(f"{image}: CORRUPTED: sha256 does not match its record; not restored, use another backup")
    return b


def restore(image: Path, overlay: Path) -> Backup:
    """Put backup ``image`` in place of ``overlay`` (which no instance may be using)."""
    b = check_backup(image)
    if overlay.is_symlink():
        raise UserError(f"{overlay}: a symbolic link (to {os.readlink(overlay)}); not restored: pass the real "
                        f"path of the overlay, the one the instance was started with ({overlay.resolve()})")
    if overlay.is_dir():
        raise UserError(f"{overlay}: a folder; --overlay names the overlay image file (e.g. {overlay / 'sms.img'})")
    if overlay.exists() and in_use(overlay):
        raise UserError(f"{overlay}: in use by a running instance; stop it first (or restore to a new path)")
    require_free(overlay, "restore over it")  # an instance on another host sharing the storage
    # Staged, checked and renamed by files.replacing: never written through a planted link.
    copy_overlay(image, overlay, sha256=b.sha256)
    return b
