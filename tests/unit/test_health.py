"""smsctl probe's verdict, summary line and textfile, from made-up results (no root, no instance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sms_services.cli.main import main
from sms_services.errors import UserError
from sms_services.probes.registry import Result
from sms_services.runtime import health as hl
from sms_services.runtime.deploy import Record

GiB = 2**30


def res(service: str, probe: str, ok: bool = True, detail: str = "fine") -> Result:
    return Result(service, probe, ok, 0.012, 0.012, 1, detail)


def healthy(**kw) -> hl.Health:
    base = dict(name="sms", release="3.5", signer="ABCD", build_date="2026-11-30T10:00:00Z",
                started="2026-12-01T00:00:00+00:00", running=True,
                results=[res("slurmctld", "slurm-ping"), res("munge", "munge-roundtrip"),
                         res("chrony", "ntp-query[port=123]")],
                overlay_used=1 * GiB, overlay_size=4 * GiB)
    return hl.Health(**{**base, **kw})


def test_all_green_is_ok_with_perfdata() -> None:
    h = healthy()
    assert h.status == hl.OK
    line = h.summary()
    assert line.startswith("SMS-SERVICES OK - sms: 3 probes OK, release 3.5")
    assert "| 'slurmctld/slurm-ping'=0.012s" in line and "overlay_used=1073741824B;" in line


def test_a_failed_probe_is_critical_and_the_line_names_its_service_first() -> None:
    h = healthy(results=[res("slurmctld", "slurm-ping"),
                         res("chrony", "ntp-query[port=123]", ok=False, detail="no answer from 198.18.0.2")])
    assert h.status == hl.CRITICAL
    line = h.summary()
    assert line.startswith("SMS-SERVICES CRITICAL - sms: chrony failed: ntp-query[port=123]: no answer"), line
    assert h.to_dict()["failed_services"] == ["chrony"]


def test_a_stopped_instance_is_critical() -> None:
    h = healthy(running=False, results=[])
    assert h.status == hl.CRITICAL and "instance not running" in h.summary()


@pytest.mark.parametrize("used_gib,expected", [(3.7, hl.WARNING), (3.9, hl.CRITICAL), (3.5, hl.OK)])
def test_overlay_free_space_thresholds(used_gib: float, expected: int) -> None:
    h = healthy(overlay_used=int(used_gib * GiB))
    assert h.status == expected
    if expected != hl.OK:
        assert "% free (below" in h.summary() and "smsctl overlay grow" in h.summary()


def test_an_unreadable_overlay_warns() -> None:
    h = healthy(overlay_used=None, overlay_size=None)
    assert h.status == hl.WARNING and "overlay space unreadable" in h.summary()


def test_a_check_that_cannot_run_is_unknown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path))
    h = hl.check(None, None, "nosuch")  # type: ignore[arg-type]  # the record is read first
    assert h.status == hl.UNKNOWN
    assert h.summary().startswith("SMS-SERVICES UNKNOWN - nosuch: ") and "no record" in h.summary()


def test_the_textfile_is_valid_exposition_and_remembers_last_success(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    prom = tmp_path / "sms.prom"
    first = healthy(checked_at=1000.0)
    hl.write_prometheus(first, prom)
    weird = 'ntp-query[port=123,"x"]'  # label values are escaped, not pasted
    second = healthy(checked_at=2000.0, results=[res("slurmctld", "slurm-ping"),
                                                 res("chrony", weird, ok=False, detail="down")])
    hl.write_prometheus(second, prom)
    samples = {(s.name, s.labels.get("service", ""), s.labels.get("probe", s.labels.get("kind", ""))): s.value
               for fam in text_string_to_metric_families(prom.read_text()) for s in fam.samples}
    assert samples[("sms_services_probe_up", "chrony", weird)] == 0
    assert samples[("sms_services_probe_up", "slurmctld", "slurm-ping")] == 1
    assert samples[("sms_services_probe_last_success_timestamp_seconds", "slurmctld", "slurm-ping")] == 2000.0
    assert ("sms_services_probe_last_success_timestamp_seconds", "chrony", weird) not in samples
    assert samples[("sms_services_status", "", "")] == hl.CRITICAL
    assert samples[("sms_services_up", "", "")] == 0
    assert samples[("sms_services_overlay_bytes", "", "free")] == 3 * GiB
    assert samples[("sms_services_uptime_seconds", "", "")] == pytest.approx(2000.0 - first.start_time)
    kept = json.loads((tmp_path / "state/health/sms.json").read_text())
    assert kept["munge/munge-roundtrip"] == 1000.0  # not probed the second time: its last success stays


def test_the_textfile_folder_must_exist(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(UserError, match="no such folder for --prometheus"):
        hl.write_prometheus(healthy(), tmp_path / "nope" / "sms.prom")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", "", "-rf", "a\nb"])
def test_an_instance_name_never_leaves_the_state_folder(name: str) -> None:
    with pytest.raises(UserError, match="instance name"):
        Record.path_of(name)


def test_smsctl_probe_exits_unknown_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("sms_services.apptainer.Apptainer.find", classmethod(lambda cls: None))
    assert main(["probe", "--name", "../x"]) == hl.UNKNOWN
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("SMS-SERVICES UNKNOWN - ../x: instance name"), out


def test_an_instance_list_that_fails_is_never_taken_for_no_instance(tmp_path: Path, monkeypatch) -> None:
    """A false "not running" would let a stop free the lease (or Pacemaker start a second writer)."""
    from sms_services.apptainer import Result
    from sms_services.runtime.ha_monitor import OCF_ERR_GENERIC, controller_state
    from sms_services.runtime.instance import instance_list

    class Broken:
        def run(self, args: list[str], **kw: object) -> Result:
            return Result(255, "", "FATAL: could not read instance files")

    with pytest.raises(UserError, match=r"apptainer instance list failed \(.*could not read instance files\)"):
        instance_list(Broken())  # type: ignore[arg-type]
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path))
    Record("sms", "x.sif", "3.5", "o.img", "site.yaml", "br-p", "br-u").save()
    state = controller_state(None, Broken(), "sms")  # type: ignore[arg-type]
    assert state.code == OCF_ERR_GENERIC and "instance list failed" in state.detail
