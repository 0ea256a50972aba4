"""The HA bench's reading of corosync and Pacemaker logs, and its statistics."""

from __future__ import annotations

import time

from sms_services.lab.ha_bench import death_events, first_after, log_time, summary

YEAR = 2026


def at(stamp: str) -> float:
    return time.mktime(time.strptime(f"{YEAR} {stamp}", "%Y %b %d %H:%M:%S"))


def test_a_stamp_with_milliseconds_is_read_to_the_millisecond() -> None:
    line = "Dec 02 13:05:01.123 hostb pacemaker-fenced    [1234] (finalize_op) notice: done"
    assert abs(log_time(line, YEAR) - (at("Dec 02 13:05:01") + 0.123)) < 1e-6


def test_a_stamp_without_fraction_and_a_one_digit_day() -> None:
    assert log_time("Mar  4 09:00:07 [TOTEM ] x", YEAR) == at("Mar 04 09:00:07")


def test_a_line_without_a_stamp_has_no_time() -> None:
    assert log_time("corosync: no stamp here", YEAR) is None


def test_first_after_skips_matches_before_the_event() -> None:
    lines = ["Dec 02 13:00:00.000 [TOTEM ] A new membership (1.2) was formed. Members joined: 2",
             "Dec 02 13:00:09.500 [TOTEM ] A processor failed, forming new configuration",
             "Dec 02 13:00:13.250 [TOTEM ] A new membership (2.3) was formed. Members left: 1"]
    since = at("Dec 02 13:00:05")
    events = death_events("hosta", "hostb")
    assert first_after(lines, events["membership_s"][1], since, YEAR) == 8.25
    assert first_after(lines, events["token_timeout_s"][1], since, YEAR) == 4.5
    assert first_after(lines, events["fenced_s"][1], since, YEAR) is None


def test_the_fence_and_start_patterns_name_the_right_hosts() -> None:
    events = death_events("hosta", "hostb")
    since = at("Dec 02 13:00:00")
    lines = ["Dec 02 13:00:12.000 hostb pacemaker-fenced [9] (x) notice: Operation 'reboot' targeting hostb "
             "by hosta for pacemaker-controld.1@hosta: OK",
             "Dec 02 13:00:12.400 hostb pacemaker-fenced [9] (x) notice: Operation 'reboot' targeting hosta "
             "by hostb for pacemaker-controld.7@hostb: OK (complete)",
             "Dec 02 13:00:12.451 hostb pacemaker-execd     [23558] (log_execute) \tinfo: executing - "
             "rsc:sms-services-bridge-smshab-p action:start call_id:26",
             "Dec 02 13:00:12.480 hostb pacemaker-execd     [23558] (log_execute) \tinfo: executing - "
             "rsc:sms-services action:start call_id:30",
             "Dec 02 13:00:13.000 hostb pacemaker-execd     [23558] (log_finished) \tinfo: sms-services start "
             "(call 29, PID 26101) exited with status 1 (execution time 0.5s)",
             "Dec 02 13:00:27.315 hostb pacemaker-execd     [23558] (log_finished) \tinfo: sms-services start "
             "(call 30, PID 26102) exited with status 0 (execution time 14.835s)"]
    assert first_after(lines, events["fenced_s"][1], since, YEAR) == 12.4
    assert first_after(lines, events["start_initiated_s"][1], since, YEAR) == 12.48
    assert abs(first_after(lines, events["started_s"][1], since, YEAR) - 27.315) < 0.006


def test_summary_is_median_and_max_of_the_runs_that_measured() -> None:
    runs = [{"a": 3.0, "b": None}, {"a": 1.0}, {"a": 2.0, "b": None}]
    s = summary(runs, ["a", "b"])
    assert s["a"] == {"n": 3, "median": 2.0, "max": 3.0, "min": 1.0}
    assert s["b"] == {"n": 0, "median": None, "max": None, "min": None}
