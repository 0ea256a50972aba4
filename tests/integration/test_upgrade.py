"""Upgrades without downtime: cutover, rollback, move, power loss, backup and rehearsal.

Real Slurm throughout: batch jobs run on the lab's compute nodes while the
controller under them is replaced, and must finish with exit 0 and their output.
One 3.5 lab serves the module; the tests run in file order and each leaves it
green, but the last: after a restored (older) state ran against the same nodes,
the live controller and the nodes disagree about jobs for a while.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import finished_ok, submit

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.rehearse import rehearse
from sms_services.lab.verify import open_lab, prepare_images, probe_services
from sms_services.probes import KINDS
from sms_services.runtime.backup import backup, check_backup, restore
from sms_services.runtime.cutover import cutover
from sms_services.runtime.instance import instance_pids
from sms_services.runtime.procfs import comm, ended
from sms_services.runtime.reconcile import reconcile
from sms_services.trust.keys import create_keypair
from sms_services.trust.signing import Trust, build_key, sign, signatures

pytestmark = pytest.mark.integration
TRUST = Trust.candidate  # the lab's images are build-signed candidates


@pytest.fixture(scope="module")
def lab(apptainer, project: Project) -> Iterator[Lab]:
    with open_lab(project, apptainer, "3.5", name="smsup35") as lab:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, outcome.failed
        yield lab


def node_states(lab: Lab) -> dict[str, str]:
    rc, out, _ = lab.on_sms(["sinfo", "-h", "-N", "-o", "%N %t"])
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_same_release_cutover_keeps_a_running_job(lab: Lab, project: Project) -> None:
    first = submit(lab, 1, "history")
    assert finished_ok(lab, first, "history") == ""
    job = submit(lab, 20, "during-cutover")
    time.sleep(2)
    nodes = node_states(lab)
    report = cutover(lab, project, lab.sms_sif, trust=TRUST(), deadline=90)
    assert report.ok and not report.rolled_back, report.reasons
    assert report.gap_s is not None and report.gap_s < 300  # nodes give up after ~300 s
    assert finished_ok(lab, job, "during-cutover") == ""
    rc, out, _ = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i %T"])
    assert f"{first} COMPLETED" in out  # the queue's history came along
    assert set(node_states(lab)) == set(nodes)


def test_untrusted_or_unsigned_image_is_refused_before_anything_stops(
        apptainer, lab: Lab, project: Project, tmp_path: Path) -> None:
    unsigned = tmp_path / "unsigned.sif"
    shutil.copyfile(lab.sms_sif, unsigned)
    for obj in signatures(apptainer, unsigned):
        subprocess.run(["apptainer", "sif", "del", str(obj), str(unsigned)], check=True)
    before = lab.sms_pids()
    with pytest.raises(UserError, match="not signed"):
        cutover(lab, project, unsigned, trust=TRUST())
    with pytest.raises(UserError, match="no trusted key|not by a trusted key"):
        cutover(lab, project, lab.sms_sif, trust=Trust.release([]))
    assert lab.sms_pids() == before  # the running instance was never touched


def test_a_new_image_that_cannot_start_brings_the_old_one_back(lab: Lab, project: Project) -> None:
    """The start itself fails (here: a host that does not exist): SMS-services must not stay down."""
    with pytest.raises(UserError, match="failed before it started .* runs again"):
        cutover(lab, project, lab.sms_sif, trust=TRUST(), host=f"{lab.name}-nohost")
    assert lab.host == "" and lab.sms_pids()
    outcome = probe_services(lab, ready_timeout=60)
    assert outcome.ok, outcome.failed


@pytest.fixture(scope="module")
def broken_sif(apptainer, lab: Lab, tmp_path_factory) -> Path:
    """The same image with chronyd made unrunnable: a service that fails its probe."""
    work = tmp_path_factory.mktemp("broken")
    (work / "broken.def").write_text(f"Bootstrap: localimage\nFrom: {lab.sms_sif}\n\n"
                                     "%post\n    chmod a-x /usr/sbin/chronyd\n")
    sif = work / "broken.sif"
    res = apptainer.run(["build", *apptainer.build_flags, str(sif), str(work / "broken.def")], timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    sign(apptainer, sif, build_key(), replaces=None)
    return sif


def test_cutover_to_a_broken_image_rolls_back_and_the_job_finishes(
        lab: Lab, project: Project, broken_sif: Path) -> None:
    old = lab.sms_sif
    job = submit(lab, 15, "during-rollback")
    report = cutover(lab, project, broken_sif, trust=TRUST(), deadline=15)
    assert not report.ok and report.rolled_back
    assert any("chrony" in r for r in report.reasons), report.reasons
    assert lab.sms_sif == old
    rollback = [r for r in report.results if r.phase == "rollback"]
    assert rollback and all(r.ok for r in rollback), [r.detail for r in rollback if not r.ok]
    assert finished_ok(lab, job, "during-rollback") == ""


def smsctl(lab: Lab, project: Project, *args: str, env: dict[str, str], host: str = "") -> subprocess.CompletedProcess:
    """smsctl as an admin runs it on the infrastructure host: here, in the lab's namespace
    (or in ``host``, one made by ``lab.add_host``)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{host or lab.name}", sys.executable, "-m",
                           "sms_services.cli.main", *args], capture_output=True, text=True, timeout=600,
                          cwd=project.root, env=dict(os.environ, **env))


