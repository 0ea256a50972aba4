"""SMS-services as a Pacemaker resource on an HA pair (two lab hosts, corosync + Pacemaker,
fencing on): the OCF agent passes ocf-tester, a hung controller is restarted, and a host's
death moves SMS-services to the other host with a job running across it, never with
two instances on the overlay. Real Slurm jobs, real daemons; see sms_services/lab/ha.py."""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import finished_ok, submit

from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.ha import HOSTS, RESOURCE, HaPair, signed_pair
from sms_services.lab.verify import open_lab, probe_services

pytestmark = pytest.mark.integration
AGENT_PATH = "/usr/lib/ocf/resource.d/sms-services/instance"  # as installed on each host


@pytest.fixture(scope="module")
def lab(apptainer, project: Project) -> Iterator[Lab]:
    if not shutil.which("pacemakerd") or not shutil.which("corosync"):
        pytest.fail("pacemaker/corosync missing: scripts/install-host.sh installs them")
    with open_lab(project, apptainer, "3.5", name="smsha35") as lab:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, outcome.failed
        yield lab


@pytest.fixture(scope="module")
def pair(lab: Lab, tmp_path_factory) -> Iterator[HaPair]:
    """The pair up, the instance recorded on both hosts with a release-signed image, the
    lab's own SMS-services stopped (the pair runs it from now on, on the same overlay)."""
    with signed_pair(lab, tmp_path_factory.mktemp("hakeys")) as ha:
        yield ha


def probe_green(ha: HaPair, host: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return ha.probe_green(host, timeout)


class Writers:
    """Samples, every 0.1 s, how many loop devices the kernel has on the overlay file (one
    per Apptainer instance that mounted it): the check that two never held it at once."""

    def __init__(self, overlay: Path) -> None:
        self.overlay, self.most, self.samples = overlay, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["losetup", "--noheadings", "-O", "NAME", "-j", str(self.overlay)],
                                 capture_output=True, text=True).stdout
            self.most = max(self.most, len(out.split()))
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Writers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_resource_agent_passes_ocf_tester(pair: HaPair) -> None:
    """resource-agents' own conformance test, on a host of the pair, against the recorded
    instance (real starts and stops: the agent waits for slurmctld to answer)."""
    r = pair.run("hosta", ["ocf-tester", "-n", "smsha-test", "-o", f"name={pair.instance}",
                           "-o", f"smsctl={pair.smsctl}", "-o", f"state_dir={pair.state_dir}",
                           "-o", f"config_dir={pair.config_dir}",
                           "-o", f"apptainer_config={pair.lab.work / 'apptainer.conf'}", AGENT_PATH],
                 timeout=900)
    assert r.returncode == 0 and "passed all tests" in r.stdout, r.stdout + r.stderr
    assert pair.smsctl_on("hosta", "ha", "monitor", "--name", pair.instance).returncode == 7  # left stopped


@pytest.fixture(scope="module")
def cluster(pair: HaPair) -> HaPair:
    """The configuration smsctl ha config --apply makes; SMS-services started by Pacemaker."""
    pair.configure()
    r = pair.run("hosta", ["crm_attribute", "--type", "crm_config", "--name", "stonith-enabled", "--query"])
    assert "value=true" in r.stdout, r.stdout + r.stderr  # fencing on in every test
    host = pair.wait_located(timeout=180)
    assert probe_green(pair, host).returncode == 0
    return pair


def test_a_hung_controller_is_restarted_by_pacemaker(cluster: HaPair) -> None:
    ha, lab = cluster, cluster.lab
    host = ha.wait_located()
    job = submit(lab, 40, "across-hang")
    time.sleep(2)
    hung = ha.pids_named(host, "slurmctld")
    assert len(hung) == 1, hung
    os.kill(hung[0], signal.SIGSTOP)  # alive, holding its port, answering nobody
    assert ha.smsctl_on(host, "ha", "monitor", "--name", ha.instance, "--timeout", "3").returncode == 1
    t = time.monotonic()
    deadline = t + 120
    while time.monotonic() < deadline:  # Pacemaker's monitor fails, it stops and starts the instance
        out = ha.run(host, ["crm_mon", "-1", "--include=failcounts"], timeout=30).stdout
        if "monitor" in out and ha.smsctl_on(host, "ha", "monitor", "--name", ha.instance).returncode == 0:
            break
        time.sleep(1)
    else:
        pytest.fail(f"not recovered: {ha.status()}")
    recovered = time.monotonic() - t
    r = probe_green(ha, ha.wait_located())  # (located() is "" while crm_mon still shows the recovery)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"hung controller: running and answering again {recovered:.1f} s after the SIGSTOP")
    assert finished_ok(lab, job, "across-hang") == ""
    ha.run(host, ["crm_resource", "--cleanup", "--resource", RESOURCE])


