"""Two builds on one apt cache: the second waits for the first (apt in it would fail at once)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.image.build import _cache_lock


def test_a_second_build_waits_for_the_apt_cache_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with _cache_lock(tmp_path, said.append):
            held.set()
            time.sleep(0.5)
            events.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with _cache_lock(tmp_path, said.append):
        events.append("second in")
    t.join()
    assert events == ["first done", "second in"]
    assert said == [f"waiting for another build using the apt cache {tmp_path}"]


def test_a_planted_link_at_the_lock_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".sms-services.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"\.sms-services\.lock: cannot open the apt cache's lock"):
        with _cache_lock(tmp_path, lambda s: None):
            pass
    assert not (tmp_path / "elsewhere").exists()
