"""Persistent ext3 overlays, made and seeded without starting a container.

An Apptainer overlay image is an ext3 filesystem whose ``upper/`` holds the
container's changes and ``work/`` is overlayfs' scratch space. ``mkfs.ext3 -d``
copies a prepared tree in at creation time, so site configuration and secrets
land in the overlay directly (as the paper's SMS-services keeps its state).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import UserError


def create_overlay(path: Path, files: dict[str, str | bytes], *, size_mib: int = 256,
                   owners: dict[str, tuple[int, int]] | None = None,
                   modes: dict[str, int] | None = None) -> None:
    """A new overlay at ``path`` whose upper layer holds ``files`` (image path -> content)."""
    if path.exists():
        raise UserError(f"{path}: overlay exists already; remove it or choose another path")
    if shutil.which("mkfs.ext3") is None:
        raise UserError("mkfs.ext3 not found: install e2fsprogs")
    seed = Path(tempfile.mkdtemp(prefix="overlay-seed-", dir=path.parent))
    tmp = path.with_name(f".{path.name}.partial")
    try:
        (seed / "upper").mkdir(mode=0o755)
        (seed / "work").mkdir(mode=0o755)
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
        proc = subprocess.run(["mkfs.ext3", "-q", "-F", "-d", str(seed), str(tmp), f"{size_mib}M"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"{path}: cannot create overlay: {proc.stderr.strip()[:200]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(seed, ignore_errors=True)
