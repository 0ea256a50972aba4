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
from sms_services.inputs.project import Project  # noqa: E402

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
def verify(session: nox.Session) -> None:
    """Prove every service answers in a lab cluster: nox -s verify -- [RELEASE] [smsctl verify options].

    Writes results/verify-R.json and results/verify-R.xml (JUnit) for CI.
    """
    _verify(session, _release(session), session.posargs[1:])


def _verify(session: nox.Session, rid: str, extra: list[str]) -> None:
    session.run("smsctl", "verify", rid, "--json", f"results/verify-{rid}.json",
                "--junit", f"results/verify-{rid}.xml", *extra, external=True)


for _rid in BUILDABLE:
    def _verify_one(session: nox.Session, rid: str = _rid) -> None:
        _verify(session, rid, session.posargs)
    _verify_one.__doc__ = f"Verify OpenHPC {_rid}'s SIF in a lab cluster (after build-{_rid})."
    nox.session(name=f"verify-{_rid}", requires=[f"build-{_rid}"])(_verify_one)


@nox.session
def keys(session: nox.Session) -> None:
    """Make a signing key pair: nox -s keys -- PREFIX [ec|ed25519|rsa]."""
    if not session.posargs:
        session.error("usage: nox -s keys -- PREFIX [ec|ed25519|rsa]")
    kind = session.posargs[1] if len(session.posargs) > 1 else "ec"
    session.run("smsctl", "keys", "create", "--out", session.posargs[0], "--type", kind, external=True)


@nox.session
def sign(session: nox.Session) -> None:
    """Sign a release's SIF once its verify passed: nox -s sign -- RELEASE [KEY_PREFIX].

    The key defaults to $SMS_SIGNING_KEY; the verify report is results/verify-R.json.
    """
    rid = _release(session)
    key = session.posargs[1] if len(session.posargs) > 1 else os.environ.get("SMS_SIGNING_KEY")
    if not key:
        session.error("give the key: nox -s sign -- RELEASE KEY_PREFIX (or set SMS_SIGNING_KEY)")
    session.run("smsctl", "sign", "--key", key, "--require-verified", f"results/verify-{rid}.json", rid,
                external=True)


@nox.session
def publish(session: nox.Session) -> None:
    """Publish a release's signed SIF: nox -s publish -- RELEASE [smsctl publish options].

    Trusts $SMS_SIGNING_KEY's .pub when set; records results/verify-R.json when present.
    """
    rid = _release(session)
    extra = list(session.posargs[1:])
    if os.environ.get("SMS_SIGNING_KEY") and "--key" not in extra:
        extra += ["--key", os.environ["SMS_SIGNING_KEY"]]
    report = Path(f"results/verify-{rid}.json")
    if report.exists() and "--verify-report" not in extra:
        extra += ["--verify-report", str(report)]
    session.run("smsctl", "publish", *extra, rid, external=True)


@nox.session
def rehearse(session: nox.Session) -> None:
    """Go/no-go for a cutover: nox -s rehearse -- --from OLD --to NEW --overlay LIVE [smsctl rehearse options].

    Writes results/rehearse.json; exits non-zero on a no-go, naming each reason.
    """
    if not session.posargs:
        session.error("give --from OLD --to NEW --overlay LIVE (see smsctl rehearse --help)")
    session.run("smsctl", "rehearse", "--json", "results/rehearse.json", *session.posargs, external=True)


@nox.session
def render(session: nox.Session) -> None:
    """Print a release's definition: nox -s render -- [RELEASE]."""
    session.run("smsctl", "render", "--release", _release(session), external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: code style, fragments/releases/definitions, CI pipelines in step."""
    session.run("ruff", "check", "sms_services", "tools", "tests", "defs", "noxfile.py", external=True)
    session.run("smsctl", "check", external=True)
    session.run("smsctl", "pipelines", "--check", external=True)
    session.run("smsctl", "schema", "--check", external=True)


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
    """Measure builds, SIF size, verify timings, cutover gaps (10), rehearsal and backup: results/bench.json."""
    session.run("python", "tools/bench.py", "--release", _release(session),
                "--out", "results/bench.json", external=True)


@nox.session
def load(session: nox.Session) -> None:
    """SMS-services under load with N registered nodes: nox -s load -- [RELEASE] [--nodes 450] [--jobs 10000].

    Job throughput, cutover gaps with a full queue, munge, rsyslog and NTP rates: results/load.json.
    """
    session.run("python", "tools/load.py", *session.posargs, external=True)


@nox.session
def ha(session: nox.Session) -> None:
    """The HA pair measured: nox -s ha -- [RELEASE] [--runs 3] [--sif SIF --compute-sif SIF].

    Host death (corosync, fencing, start, every probe green, gap from a node), planned move,
    cutover gap with and without Pacemaker, on one lab pair: results/ha.json.
    """
    session.run("python", "tools/ha_bench.py", *session.posargs, external=True)