def release_signed(apptainer, lab: Lab, tmp_path: Path) -> tuple[Path, Path]:
    """A release key and a copy of the lab's image signed with it (the lab image was built
    here: its build record proves it, so the build signature is replaced unchecked)."""
    key, sif = tmp_path / "release", tmp_path / "good.sif"
    create_keypair(key)
    shutil.copyfile(lab.sms_sif, sif)
    sign(apptainer, sif, key, replaces=None)
    return key, sif


def smsctl_start(lab: Lab, project: Project, sif: Path, name: str, *extra: str, env: dict[str, str],
                 host: str = "") -> subprocess.CompletedProcess:
    """`smsctl start` of the lab's site on the lab's overlay and bridges (of ``host``, if given),
    probing the nodes through their instances, as an admin of this lab would type it."""
    node_exec = lab.node_exec
    return smsctl(lab, project, "start", str(sif), "--name", name, "--overlay", str(lab.sms_overlay),
                  "--site", str(lab.site.path), "--provision-bridge", f"{lab.name}-p",
                  "--public-bridge", f"{lab.name}-u", "--bind", f"{lab.work}/hosts:/etc/hosts",
                  "--bind", f"{lab.work}/resolv.conf:/etc/resolv.conf", "--node-exec", node_exec, *extra,
                  env=env, host=host)


