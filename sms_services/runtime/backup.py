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
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sms_services.errors import UserError
from sms_services.files import atomic_write, sha256_file
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


def backups(dest: Path, overlay: Path | None = None) -> list[Backup]:
    """The backups in ``dest`` (of ``overlay`` only, if given), oldest first."""
    found = []
    for rec in sorted(dest.glob("*.img.json")):
        try:
            b = Backup(**json.loads(rec.read_text()))
        except (ValueError, TypeError):
            continue  # a record we did not write: not ours to list or delete
        if overlay is None or Path(b.overlay) == overlay.resolve():
            found.append(b)
    return sorted(found, key=lambda b: b.created)


def backup(overlay: Path, dest: Path, *, keep: int = 7) -> Backup:
    """Copy ``overlay`` into ``dest`` (frozen if an instance is running); keep the newest ``keep``."""
    if not overlay.is_file():
        raise UserError(f"{overlay}: no such overlay")
    if keep < 1:
        raise UserError(f"--keep {keep}: keep at least one backup")
    dest.mkdir(parents=True, exist_ok=True)
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
        image.unlink(missing_ok=True)
        raise
    for old in backups(dest, overlay)[:-keep]:
        Path(old.image).unlink(missing_ok=True)
        old.record.unlink(missing_ok=True)
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
    if overlay.exists() and in_use(overlay):
        raise UserError(f"{overlay}: in use by a running instance; stop it first (or restore to a new path)")
    staged = overlay.with_name(f".{overlay.name}.restoring")
    try:
        copy_overlay(image, staged)
        if sha256_file(staged) != b.sha256:  # the disk under us: never start on a bad copy
            raise UserError(f"{overlay}: the restored copy does not match {image}; check the disk and try again")
        os.replace(staged, overlay)
    finally:
        staged.unlink(missing_ok=True)
    return b
