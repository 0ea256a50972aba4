"""The overlay lease: one writer, across hosts, without trusting clocks (no root, no Apptainer).

Two "hosts" are two values of SMS_HOST_ID; the renewer is the real one, as a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.runtime import lease as ls

FAST = 0.3  # seconds between renewals, so a take-over waits under a second


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    img = tmp_path / "sms-overlay.img"
    img.write_bytes(b"\0" * 4096)
    return img


def as_host(monkeypatch, name: str) -> None:
    monkeypatch.setenv("SMS_HOST_ID", name)


@pytest.fixture
def instance():
    """A stand-in for the instance's process, which the renewer watches."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_host_is_refused_while_the_first_renews(overlay: Path, monkeypatch, instance) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    renewer = ls.spawn_renewer(overlay, held, instance.pid, "sms")
    as_host(monkeypatch, "hostB")
    with pytest.raises(UserError, match="held by hostA .*a second writer") as err:
        ls.acquire(overlay, "sms", interval=FAST)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="renewed while we watched"):
        ls.acquire(overlay, "sms", take_over=True, interval=FAST)
    seq = ls.read(overlay).seq
    time.sleep(3 * FAST)
    assert ls.read(overlay).seq > seq and ls.read(overlay).renewer == renewer
    as_host(monkeypatch, "hostA")
    assert ls.release(overlay, held.token)
    assert ls.read(overlay) is None
    time.sleep(0.2)
    assert not ls._alive(renewer)


def test_after_a_clean_stop_the_other_host_may_start(overlay: Path, monkeypatch) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    ls.release(overlay, held.token)
    as_host(monkeypatch, "hostB")
    assert ls.acquire(overlay, "sms", interval=FAST).holder == "hostB"


def test_a_dead_host_is_taken_over_only_when_asked_and_after_two_intervals(overlay: Path, monkeypatch,
                                                                           instance) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    ls.spawn_renewer(overlay, held, instance.pid, "sms")
    instance.kill()  # host A dies: its instance and, with it, the renewer's reason to renew
    instance.wait()
    time.sleep(2 * FAST)
    as_host(monkeypatch, "hostB")
    with pytest.raises(UserError, match="--take-over"):
        ls.acquire(overlay, "sms", interval=FAST)
    said: list[str] = []
    t = time.monotonic()
    mine = ls.acquire(overlay, "sms", take_over=True, interval=FAST, say=said.append)
    assert time.monotonic() - t >= 2 * FAST
    assert mine.holder == "hostB" and ls.read(overlay).token == mine.token
    assert "took over the lease of hostA" in said[-1]
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["sms-overlay.img", "sms-overlay.img.lease"]


def test_this_host_reclaims_its_own_lease_after_a_crash_but_not_while_it_runs(overlay: Path, monkeypatch,
                                                                            instance) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    ls.spawn_renewer(overlay, held, instance.pid, "sms")
    with pytest.raises(UserError, match="still runs on this host"):
        ls.acquire(overlay, "sms", interval=FAST)
    instance.kill()
    instance.wait()
    time.sleep(3 * FAST)  # the renewer sees its instance gone and exits, leaving the lease
    assert ls.read(overlay).token == held.token
    again = ls.acquire(overlay, "sms", interval=FAST)
    assert again.token != held.token


def test_a_renewer_that_lost_its_lease_stops_its_instance(overlay: Path, monkeypatch) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    lost = threading.Event()
    watched = os.getpid()
    t = threading.Thread(target=ls.renew, args=(overlay, held.token, watched, FAST, lost.set), daemon=True)
    t.start()
    time.sleep(FAST)
    as_host(monkeypatch, "hostB")
    deadline = time.monotonic() + 10  # (generous: the suite may share two busy cores)
    while not lost.is_set() and time.monotonic() < deadline:
        # What a take-over by host B amounts to for host A. A real one waits for two intervals
        # of silence, so it never meets a live renewal; this one can, when A renews between
        # the unlink and B's write: then B's lease is overwritten, and B takes it again.
        cur = ls.read(overlay)
        if cur is None or cur.holder != "hostB":
            ls.lease_path(overlay).unlink(missing_ok=True)
            with contextlib.suppress(UserError):  # (A renewed in between again: next round)
                ls.acquire(overlay, "sms", interval=FAST)
        lost.wait(2 * FAST)
    assert lost.is_set()


