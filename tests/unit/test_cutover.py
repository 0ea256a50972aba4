"""The service gap and the Slurm step rules of a cutover, without root."""

from sms_services.image.accounts import id_maps
from sms_services.runtime.cutover import ControllerWatch, Outage, outages, step_reasons
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

    def __init__(self, counts: list[int | None]) -> None:
        self.counts, self.calls = counts, 0

    def on_sms(self, command, stdin=None, timeout=30):
        assert command[-1] == "sdiag"
        n = self.counts[min(self.calls, len(self.counts) - 1)]
        self.calls += 1
        if n is None:
            return 1, "", "slurm_get_statistics: Unable to contact slurm controller"
        return 0, f"Agent queue size:     3\nAgent count:          1\nAgent thread count:   {n}\n", ""


def test_the_stop_waits_until_no_rpc_to_the_nodes_is_in_flight() -> None:
    target = _Sdiag([12, 4, 0, 7])
    waited, left = target.settle(bound=5)
    assert (left, target.calls) == (0, 3) and waited >= 0.4


def test_the_wait_is_bounded_and_says_what_is_left() -> None:
    target = _Sdiag([12])
    waited, left = target.settle(bound=0.5)
    assert left == 12 and 0.5 <= waited < 2


def test_a_controller_that_does_not_answer_sdiag_is_not_waited_for() -> None:
    target = _Sdiag([None, 12])
    assert target.settle(bound=5) == (0.0, 0) and target.calls == 1


def test_probes_wait_for_an_answer_after_the_stop_not_before(tmp_path) -> None:
    watch = ControllerWatch.__new__(ControllerWatch)  # its log only: no ping loop is started
    watch.log = tmp_path / "watch.log"
    watch.log.write_text("100.0 UP\n100.5 UP\n101.0 DOWN\n")
    assert not watch.answered(since=100.8, timeout=0.3)
    watch.log.write_text(watch.log.read_text() + "102.0 DOWN\n102.5 UP\n")
    assert watch.answered(since=100.8, timeout=0.3)
