"""Writing and hashing files the way every artifact here needs it.

A reader (another smsctl, CI, an admin's script) must see either the old file
or the new one, never half of one: write beside it, then rename.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` in one rename; created with ``mode`` from the start (a private
    key is never readable by others, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)  # a stale one would keep its own, perhaps wider, mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