def test_a_planned_move_keeps_a_running_job(cluster: HaPair) -> None:
    """crm_resource --move: a clean stop frees the lease, so the other host starts at once."""
    ha, lab = cluster, cluster.lab
    src = ha.wait_located()
    dst = next(h for h in HOSTS if h != src)
    job = submit(lab, 25, "across-move")
    time.sleep(2)
    with Writers(lab.sms_overlay) as writers:
        t = time.monotonic()
        r = ha.run(src, ["crm_resource", "--move", "--resource", RESOURCE, "--node", dst])
        assert r.returncode == 0, r.stderr
        assert ha.wait_located(timeout=120, not_on=src) == dst
        moved = time.monotonic() - t
        r = probe_green(ha, dst)
        green = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    assert writers.most == 1, writers.most
    ha.run(dst, ["crm_resource", "--clear", "--resource", RESOURCE])  # no lasting preference
    print(f"planned move: started on {dst} {moved:.1f} s, every probe green {green:.1f} s after --move")
    assert finished_ok(lab, job, "across-move") == ""


def test_a_network_split_leaves_exactly_one_instance(cluster: HaPair) -> None:
    """The corosync link cut, both hosts alive: each tries to fence the other; the host
    running SMS-services wins (priority-fencing-delay), keeps it, and the job finishes."""
    ha, lab = cluster, cluster.lab
    active = ha.wait_located()
    other = next(h for h in HOSTS if h != active)
    job = submit(lab, 30, "across-split")
    time.sleep(2)
    with Writers(lab.sms_overlay) as writers:
        ha.link(active, up=False)
        deadline = time.monotonic() + 90
        while ha.alive(other) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ha.alive(other) and ha.alive(active), ha.status()
        ha.link(active, up=True)
        time.sleep(3)
        assert ha.located() == active, ha.status()
        r = probe_green(ha, active)
    assert r.returncode == 0, r.stdout + r.stderr
    assert writers.most == 1, writers.most
    assert finished_ok(lab, job, "across-split") == ""
    ha.boot(other)  # the fenced host comes back: the pair is whole for the next test
    assert ha.located() == active  # stickiness: it does not pull SMS-services over


def test_a_host_whose_bridge_goes_down_hands_sms_services_over(cluster: HaPair) -> None:
    """The provisioning bridge down on the host running SMS-services (the host alive): the
    ethmonitor attribute drops to 0 there, the -INFINITY rule of smsctl ha config moves
    SMS-services to the other host, every probe is green there; once the bridge is back,
    the host is eligible again by itself (no failure left to clean up) and stickiness keeps
    SMS-services where it is."""
    ha, lab = cluster, cluster.lab
    for host in HOSTS:  # (an earlier test may have left its fenced host off)
        if not ha.alive(host):
            ha.boot(host)
    src = ha.wait_located()
    dst = ha.other(src)
    bridge = f"{lab.name}-p"
    down = ["ip", "-n", ha.netns[src], "link", "set", bridge, "down"]
    with Writers(lab.sms_overlay) as writers:
        t = time.monotonic()
        subprocess.run(down, check=True)
        try:
            moved = ha.wait_located(timeout=150, not_on=src)
            took = time.monotonic() - t
            r = probe_green(ha, dst)
        finally:
            subprocess.run([*down[:-1], "up"], check=True)
    assert moved == dst
    assert r.returncode == 0, r.stdout + r.stderr
    assert writers.most == 1, writers.most
    print(f"bridge down: started on {dst} {took:.1f} s after the bridge went down")
    attr = f"sms-bridge-{bridge}"
    deadline = time.monotonic() + 60
    q = None
    while time.monotonic() < deadline:
        q = ha.run(dst, ["crm_attribute", "--node", src, "--name", attr, "--lifetime", "reboot", "--query"])
        if "value=1" in q.stdout:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{attr} not back to 1 on {src} without a cleanup: {q.stdout if q else ''}")
    out = ha.run(dst, ["crm_mon", "-1", "--output-as=xml"]).stdout
    assert "<failure " not in out, out[-1500:]  # nothing an admin must clear
    assert ha.located() == dst  # stickiness: the bridge's return does not pull it back


