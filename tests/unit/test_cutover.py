"""The service gap and the Slurm step rules of a cutover, without root."""

import time
from types import SimpleNamespace

from sms_services.image.accounts import id_maps
from sms_services.probes import Result
from sms_services.runtime.cutover import ControllerWatch, Outage, outages, step_reasons
from sms_services.runtime.instance import EXEC_TIMED_OUT
from sms_services.runtime.target import SmsTarget


def test_the_gap_runs_from_the_last_answer_to_the_next() -> None:
    samples = [(1.0, True), (2.0, True), (2.5, False), (3.0, False), (4.2, True), (5.0, False), (5.5, True)]
    found = outages(samples, since=1.5)
    assert found == [Outage(2.0, 4.2, 2), Outage(4.2, 5.5, 1)]
    assert [o.seconds for o in found] == [2.2, 1.3]


def test_no_outage_and_no_return_are_told_apart() -> None:
    assert outages([(1.0, True), (2.0, True)], since=1.5) == []
    assert outages([(1.0, True), (2.0, False)], since=1.5) is None


def label(version: str) -> dict[str, str]:
    return {"sms-services.slurm.installed": version}


def test_slurm_steps() -> None:
    assert step_reasons(label("24.11.5"), label("26.05.5"), "24.11.5") == []
    assert step_reasons(label("24.11.5"), label("24.11.5"), "24.11.5") == []
    (why,) = step_reasons(label("22.05.8"), label("24.11.5"), "24.11.5")
    assert "22.05 -> 24.11 skips 3 major release(s)" in why
    (why,) = step_reasons(label("26.05.5"), label("24.11.5"), "24.11.5")
    assert "cannot move backwards" in why
    (why,) = step_reasons(label("24.11.5"), label("24.11.5"), "26.05.1")
    assert "slurmd 26.05" in why and "does not serve" in why


def test_unknown_versions_are_a_reason_not_a_crash() -> None:
    (why,) = step_reasons({}, label("24.11.5"), "")
    assert "cannot be compared" in why


def test_accounts_follow_their_names_across_images() -> None:
    old = ("root:x:0:0::/root:/bin/sh\nmunge:x:100:101::/:/bin/false\n_chrony:x:101:102::/:/bin/false\n",
           "root:x:0:\nmunge:x:101:\n_chrony:x:102:\nshadow:x:42:\n", "")
    new = ("root:x:0:0::/root:/bin/sh\nmunge:x:101:101::/:/bin/false\n_chrony:x:995:995::/:/bin/false\n"
           "slurm:x:202:202::/:/bin/false\n", "root:x:0:\nmunge:x:101:\n_chrony:x:995:\nshadow:x:42:\n", "")
    uids, gids = id_maps(old, new)
    assert uids == {100: 101, 101: 995}  # munge takes chrony's old number: each file moves once
    assert gids == {102: 995}


def test_renumbered_accounts_are_named_for_sms_mgmt() -> None:
    from sms_services.runtime.cutover import renumbered

    old = ("root:x:0:0::/root:/bin/sh\nmunge:x:101:101::/:/bin/false\nalice:x:2001:2001::/:/bin/sh\n", "", "")
    new = ("root:x:0:0::/root:/bin/sh\nmunge:x:995:995::/:/bin/false\n", "", "")
    assert renumbered(old, new) == ["munge 101 -> 995"]


class _Sdiag(SmsTarget):
    """A controller whose sdiag reports these agent thread counts, one per call (the last repeats)."""

    def __init__(self, counts: list[int | str | None]) -> None:
        self.counts, self.calls = counts, 0

    def on_sms(self, command, stdin=None, timeout=30):
        assert command[-1] == "sdiag"
        n = self.counts[min(self.calls, len(self.counts) - 1)]
        self.calls += 1
        if n is None:
            return 1, "", "slurm_get_statistics: Unable to contact slurm controller"
        if n == "busy":
            return 124, "", ""
        if n == "hung":
            return 124, "", f"{EXEC_TIMED_OUT} 5 s: {' '.join(command)}"
        return 0, f"Agent queue size:     3\nAgent count:          1\nAgent thread count:   {n}\n", ""


def test_the_stop_waits_until_no_rpc_to_the_nodes_is_in_flight() -> None:
    target = _Sdiag([12, 4, 0, 7])
    waited, left = target.settle(bound=5)
    assert (left, target.calls) == (0, 3) and waited >= 0.4


def test_the_wait_is_bounded_and_says_what_is_left() -> None:
    target = _Sdiag([12])
    waited, left = target.settle(bound=0.5)
    assert left == 12 and 0.5 <= waited < 2


