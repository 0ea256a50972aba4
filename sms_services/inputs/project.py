"""The project's inputs (release matrix and fragments), loaded once per command."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sms_services.errors import UserError
from sms_services.inputs.fragment import Fragment, load_fragments, order
from sms_services.inputs.release import Matrix, Variant, load_matrix


def find_root(start: Path | None = None) -> Path:
    """The folder holding releases.yaml: $SMS_ROOT, else the cwd or a parent of it."""
    env = os.environ.get("SMS_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "releases.yaml").is_file() and (p / "defs").is_dir():
            return p
    # Installed from a checkout: the package lives beside the inputs.
    pkg_root = Path(__file__).resolve().parents[2]
    if (pkg_root / "releases.yaml").is_file():
        return pkg_root
    raise UserError("no releases.yaml found here or above; run smsctl from the project folder or set SMS_ROOT")


def git_commit(root: Path) -> str:
    """HEAD's commit, with '-dirty' when the inputs differ from it (what a label should say)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "defs",
                                "releases.yaml", "sms_services"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


@dataclass
class Project:
    root: Path

    @cached_property
    def matrix(self) -> Matrix:
        return load_matrix(self.root / "releases.yaml")

    @cached_property
    def fragments(self) -> dict[str, Fragment]:
        return load_fragments(self.root / "defs")

    def ordered(self, variant: Variant, role: str = "sms") -> tuple[Fragment, ...]:
        rel = variant.release
        origin = f"{self.matrix.path}: release {rel.id} {'compute ' if role == 'compute' else ''}fragments"
        return tuple(order(list(rel.role_fragments(role)), self.fragments, origin))

    def sms_fragments(self, release: str) -> tuple[Fragment, ...]:
        """SMS-services' fragments of a release's Debian variant (what the lab and cutovers run)."""
        return self.ordered(self.matrix.get(release).variant("debian"))


def load_project(root: Path | None = None) -> Project:
    return Project(root or find_root())
