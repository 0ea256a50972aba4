"""Slurm's version-compatibility rules, in one place.

Slurm numbers major releases YY.MM. A controller accepts RPCs and state from a
limited number of *earlier* majors: two before 24.11, three from 24.11 on
(SchedMD's upgrade guide). slurmd may never be newer than slurmctld. The same
window bounds how far state (StateSaveLocation, accounting DB) may jump in one
upgrade.
"""

from __future__ import annotations

# Every major release between OpenHPC 2.0 and today, in order. Skipping one in
# this list would silently widen the window, so it is spelled out.
MAJORS: tuple[str, ...] = (
    "20.02", "20.11", "21.08", "22.05", "23.02", "23.11",
    "24.05", "24.11", "25.05", "25.11", "26.05",
)


def major(version: str) -> str:
    """'22.05.8' or '22.05' -> '22.05'."""
    parts = version.strip().split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"not a Slurm version: {version!r}")
    return f"{int(parts[0]):02d}.{int(parts[1]):02d}"


def index(version: str) -> int:
    m = major(version)
    if m not in MAJORS:
        raise ValueError(f"unknown Slurm major release {m} (known: {', '.join(MAJORS)})")
    return MAJORS.index(m)


def window(controller: str) -> int:
    """How many earlier majors a controller of this version accepts."""
    return 3 if index(controller) >= MAJORS.index("24.11") else 2


def can_serve(controller: str, slurmd: str) -> bool:
    """True when a slurmctld of ``controller`` version can run slurmd of ``slurmd``."""
    gap = index(controller) - index(slurmd)
    return 0 <= gap <= window(controller)


def served_majors(controller: str) -> list[str]:
    """The slurmd majors a controller serves, oldest first."""
    i = index(controller)
    return list(MAJORS[max(0, i - window(controller)) : i + 1])


def upgrade_allowed(old: str, new: str) -> tuple[bool, str]:
    """Can controller state written by ``old`` be loaded by ``new``? With the reason."""
    gap = index(new) - index(old)
    if gap < 0:
        return False, f"Slurm {major(new)} is older than {major(old)}: state cannot move backwards"
    if gap > window(new):
        return False, (
            f"Slurm {major(old)} -> {major(new)} skips {gap - 1} major release(s); "
            f"{major(new)} loads state from at most {window(new)} earlier majors "
            f"({', '.join(served_majors(new)[:-1])}): upgrade through an intermediate release"
        )
    return True, f"Slurm {major(old)} -> {major(new)} is within the {window(new)}-release window"