@pytest.mark.parametrize("round_", range(6))
def test_two_take_overs_at_once_give_one_winner(overlay: Path, monkeypatch, round_: int) -> None:
    as_host(monkeypatch, "hostA")
    ls.acquire(overlay, "sms", interval=0.1)  # and A dies at once: nobody renews
    local = threading.local()
    monkeypatch.setattr(ls, "host_id", lambda: getattr(local, "host", "hostA"))
    results: list[object] = []
    go = threading.Barrier(2)

    def take(host: str) -> None:
        local.host = host
        go.wait()
        try:
            results.append(ls.acquire(overlay, "sms", take_over=True, interval=0.1))
        except UserError as err:
            results.append(err)

    threads = [threading.Thread(target=take, args=(h,)) for h in ("hostB", "hostC")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, ls.Lease)]
    assert len(won) == 1 and ls.read(overlay).token == won[0].token, results
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["sms-overlay.img", "sms-overlay.img.lease"]


def test_a_second_start_on_this_host_is_refused_while_the_first_is_still_starting(overlay: Path,
                                                                                monkeypatch) -> None:
    as_host(monkeypatch, "hostA")
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "smsctl", "start"])
    try:
        held = ls.acquire(overlay, "sms", interval=FAST)
        held.renewer = first.pid  # the lease names the smsctl that took it until its renewer runs
        ls._write(overlay, held)
        with pytest.raises(UserError, match="still runs on this host"):
            ls.acquire(overlay, "sms2", interval=FAST)
    finally:
        first.kill()
        first.wait()
    assert ls.acquire(overlay, "sms2", interval=FAST).instance == "sms2"  # that smsctl died: reclaimed


def test_a_renewer_that_cannot_write_gives_its_instance_up(overlay: Path, monkeypatch) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ls, "renew_once", full)
    lost = threading.Event()
    t = threading.Thread(target=ls.renew, args=(overlay, held.token, os.getpid(), FAST, lost.set), daemon=True)
    t.start()
    assert lost.wait(10 * FAST)


def test_overlay_writers_refuse_while_anyone_holds_the_lease(overlay: Path, monkeypatch, instance) -> None:
    as_host(monkeypatch, "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    ls.spawn_renewer(overlay, held, instance.pid, "sms")
    with pytest.raises(UserError, match="held by hostA .*stop it before you repair it"):
        ls.require_free(overlay, "repair it")
    as_host(monkeypatch, "hostB")
    with pytest.raises(UserError, match="held by hostA"):
        ls.require_free(overlay, "repair it")
    as_host(monkeypatch, "hostA")
    ls.release(overlay, held.token)
    ls.require_free(overlay, "repair it")


def test_a_planted_link_or_junk_at_the_lease_is_one_line(overlay: Path, monkeypatch, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    ls.lease_path(overlay).symlink_to(victim)
    with pytest.raises(UserError, match="not a lease file smsctl wrote"):
        ls.acquire(overlay, "sms")
    assert victim.read_text() == "keep\n"
    ls.lease_path(overlay).unlink()
    ls.lease_path(overlay).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a lease file smsctl wrote"):
        ls.acquire(overlay, "sms")
    ls.lease_path(overlay).unlink()
    os.mkfifo(ls.lease_path(overlay))  # would hang an open without O_NONBLOCK
    with pytest.raises(UserError, match="not a regular file"):
        ls.acquire(overlay, "sms")


def test_a_stop_waits_for_a_renewer_that_still_watches_a_live_instance(overlay: Path, monkeypatch) -> None:
    """`smsctl stop` of an instance Apptainer did not list frees the lease only once no renewer
    of this host holds it: a renewer outliving its wait watches a live instance process."""
    import subprocess
    import sys

    monkeypatch.setattr(ls, "host_id", lambda: "hostA")
    held = ls.acquire(overlay, "sms", interval=FAST)
    renewer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "smsctl"])
    try:
        cur = ls.read(overlay)
        assert cur is not None
        cur.renewer = renewer.pid
        ls._write(overlay, cur)
        assert not ls.renewer_gone(overlay, held.token, wait=0.3)
    finally:
        renewer.kill()
        renewer.wait()
    assert ls.renewer_gone(overlay, held.token, wait=0.3)