def test_a_controller_that_refuses_sdiag_is_not_waited_for() -> None:
    target = _Sdiag([None, 12])
    assert target.settle(bound=5) == (0.0, 0) and target.calls == 1


def test_an_exec_that_hangs_is_not_taken_for_a_busy_controller() -> None:
    target = _Sdiag(["hung", 12])
    assert target.settle(bound=5) == (0.0, 0) and target.calls == 1


def test_a_busy_controller_is_asked_again() -> None:
    target = _Sdiag(["busy", "busy", 0])
    waited, left = target.settle(bound=5)
    assert (left, target.calls) == (0, 3)
    assert _Sdiag(["busy"]).settle(bound=0.3)[1] == -1


def test_an_answer_counts_only_after_the_samples_taken_before_the_stop(tmp_path) -> None:
    watch = ControllerWatch.__new__(ControllerWatch)  # its log only: no ping loop is started
    watch.log = tmp_path / "watch.log"
    watch.log.write_text("100.0 UP\n100.5 UP\n101.0 DOWN\n")
    assert not watch.answered(after=2, timeout=0.3)
    watch.log.write_text(watch.log.read_text() + "99.0 DOWN\n99.5 UP\n")  # a node clock behind ours
    assert watch.answered(after=2, timeout=0.3)


class _Watch:
    """The compute node's view: answers before the stop, none after it."""

    def __init__(self, target, node) -> None:
        self.target, self.rows = target, [(1.0, True), (1.1, True)]
        target.watch = self

    def wait_up(self) -> None:
        pass

    def samples(self) -> list[tuple[float, bool]]:
        return list(self.rows)

    def answered(self, after: int = 0, timeout: float = 30) -> bool:
        self.target.steps.append(f"answered after {after} samples, timeout {round(timeout)}")
        self.target.clock += timeout  # all of it went by
        return False

    def stop(self) -> None:
        pass


class _Target(SmsTarget):
    def __init__(self, tmp_path) -> None:
        self.steps: list[str] = []
        self.clock = 1000.0  # the cutover's time.monotonic()
        self.apptainer = type("A", (), {"labels": staticmethod(lambda sif: {
            "sms-services.release": "3.5", "sms-services.slurm.installed": "24.11.5"})})()
        self.site = type("S", (), {"values": {}})()
        self.sms_sif, self.sms_overlay = tmp_path / "old.sif", tmp_path / "overlay.img"
        self.release, self.sms_fragments, self.nodes, self.work = "3.5", (), ["c1"], tmp_path

    def settle(self, bound=20.0):
        self.steps.append("settle")
        return 0.1, 0

    def stop_sms(self) -> float:
        self.steps.append("stop")
        self.watch.rows.append((1.2, False))  # the node's last ping before the stop returned
        return 0.3

    def start_sms(self, sif, *, host="") -> float:
        self.steps.append(f"start {sif.name}")
        self.sms_started_at = self.clock
        return 0.4


def test_a_cutover_settles_stops_starts_then_probes_within_one_deadline(tmp_path, monkeypatch) -> None:
    from sms_services.runtime import cutover as co

    target = _Target(tmp_path)
    project = type("P", (), {"matrix": type("M", (), {"releases": {"3.5": None}})(),
                             "sms_fragments": staticmethod(lambda release: ())})()
    monkeypatch.setattr(co, "ControllerWatch", _Watch)
    monkeypatch.setattr(co, "usage", lambda overlay: (0, 2**30))
    monkeypatch.setattr(co, "check", lambda *a, **k: None)
    monkeypatch.setattr(co, "time", SimpleNamespace(monotonic=lambda: target.clock, time=time.time,
                                                    sleep=time.sleep))

    def run_all(t, frags, *, ready_timeout, phase, say):
        target.steps.append(f"probes ({phase}), ready timeout {round(ready_timeout)}")
        return [Result("slurmctld", "ping", phase == "rollback", 0.0, 0.0, 1, "")]

    monkeypatch.setattr(co, "run_all", run_all)
    report = co.cutover(target, project, tmp_path / "new.sif", trust=None, deadline=60)  # type: ignore[arg-type]
    assert target.steps[:5] == ["settle", "stop", "start new.sif", "answered after 3 samples, timeout 60",
                                "probes (cutover), ready timeout 1"]
    assert target.steps[5:] == ["stop", "start old.sif", "probes (rollback), ready timeout 60"]
    assert report.rolled_back and report.settle_s == 0.1