def test_smsctl_start_and_cutover_of_a_recorded_instance(
        apptainer, lab: Lab, project: Project, broken_sif: Path, tmp_path: Path) -> None:
    """The production commands: start records the instance; cutover reads the record,
    probes through --node-exec, refuses an untrusted image, rolls back a broken one,
    and replaces the image under a running job."""
    key = tmp_path / "release"
    create_keypair(key)
    good, bad = tmp_path / "good.sif", tmp_path / "bad.sif"
    for src, dst in ((lab.sms_sif, good), (broken_sif, bad)):
        shutil.copyfile(src, dst)
        sign(apptainer, dst, key, replaces=None)  # (the build signature: this test's own build)
    (tmp_path / "config").mkdir()
    env = {"APPTAINER_CONFIG_FILE": str(lab.work / "apptainer.conf"), "SMS_STATE_DIR": str(tmp_path / "state"),
           "SMS_CONFIG_DIR": str(tmp_path / "config")}  # no trusted keys but --key's
    name, record = lab.sms_instance, tmp_path / "state/instances" / f"{lab.sms_instance}.json"
    node_exec = lab.node_exec
    report = tmp_path / "cutover.json"
    lab.stop_sms()
    try:
        r = smsctl(lab, project, "start", str(good), "--name", name, "--overlay", str(lab.sms_overlay),
                   "--site", str(lab.site.path), "--provision-bridge", f"{lab.name}-p",
                   "--public-bridge", f"{lab.name}-u", "--bind", f"{lab.work}/hosts:/etc/hosts",
                   "--bind", f"{lab.work}/resolv.conf:/etc/resolv.conf", "--node-exec", node_exec,
                   "--key", str(key), env=env)
        assert r.returncode == 0, r.stderr
        started = json.loads(record.read_text())
        # What runs is the checked private copy, not the path given (issue 10 item 11).
        assert started["source"] == str(good) and Path(started["sif"]).parent == (tmp_path / "state/images").resolve()
        assert Path(started["sif"]).read_bytes() == good.read_bytes()
        r = smsctl(lab, project, "status", "--json", env=env)
        (status,) = json.loads(r.stdout)
        assert status["running"] and status["release"] == "3.5" and "MiB" in status["overlay_use"], r.stdout
        outcome = probe_services(lab)  # started by smsctl, every probe of the lab passes
        assert outcome.ok, outcome.failed
        job = submit(lab, 25, "during-smsctl")

        before = lab.sms_pids()
        r = smsctl(lab, project, "cutover", "--name", name, "--to", str(good), env=env)
        assert r.returncode != 0 and "trusted" in r.stderr, r.stderr
        assert lab.sms_pids() == before

        r = smsctl(lab, project, "cutover", "--name", name, "--to", str(bad), "--deadline", "15",
                   "--key", str(key), "--json", str(report), env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "chrony" in r.stderr and "rolled back to good.sif, which answers again" in r.stderr, r.stderr
        assert json.loads(report.read_text())["rolled_back"]
        assert json.loads(record.read_text())["sif"] == started["sif"]

        r = smsctl(lab, project, "cutover", "--name", name, "--to", str(good), "--key", str(key),
                   "--json", str(report), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "service gap" in r.stdout
        done = json.loads(report.read_text())
        kinds = {p["probe"].split("[")[0] for p in done["results"]}
        assert {"slurm-ping", "munge-roundtrip", "ntp-query", "syslog-roundtrip", "smtp-deliver"} <= kinds
        needing_more = {k.name for k in KINDS.values() if k.needs}  # test jobs, lab hosts, SMS-mgmt
        assert needing_more and not kinds & needing_more  # a job is running: no test jobs, no lab hosts
        assert finished_ok(lab, job, "during-smsctl") == ""
        history = json.loads(record.read_text())["history"]
        assert [Path(h["source"]).name for h in history] == ["good.sif", "bad.sif"]

        r = smsctl(lab, project, "stop", "--name", name, env=env)
        assert r.returncode == 0 and not lab.sms_pids(), r.stderr
        assert not json.loads(smsctl(lab, project, "status", "--json", env=env).stdout)[0]["running"]
    finally:
        if lab.sms_pids():
            lab.stop_sms()
        lab.start_sms(lab.sms_sif)
    outcome = probe_services(lab)
    assert outcome.ok, outcome.failed


def test_smsctl_probe_tells_monitoring_what_broke(apptainer, lab: Lab, project: Project, tmp_path: Path) -> None:
    """smsctl probe on a recorded instance, as a Nagios/Icinga check and a node_exporter textfile:
    OK while every service answers, CRITICAL naming postfix once it is stopped, CRITICAL
    'not running' once the instance is stopped."""
    from prometheus_client.parser import text_string_to_metric_families

    from sms_services.probes.system import SUPERVISORCTL

    key, sif = release_signed(apptainer, lab, tmp_path)
    (tmp_path / "config").mkdir()
    env = {"APPTAINER_CONFIG_FILE": str(lab.work / "apptainer.conf"), "SMS_STATE_DIR": str(tmp_path / "state"),
           "SMS_CONFIG_DIR": str(tmp_path / "config")}
    name = lab.sms_instance
    prom, report = tmp_path / "sms.prom", tmp_path / "health.json"
    lab.stop_sms()
    try:
        r = smsctl_start(lab, project, sif, name, "--key", str(key), env=env)
        assert r.returncode == 0, r.stderr
        assert probe_services(lab).ok  # services up before the monitoring looks

        r = smsctl(lab, project, "probe", "--name", name, "--prometheus", str(prom), "--json", str(report), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"SMS-SERVICES OK - {name}: "), r.stdout
        samples = [s for fam in text_string_to_metric_families(prom.read_text()) for s in fam.samples]
        up = {(s.labels["service"], s.labels["probe"]): s.value for s in samples if s.name == "sms_services_probe_up"}
        assert up and all(v == 1 for v in up.values()), up
        assert {"slurmctld", "munge", "chrony", "rsyslog"} <= {svc for svc, _ in up}
        info = next(s for s in samples if s.name == "sms_services_image_info")
        assert info.labels["release"] == "3.5" and info.labels["build_date"], info

        # The fragment's own recipe for a stopped postfix (defs/postfix/fragment.yaml, breaks).
        stopped = next(b for b in project.fragments["postfix"].breaks if b.name == "stopped")
        prelude = "ctl() { " + " ".join(SUPERVISORCTL) + ' "$@"; }\n'
        assert lab.on_sms(["sh", "-ec", prelude + stopped.script])[0] == 0
        try:
            r = smsctl(lab, project, "probe", "--name", name, "--prometheus", str(prom), "--timeout", "4", env=env)
            assert r.returncode == 2, r.stdout + r.stderr
            assert r.stdout.startswith(f"SMS-SERVICES CRITICAL - {name}: postfix failed: smtp-deliver"), r.stdout
            samples = [s for fam in text_string_to_metric_families(prom.read_text()) for s in fam.samples]
            down = [s for s in samples if s.name == "sms_services_probe_up" and s.value == 0]
            assert [s.labels["service"] for s in down] == ["postfix"], down
        finally:
            lab.on_sms(["sh", "-ec", prelude + stopped.repair])

        r = smsctl(lab, project, "stop", "--name", name, env=env)
        assert r.returncode == 0, r.stderr
        r = smsctl(lab, project, "probe", "--name", name, env=env)
        assert r.returncode == 2 and "instance not running" in r.stdout, r.stdout + r.stderr
    finally:
        if lab.sms_pids():
            lab.stop_sms()
        lab.start_sms(lab.sms_sif)
    outcome = probe_services(lab)
    assert outcome.ok, outcome.failed


def test_two_hosts_never_write_one_overlay(apptainer, lab: Lab, project: Project, tmp_path: Path) -> None:
    """Host A (the lab's namespace) and host B (its own bridges, the same overlay file, as shared
    storage), each with its own smsctl state: B's start is refused while A runs, allowed after A's
    clean stop, and after A dies (instance and lease renewer SIGKILLed) only with --take-over."""
    from sms_services.runtime.instance import kill_instance
    from sms_services.runtime.lease import lease_path
    from sms_services.runtime.lease import read as read_lease

    key, sif = release_signed(apptainer, lab, tmp_path)
    host_b = lab.add_host("l")
    envs = {}
    for h in ("A", "B"):
        (tmp_path / h / "config").mkdir(parents=True)
        envs[h] = {"APPTAINER_CONFIG_FILE": str(lab.work / "apptainer.conf"), "SMS_HOST_ID": f"host{h}",
                   "SMS_STATE_DIR": str(tmp_path / h / "state"), "SMS_CONFIG_DIR": str(tmp_path / h / "config")}

    def start(h: str, *extra: str) -> subprocess.CompletedProcess:
        return smsctl_start(lab, project, sif, f"lease{h}", "--key", str(key), *extra, env=envs[h],
                            host=host_b if h == "B" else "")

    def stop(h: str) -> subprocess.CompletedProcess:
        return smsctl(lab, project, "stop", "--name", f"lease{h}", env=envs[h], host=host_b if h == "B" else "")

    lab.stop_sms()
    try:
        r = start("A")
        assert r.returncode == 0, r.stderr
        assert read_lease(lab.sms_overlay).holder == "hostA"
        r = start("B")
        assert r.returncode == 2 and "held by hostA" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not instance_pids(apptainer, "leaseB")

        assert stop("A").returncode == 0
        assert not lease_path(lab.sms_overlay).exists()
        r = start("B")
        assert r.returncode == 0, r.stderr  # a clean stop frees the overlay for the other host
        assert stop("B").returncode == 0

        assert start("A").returncode == 0
        held = read_lease(lab.sms_overlay)
        os.kill(held.renewer, 9)  # host A dies: every process of it, the renewer too
        kill_instance(apptainer, "leaseA", lab.sms_overlay)
        r = start("B")
        assert r.returncode == 2 and "--take-over" in r.stderr, r.stderr
        t = time.monotonic()
        r = start("B", "--take-over")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t >= 2 * held.interval and "took over the lease of hostA" in r.stderr, r.stderr
        assert read_lease(lab.sms_overlay).holder == "hostB"
        r = smsctl(lab, project, "probe", "--name", "leaseB", env=envs["B"], host=host_b)
        assert r.returncode == 0, r.stdout + r.stderr  # host B's SMS-services serves the cluster
        assert stop("B").returncode == 0
    finally:
        for h in ("A", "B"):
            if instance_pids(apptainer, f"lease{h}"):
                kill_instance(apptainer, f"lease{h}", lab.sms_overlay)
        lease_path(lab.sms_overlay).unlink(missing_ok=True)
        subprocess.run(["ip", "netns", "delete", host_b], capture_output=True)
        lab.start_sms(lab.sms_sif)
    outcome = probe_services(lab)
    assert outcome.ok, outcome.failed


def test_the_boot_unit_brings_it_back_after_power_loss_and_refuses_a_damaged_overlay(
        apptainer, lab: Lab, project: Project, tmp_path: Path) -> None:
    """What `smsctl unit` writes, run as systemd would (ExecStart/ExecStop with its Environment,
    no --key: the host's trusted/ folder): after every process of the instance is SIGKILLed
    (power loss) it starts again, e2fsck first, and the running job finishes; a damaged
    overlay is refused in one line until `smsctl overlay repair`; ExecStop frees the overlay."""
    from sms_services.runtime.instance import instance_list, kill_instance
    from sms_services.runtime.lease import lease_path
    from sms_services.runtime.lease import read as read_lease
    from sms_services.runtime.units import exec_lines

    key, sif = release_signed(apptainer, lab, tmp_path)
    (tmp_path / "config/trusted").mkdir(parents=True)
    shutil.copyfile(f"{key}.pub", tmp_path / "config/trusted/release.pub")
    env = {"APPTAINER_CONFIG_FILE": str(lab.work / "apptainer.conf"), "SMS_STATE_DIR": str(tmp_path / "state"),
           "SMS_CONFIG_DIR": str(tmp_path / "config")}
    name = lab.sms_instance
    lab.stop_sms()
    try:
        r = smsctl_start(lab, project, sif, name, env=env)
        assert r.returncode == 0, r.stderr
        r = smsctl(lab, project, "unit", "--name", name, "--out", "-", env=env)
        assert r.returncode == 0, r.stderr
        unit = r.stdout
        lines = exec_lines(unit)
        unit_env = dict(line.split("=", 2)[1:] for line in unit.splitlines() if line.startswith("Environment="))
        assert unit_env["SMS_STATE_DIR"] == str(tmp_path / "state")
        pid_file = Path(next(line for line in unit.splitlines() if line.startswith("PIDFile="))[len("PIDFile="):])

        def run(which: str) -> subprocess.CompletedProcess:
            """As systemd runs it: the unit's argv and Environment (plus the lab's Apptainer config)."""
            return subprocess.run(["nsenter", f"--net=/run/netns/{lab.name}", *lines[which]], capture_output=True,
                                  text=True, timeout=600, cwd="/", env={**os.environ, **env, **unit_env})

        r = run("ExecStop")
        assert r.returncode == 0, r.stderr
        r = run("ExecStart")
        assert r.returncode == 0, r.stderr
        assert int(pid_file.read_text()) == instance_list(apptainer, name)[name]  # systemd's main PID
        job = submit(lab, 30, "across-power-loss")
        time.sleep(3)
        os.kill(read_lease(lab.sms_overlay).renewer, 9)  # the host dies: every process
        kill_instance(apptainer, name, lab.sms_overlay)
        r = run("ExecStart")  # Restart=on-failure, or the next boot
        assert r.returncode == 0, r.stderr
        assert "e2fsck clean" in r.stdout, r.stdout
        assert finished_ok(lab, job, "across-power-loss", timeout=120) == ""
        r = smsctl(lab, project, "probe", "--name", name, env=env)
        assert r.returncode == 0, r.stdout + r.stderr

        assert run("ExecStop").returncode == 0
        assert not lease_path(lab.sms_overlay).exists()
        debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
        subprocess.run([debugfs, "-w", "-R", "set_inode_field /upper links_count 9", str(lab.sms_overlay)],
                       check=True, capture_output=True)
        r = run("ExecStart")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "filesystem has errors" in r.stderr and f"smsctl overlay repair --name {name}" in r.stderr
        assert not instance_list(apptainer, name) and not lease_path(lab.sms_overlay).exists()
        r = smsctl(lab, project, "overlay", "repair", "--name", name, env=env)
        assert r.returncode == 0 and "backup before repair" in r.stdout and "Fix? yes" in r.stdout, r.stdout
        r = run("ExecStart")
        assert r.returncode == 0, r.stderr
        r = smsctl(lab, project, "probe", "--name", name, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert run("ExecStop").returncode == 0 and not instance_list(apptainer, name)
    finally:
        if lab.sms_pids():
            lab.stop_sms()
        lease_path(lab.sms_overlay).unlink(missing_ok=True)
        Path(f"/run/sms-services/{name}.pid").unlink(missing_ok=True)
        lab.start_sms(lab.sms_sif)
    outcome = probe_services(lab)
    assert outcome.ok, outcome.failed


def test_move_to_a_second_host_keeps_a_running_job(lab: Lab, project: Project) -> None:
    job = submit(lab, 15, "during-move")
    host = lab.add_host("b")
    report = cutover(lab, project, lab.sms_sif, trust=TRUST(), host=host, deadline=90)
    assert report.ok, report.reasons
    assert lab.host == host and lab.running_instances().count(lab.sms_instance) == 1
    # It really runs there: its interfaces live behind host b's bridges.
    ip = subprocess.run(["ip", "-n", host, "-o", "link", "show", "master", f"{lab.name}-p"],
                        capture_output=True, text=True).stdout
    assert "veth" in ip or "@" in ip, ip
    assert finished_ok(lab, job, "during-move") == ""
    back = cutover(lab, project, lab.sms_sif, trust=TRUST(), host="", deadline=90)
    assert back.ok and lab.host == ""


def test_power_loss_restart_keeps_slurm_state(lab: Lab) -> None:
    done = submit(lab, 1, "before-power-loss")
    assert finished_ok(lab, done, "before-power-loss") == ""
    running = submit(lab, 20, "across-power-loss")
    time.sleep(6)  # slurmctld has written its state (it does within seconds of a change)
    lab.kill_sms()
    assert lab.sms_instance not in lab.running_instances()
    lab.start_sms(lab.sms_sif)
    assert finished_ok(lab, running, "across-power-loss") == ""
    rc, out, _ = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i"])
    assert done in out.split()
    outcome = probe_services(lab, ready_timeout=90, phase="after-kill")
    assert outcome.ok, outcome.failed
    nxt = submit(lab, 0, "after-power-loss")
    assert int(nxt) > int(running)  # job ids continue: the state was loaded, not reset


def test_munged_outlives_slurmctld_at_a_stop(lab: Lab) -> None:
    """slurmctld's last RPCs at its exit (job launches among them) each need a munge
    credential: the instance's stop ends munged only after slurmctld has exited. Here
    slurmctld is slow to exit (as with a large state on a busy host): it is stopped
    (SIGSTOP) when the instance's stop begins, and let go 2 s later."""
    pids = {comm(p): p for p in instance_pids(lab.apptainer, lab.sms_instance)}
    ended_at: dict[str, float] = {}
    os.kill(pids["slurmctld"], signal.SIGSTOP)
    stopping = threading.Thread(target=lab.stop_sms)
    stopping.start()
    try:
        time.sleep(2)
        munged_waited = not ended(pids["munged"])
    finally:
        os.kill(pids["slurmctld"], signal.SIGCONT)
        while len(ended_at) < 2 and stopping.is_alive():
            for name in ("munged", "slurmctld"):
                if name not in ended_at and ended(pids[name]):
                    ended_at[name] = time.monotonic()
            time.sleep(0.002)
        stopping.join()
        lab.start_sms(lab.sms_sif)
    outcome = probe_services(lab, ready_timeout=90, phase="after-stop")
    assert outcome.ok, outcome.failed
    assert munged_waited, "munged was stopped while slurmctld still ran"
    assert set(ended_at) == {"munged", "slurmctld"}, ended_at
    assert ended_at["munged"] >= ended_at["slurmctld"], \
        f"munged ended {ended_at['slurmctld'] - ended_at['munged']:.3f} s first"


def test_a_full_overlay_is_named_and_its_state_survives(lab: Lab, project: Project) -> None:
    job = submit(lab, 0, "before-full")
    assert finished_ok(lab, job, "before-full") == ""
    # On the overlay (not /var/tmp: --contain gives the instance a private one).
    for n, bs in enumerate(("1M", "4k")):  # until ENOSPC, to the last block
        lab.on_sms(["dd", "if=/dev/zero", f"of=/var/spool/fill{n}", f"bs={bs}"], timeout=120)
    try:
        with pytest.raises(UserError, match=r"overlay .* is full"):
            cutover(lab, project, lab.sms_sif, trust=TRUST())
        rc, out, err = lab.on_sms(["dd", "if=/dev/zero", "of=/var/spool/one-more", "bs=1M", "count=1"])
        assert rc != 0 and "No space" in err, (rc, err)
    finally:
        assert lab.on_sms(["rm", "-f", "/var/spool/fill0", "/var/spool/fill1", "/var/spool/one-more"])[0] == 0
    after = submit(lab, 0, "after-full")
    assert finished_ok(lab, after, "after-full") == ""
    report = cutover(lab, project, lab.sms_sif, trust=TRUST(), deadline=90)  # state saved and loaded again
    assert report.ok, report.reasons
    rc, out, _ = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i"])
    assert {job, after} <= set(out.split())
    lab.stop_sms()
    fsck = subprocess.run(["e2fsck", "-fn", str(lab.sms_overlay)], capture_output=True, text=True)
    lab.start_sms(lab.sms_sif)
    assert fsck.returncode == 0, fsck.stdout[-500:]
    assert probe_services(lab, ready_timeout=90).ok


def test_rehearsal_says_no_go_for_a_step_slurm_does_not_allow(
        apptainer, lab: Lab, project: Project, capsys) -> None:
    old, _ = prepare_images(project, apptainer, "3.0", None, say=lambda s: None)  # Slurm 22.05
    rc = cli.main(["rehearse", "--candidate", "--from", str(old), "--to", str(lab.sms_sif),
                   "--overlay", str(lab.sms_overlay)])
    err = capsys.readouterr().err
    assert rc == 1 and "NO-GO" in err
    assert "22.05 -> 24.11 skips 3 major release(s)" in err, err


def test_rehearsal_on_a_copy_of_the_live_overlay_says_go(apptainer, lab: Lab, project: Project) -> None:
    """A busy live cluster: a job finished, one running (a ghost in the rehearsal lab, whose
    nodes do not run it) and one pending (which must not start there)."""
    job = submit(lab, 1, "before-rehearsal")
    assert finished_ok(lab, job, "before-rehearsal") == ""
    running = submit(lab, 60, "during-rehearsal")
    rc, out, err = lab.on_node("c1", ["sbatch", "--parsable", "--begin=now+1hour", "--wrap", "true"])
    assert rc == 0, err
    pending = out.strip()
    time.sleep(6)  # slurmctld writes its state within seconds, not at once
    try:
        report = rehearse(project, apptainer, lab.sms_sif, lab.sms_overlay, old_sif=lab.sms_sif, trust=TRUST(),
                          name="smsreh")
        assert report.go, report.reasons
        for j in (job, running, pending):
            assert j in report.jobs_before and j in report.jobs_after, (j, report.jobs_before, report.jobs_after)
        assert report.nodes_after == report.nodes_before == ["c1", "c2"]
        assert report.cutover["ok"] and report.cutover["gap_s"] is not None
        # The live lab never noticed: its job still runs, its pending job still waits.
        states = lab.on_sms(["squeue", "-h", "-j", f"{running},{pending}", "-o", "%i %T"])[1].split()
        assert states == [running, "RUNNING", pending, "PENDING"] or \
            states == [pending, "PENDING", running, "RUNNING"], states
    finally:
        lab.on_sms(["scancel", running, pending])
    assert probe_services(lab, ready_timeout=30).ok


@pytest.fixture(scope="module")
def sif_36(apptainer, project: Project) -> Path:
    sms, _ = prepare_images(project, apptainer, "3.6", None, say=lambda s: None)
    return sms


def test_rehearsal_says_go_for_24_11_to_26_05(apptainer, lab: Lab, project: Project, sif_36: Path) -> None:
    report = rehearse(project, apptainer, sif_36, lab.sms_overlay, old_sif=lab.sms_sif, trust=TRUST(),
                      name="smsreh")
    assert report.go, report.reasons
    assert report.cutover["new_release"] == "3.6" and report.nodes_after == ["c1", "c2"]


def test_release_upgrade_24_11_to_26_05_keeps_a_running_job(lab: Lab, project: Project, sif_36: Path) -> None:
    """Trixie's Slurm 24.11 to sid's 26.05, whose image numbers munge, postfix and chrony differently."""
    job = submit(lab, 20, "during-upgrade")
    time.sleep(2)
    report = cutover(lab, project, sif_36, trust=TRUST(), deadline=120)
    assert report.ok, report.reasons + [r.detail for r in report.results if not r.ok]
    assert lab.release == "3.6"
    rc, out, _ = lab.on_sms(["scontrol", "--version"])
    assert "26.05" in out, out
    assert finished_ok(lab, job, "during-upgrade") == ""


def test_backup_under_load_restores_into_a_fresh_instance(lab: Lab, tmp_path: Path) -> None:
    ghost = submit(lab, 14, "ghost")  # running at the backup, finished by the restore
    submitted: list[str] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        while not stop.is_set():
            rc, out, _ = lab.on_node("c2", ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"])
            if rc == 0:
                submitted.append(out.strip())

    load = threading.Thread(target=keep_submitting)
    load.start()
    try:
        time.sleep(3)
        early = list(submitted)
        time.sleep(6)  # slurmctld writes its state within seconds of a change, not at once
        under_load = backup(lab.sms_overlay, tmp_path / "under-load", keep=1)
        time.sleep(2)
    finally:
        stop.set()
        load.join()
    assert early, "no job was submitted before the backup"
    assert finished_ok(lab, ghost, "ghost") == ""
    assert under_load.frozen_s < 5 and under_load.stored_bytes < under_load.overlay_bytes
    for _ in range(3):
        b = backup(lab.sms_overlay, tmp_path / "backups", keep=2)
    assert len(list((tmp_path / "backups").glob("*.img"))) == 2  # retention
    b = under_load  # the one restored below: the ghost job was running when it was taken

    # A corrupted backup is refused and leaves the target alone.
    bad = tmp_path / "bad.img"
    shutil.copyfile(b.image, bad)
    shutil.copyfile(b.record, tmp_path / "bad.img.json")
    with open(bad, "r+b") as fh:
        fh.seek(1_100_000)
        fh.write(b"\xff" * 16)
    target = tmp_path / "restored.img"
    with pytest.raises(UserError, match="CORRUPTED"):
        restore(bad, target)
    assert not target.exists()

    # A fresh instance on the restored overlay has every job the controller had saved.
    assert cli.main(["restore", b.image, "--overlay", str(target)]) == 0
    check_backup(Path(b.image))
    lab.stop_sms()
    live = lab.sms_overlay
    lab.sms_overlay = target
    try:
        lab.start_sms(lab.sms_sif)
        # The restored controller remembers the job as running, which its node finished
        # long ago: the node stays allocated (measured: for more than 15 minutes) until
        # reconcile asks the node and cancels it.
        assert probe_services(lab, only={"slurmctld"}, ready_timeout=60, skip={"slurm-nodes-idle", "slurm-srun",
                              "slurm-sbatch", "slurm-job-mail"}).ok
        state = lab.on_sms(["squeue", "-h", "-j", ghost, "-o", "%T"])[1].strip()
        assert state == "RUNNING", (ghost, state, lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i %T"])[1][-400:])
        found = reconcile(lab)
        # The ghost job, and any of the load's trivial jobs that ran at the backup's moment
        # (seen in a fresh-clone run: one did): every one of them is a ghost now, nothing else.
        assert ghost in found.ghosts and set(found.ghosts) - {ghost} <= set(submitted), (found, ghost)
        assert not found.unknown, found
        # Not new jobs: the restored controller hands out again the job ids the lost one
        # used after the backup, and the nodes refuse those for a while (see the README).
        outcome = probe_services(lab, ready_timeout=90, phase="restored",
                                 skip={"slurm-srun", "slurm-sbatch", "slurm-job-mail"})
        assert outcome.ok, [(r.probe, r.detail) for r in outcome.results if not r.ok]
        assert "slurm-nodes-idle" in [r.probe for r in outcome.results]
        rc, out, _ = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i"])
        ids = set(out.split())
        assert set(early) <= ids, sorted(set(early) - ids)
    finally:
        lab.stop_sms()
        lab.sms_overlay = live
        lab.start_sms(lab.sms_sif)  # (last test: the live controller and the nodes disagree after the detour)
