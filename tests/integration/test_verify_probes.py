"""Every probe can fail: break one service in a running lab, the probes name it.

One lab per release stays up for the whole module (starting one costs seconds,
not minutes): each test breaks one service the way an admin would meet it
(daemon stopped, NAT rule gone, postfix opened up), asserts that the probes
fail naming that service and only that one, then repairs it and asserts they
pass again, so the next test starts from a green lab.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sms_services.inputs.project import Project
from sms_services.lab.cluster import SUPERVISORCTL, Lab, lab_is_gone
from sms_services.lab.verify import open_lab, probe_services
from sms_services.probes import probe_name

pytestmark = pytest.mark.integration

CTL = SUPERVISORCTL


PROJECT = Project(Path(__file__).resolve().parents[2])
# The lab each fragment's breaks run in: the default 3.5 (trixie), or 4.1 (sid) for what
# only 4.x carries (the accounting DB).
LAB_RELEASES = ("3.5", "4.1")


def _lab_release(fragment: str) -> str:
    return next(r for r in LAB_RELEASES if fragment in PROJECT.matrix.get(r).fragments)


BREAKS = sorted((_lab_release(f.name), f.name, b.name) for f in PROJECT.fragments.values() for b in f.breaks)
# ``ctl`` in a break's script: supervisorctl of the instance's own supervisord.
SH_PRELUDE = "ctl() { " + " ".join(CTL) + ' "$@"; }\n'


# Site switches each lab turns on: Slurm's own metrics where its Slurm (sid's) has them.
SWITCHES = {"3.5": {}, "4.1": {"slurm_metrics": True}}


@pytest.fixture(scope="module")
def lab(request, apptainer, project: Project, tmp_path_factory) -> Iterator[Lab]:
    """A green lab of the release (the test's parameter), named apart from `smsctl verify`'s own."""
    site = tmp_path_factory.mktemp("site") / "site.yaml"
    data = yaml.safe_load((project.root / "overlays/lab/site.yaml").read_text())
    site.write_text(yaml.safe_dump({**data, **SWITCHES[request.param]}))
    with open_lab(project, apptainer, request.param, name=f"smstest{request.param.replace('.', '')}",
                  site_path=site) as lab:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, f"lab {request.param} is not green before any test: {outcome.failed}"
        yield lab
    assert lab_is_gone(lab.name, apptainer), f"lab {lab.name} left something behind"


def _run(lab: Lab, script: str) -> None:
    rc, out, err = lab.on_sms(["sh", "-ec", SH_PRELUDE + script])
    assert rc == 0, f"{script}: {err or out}"


@pytest.mark.parametrize("lab,service,case", BREAKS, indirect=["lab"])
def test_a_broken_service_fails_exactly_the_probes_its_fragment_names(lab: Lab, service: str, case: str) -> None:
    """Each fragment's ``breaks`` (defs/<service>/fragment.yaml): the probes it names fail,
    naming that service and only it, with what was seen; the others of the service pass;
    after the repair all pass again."""
    brk = next(b for b in PROJECT.fragments[service].breaks if b.name == case)
    _run(lab, brk.script)
    try:
        broken = probe_services(lab, only={service}, ready_timeout=6, probe_timeout=6)
        failed = [r for r in broken.results if not r.ok]
        off = {probe_name(p) for p in PROJECT.fragments[service].probes if p.when and not lab.site.values.get(p.when)}
        expected = sorted(set(brk.fails) - off)  # a probe of a feature this lab's site left off does not run
        assert sorted(r.probe for r in failed) == expected, [(r.probe, r.detail) for r in failed]
        assert broken.failed_services == [service]
        assert all(r.detail for r in failed)
        assert all(brk.detail in r.detail for r in failed), [r.detail for r in failed]
    finally:
        _run(lab, brk.repair)
    healed = probe_services(lab, only={service}, ready_timeout=90)
    assert healed.ok, f"{service} did not come back: {[(r.probe, r.detail) for r in healed.results if not r.ok]}"


def _pid(lab: Lab, program: str) -> int:
    out = lab.on_sms([*CTL, "status", program])[1]
    m = re.search(r"RUNNING\s+pid (\d+)", out)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("lab,program", [("3.5", "slurmctld"), ("3.5", "munge"), ("4.1", "slurmdbd")],
                         indirect=["lab"])
def test_supervisor_restarts_a_killed_daemon(lab: Lab, program: str) -> None:
    deadline = time.monotonic() + 30  # an earlier test may have just restarted it
    while not _pid(lab, program) and time.monotonic() < deadline:
        time.sleep(0.3)
    # A controller killed while the probes' last jobs still end leaves a ghost job holding a
    # node after its restart (CI: "not idle: c2=allocated"). An empty queue is not enough: the
    # state file lags it by up to SAVE_MAX_WAIT (5 s, slurmctld/state_save.c), so wait for idle
    # nodes and then one save interval more, so the restart is all this test sees.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            lab.on_sms(["squeue", "-h"])[1].strip()
            or set(lab.on_sms(["sinfo", "-h", "-N", "-o", "%T"])[1].split()) - {"idle"}):
        time.sleep(0.5)
    time.sleep(6)
    before = _pid(lab, program)
    assert before, f"{program} not running: {lab.on_sms([*CTL, 'status'])[1]}"
    assert lab.on_sms(["kill", "-KILL", str(before)])[0] == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid(lab, program) in (0, before):
        time.sleep(0.3)
    after = _pid(lab, program)
    assert after not in (0, before), f"supervisord did not restart {program} after SIGKILL"
    healed = probe_services(lab, only={program}, ready_timeout=60)
    assert healed.ok, [(r.probe, r.detail) for r in healed.results if not r.ok]


def test_the_instance_stops_within_five_seconds(apptainer, project: Project) -> None:
    """A stop is part of every cutover's service gap; supervisord must not wait out its ticks.

    A lab of its own: stopping the shared one would break the tests that pytest orders after it.
    """
    with open_lab(project, apptainer, "3.5", name="smsstop35") as lab:
        assert probe_services(lab, only={"slurmctld"}, ready_timeout=60).ok
        seconds = lab.stop_sms()
        assert seconds < 5, f"instance stop took {seconds} s"
        assert lab.sms_instance not in lab.running_instances()
    assert lab_is_gone("smsstop35", apptainer)


@pytest.mark.parametrize("lab", ["4.1"], indirect=True)
def test_slurms_own_metrics_are_served_and_their_probe_names_slurmctld_when_they_stop(lab: Lab) -> None:
    """slurm_metrics on (4.1: sid's Slurm 26.05): the probe passes; with MetricsType taken out
    of slurm.conf and slurmctld restarted (it answers pings, serves no metrics), only
    slurm-metrics fails, naming slurmctld; put back, it passes again."""
    assert "\nMetricsType=metrics/openmetrics\n" in lab.on_sms(["cat", "/etc/slurm/slurm.conf"])[1]
    green = probe_services(lab, only={"slurmctld"}, ready_timeout=60)
    assert green.ok and "slurm-metrics" in {r.probe for r in green.results}, green.results
    conf = "/etc/slurm/slurm.conf"
    _run(lab, f"cp {conf} /tmp/slurm.conf.saved && sed -i '/^MetricsType=/d' {conf} && ctl restart slurmctld")
    try:
        broken = probe_services(lab, only={"slurmctld"}, ready_timeout=6, probe_timeout=6)
        failed = [r for r in broken.results if not r.ok]
        assert [r.probe for r in failed] == ["slurm-metrics"], [(r.probe, r.detail) for r in broken.results]
        assert broken.failed_services == ["slurmctld"] and "/metrics/nodes" in failed[0].detail, failed[0].detail
    finally:
        _run(lab, f"cp /tmp/slurm.conf.saved {conf} && ctl restart slurmctld")
    healed = probe_services(lab, only={"slurmctld"}, ready_timeout=60)
    assert healed.ok, [(r.probe, r.detail) for r in healed.results if not r.ok]