def test_host_death_fences_it_and_the_other_host_takes_over(cluster: HaPair) -> None:
    ha, lab = cluster, cluster.lab
    dead = ha.wait_located()
    survivor = next(h for h in HOSTS if h != dead)
    job = submit(lab, 45, "across-host-death")
    time.sleep(3)
    with Writers(lab.sms_overlay) as writers:
        t0 = time.monotonic()
        ha.power_off(dead)  # every process of the host, SIGKILL
        assert not ha.alive(dead)
        fenced = started = 0.0
        deadline = t0 + 180
        while time.monotonic() < deadline and not started:
            if not fenced:
                hist = ha.run(survivor, ["stonith_admin", "--history", dead, "--output-as=xml"], timeout=30).stdout
                if 'status="success"' in hist:
                    fenced = time.monotonic() - t0
            if ha.located() == survivor:
                started = time.monotonic() - t0
            time.sleep(0.25)
        assert fenced and started, ha.status()
        r = probe_green(ha, survivor)
        green = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert writers.samples > 100 and writers.most == 1, (writers.samples, writers.most)
    assert finished_ok(lab, job, "across-host-death", timeout=180) == ""
    hist = ha.run(survivor, ["stonith_admin", "--history", dead]).stdout
    assert "successful" in hist or "success" in hist, hist
    timings = {"corosync_token_ms": ha.token_ms, "fenced_s": round(fenced, 1), "started_s": round(started, 1),
               "probes_green_s": round(green, 1)}
    print("host death:", json.dumps(timings))


def test_cutover_under_pacemaker_keeps_a_running_job(cluster: HaPair, tmp_path: Path) -> None:
    """smsctl cutover --pacemaker-resource: the cluster leaves the stopped instance alone,
    the record (which the resource's start reads) names the new image, no failure remains.
    Last in the module: the instance a cutover starts is smsctl's child, and smsctl runs
    by nsenter, outside the lab host's process tree, so a later host death would miss it."""
    ha, lab = cluster, cluster.lab
    host = ha.wait_located()
    record = json.loads((ha.work / host / "state/instances" / f"{ha.instance}.json").read_text())
    job = submit(lab, 25, "across-ha-cutover")
    time.sleep(2)
    with Writers(lab.sms_overlay) as writers:
        r = ha.smsctl_on(host, "cutover", "--name", ha.instance, "--to", record["source"],
                         "--pacemaker-resource", RESOURCE, "--json", str(tmp_path / "cutover.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert writers.most == 1, writers.most
    gap = json.loads((tmp_path / "cutover.json").read_text())["gap_s"]
    print(f"cutover under Pacemaker: service gap {gap} s")
    time.sleep(12)  # a monitor interval: Pacemaker has looked again
    out = ha.run(host, ["crm_mon", "-1", "--output-as=xml"]).stdout
    assert ha.located() == host and "<failure " not in out, out[-1500:]
    assert re.search(rf'<resource id="{RESOURCE}" [^>]*managed="true"', out), out[-1500:]
    meta = ha.run(host, ["crm_resource", "--resource", RESOURCE, "--meta", "--get-parameter", "is-managed"])
    assert meta.returncode in (0, 105) and meta.stdout.strip() == "", meta  # unset before, unset again
    after = json.loads((ha.work / host / "state/instances" / f"{ha.instance}.json").read_text())
    assert after["started"] != record["started"]  # the cutover's start, recorded for the resource
    assert probe_green(ha, host).returncode == 0
    assert finished_ok(lab, job, "across-ha-cutover") == ""
