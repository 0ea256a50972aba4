"""The load bench's pure parts: log times for the gap breakdown, and summing a comparison's runs."""

import calendar

from sms_services.lab.load import _log_time, _side_sum


def test_slurmctld_and_supervisord_lines_give_their_time() -> None:
    base = calendar.timegm((2026, 12, 2, 12, 59, 51, 0, 0, 0))
    assert _log_time("[2026-12-02T12:59:51.900] Recovered JobId=7043 Assoc=0") == base + 0.9
    assert _log_time("2026-12-02 12:59:51,025 INFO spawned: 'munge' with pid 12") == base + 0.025
    assert _log_time("[2026-12-02T12:59:51] no milliseconds") == base
    assert _log_time("a line without a time") is None


def test_a_side_of_the_comparison_sums_its_runs() -> None:
    runs = [{"jobs": 100, "seconds": 10.0, "submit_per_s": 50.0, "completed_per_s": 10.0},
            {"jobs": 100, "seconds": 5.0, "submit_per_s": 100.0, "completed_per_s": 20.0}]
    side = _side_sum(runs)
    assert side["completed_per_s"] == round(200 / 15, 1)
    assert side["submit_per_s"] == round(200 / 3, 1)
