"""Shared fixtures: the real project, and throw-away copies of it to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sms_services.inputs.project import Project

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project() -> Project:
    return Project(ROOT)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of releases.yaml and defs/ that a test may damage."""
    shutil.copy(ROOT / "releases.yaml", tmp_path / "releases.yaml")
    shutil.copytree(ROOT / "defs", tmp_path / "defs", ignore=shutil.ignore_patterns("__pycache__", "test_*"))
    shutil.copytree(ROOT / "overlays", tmp_path / "overlays")
    return tmp_path
