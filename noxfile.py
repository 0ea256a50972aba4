"""Thin nox sessions over smsctl: what admins and CI run.

Sessions run in the environment nox itself runs in (``./quickstart`` makes
``.venv`` with the project, nox and the test tools), so no session re-installs
anything. One ``build-R`` session per release that builds here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
from sms_services.project import Project  # noqa: E402

ROOT = Path(__file__).parent
PROJECT = Project(ROOT)
MATRIX = PROJECT.matrix
BUILDABLE = [r.id for r in MATRIX.releases.values() if r.debian]

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "none"


def _release(session: nox.Session) -> str:
    return session.posargs[0] if session.posargs else MATRIX.default


@nox.session
def build(session: nox.Session) -> None:
    """Build a release's SIF: nox -s build -- [RELEASE] (default: releases.yaml's default)."""
    session.run("smsctl", "build", _release(session), *session.posargs[1:], external=True)


for _rid in BUILDABLE:
    def _build_one(session: nox.Session, rid: str = _rid) -> None:
        session.run("smsctl", "build", rid, *session.posargs, external=True)
    _build_one.__doc__ = f"Build OpenHPC {_rid}'s SIF."
    nox.session(name=f"build-{_rid}")(_build_one)


@nox.session
def render(session: nox.Session) -> None:
    """Print a release's definition: nox -s render -- [RELEASE]."""
    session.run("smsctl", "render", "--release", _release(session), external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: code style, fragments/releases/definitions, CI pipelines in step."""
    session.run("ruff", "check", "sms_services", "tests", "defs", "noxfile.py", external=True)
    session.run("smsctl", "check", external=True)
    session.run("smsctl", "pipelines", "--check", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests, then integration tests (root + Apptainer: they build the Debian releases).

    Integration tests are skipped on a machine without root or Apptainer, except
    in CI (CI=true), where a missing prerequisite fails the run instead.
    """
    session.run("pytest", "tests/unit", "defs", "-q", *session.posargs, external=True)
    session.run("pytest", "tests/integration", "-q", "-m", "integration", *session.posargs,
                external=True, success_codes=[0, 5] if os.environ.get("CI") != "true" else [0])


@nox.session
def unit(session: nox.Session) -> None:
    """Unit tests only: seconds, no root."""
    session.run("pytest", "tests/unit", "defs", "-q", *session.posargs, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Measure cold/warm/incremental build time and SIF size; writes results/bench.json."""
    session.run("python", "-m", "sms_services.bench", "--release", _release(session),
                "--out", "results/bench.json", external=True)
