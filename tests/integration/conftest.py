"""Integration tests need root and Apptainer; CI (CI=true) must have both."""

from __future__ import annotations

import os

import pytest

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def apptainer() -> Apptainer:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root"
    else:
        try:
            return Apptainer.find()
        except UserError as err:
            reason = str(err)
    if os.environ.get("CI") == "true":
        pytest.fail(f"integration prerequisite missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def sigint_is_left_as_found():
    """A test that leaves SIGINT ignored makes every later child ignore Ctrl-C too."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    assert after == before, f"SIGINT handler changed from {before} to {after}"
