"""Production, day one: `smsctl init` then `smsctl start` on a fresh overlay, as the README says.

The lab provides the infrastructure host (its namespace, with bridges of its own),
the compute nodes and SMS-mgmt; smsctl runs there as an admin would run it (see
test_upgrade.smsctl). The lab's own SMS-services is stopped first: the one under
test is the instance `smsctl start` starts on the overlay `smsctl init` made.

The migration's old SMS is a monolith (``lab.monolith``): slurmctld and munged on a
host of their own holding the controller's address, from their own ROOT folder,
which `init --from-sms` then reads; the refused imports use copies of that ROOT
with one thing wrong each. One lab for the whole module.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from jobs import finished_ok, submit
from test_upgrade import smsctl

from sms_services.image.accounts import owner_of
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.monolith import Monolith
from sms_services.lab.verify import open_lab, probe_services
from sms_services.trust.keys import create_keypair
from sms_services.trust.signing import sign

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(apptainer, project: Project) -> Iterator[Lab]:
    with open_lab(project, apptainer, "3.5", name="smsinit35") as lab:
        lab.stop_sms()  # the instance under test is smsctl's
        yield lab


@pytest.fixture(scope="module")
def admin(apptainer, lab: Lab, tmp_path_factory) -> dict[str, Path]:
    """What an admin holds: a release-signed SIF, its public key, the cluster's munge key."""
    work = tmp_path_factory.mktemp("admin")
    key = work / "release"
    create_keypair(key)
    sif = work / "sms-services-3.5.sif"
    subprocess.run(["cp", str(lab.sms_sif), str(sif)], check=True)
    sign(apptainer, sif, key, replaces=None)  # the lab image: built here, its build record proves it
    munge = work / "munge.key"
    munge.write_bytes(lab.munge_key)  # the key the lab's nodes hold
    munge.chmod(0o400)
    (work / "config").mkdir()
    return {"work": work, "key": key, "sif": sif, "munge": munge}


def run(lab: Lab, project: Project, admin: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    env = {"APPTAINER_CONFIG_FILE": str(lab.work / "apptainer.conf"), "SMS_STATE_DIR": str(admin["work"] / "state"),
           "SMS_CONFIG_DIR": str(admin["work"] / "config")}
    return smsctl(lab, project, *args, env=env)


def init_and_start(lab: Lab, project: Project, admin: dict[str, Path], site: Path, overlay: Path,
                   *init_args: str) -> None:
    r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(site), "--overlay", str(overlay),
            "--size", "1G", "--munge-key", str(admin["munge"]), "--key", str(admin["key"]), *init_args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "next: smsctl start" in r.stdout
    r = run(lab, project, admin, "start", str(admin["sif"]), "--name", lab.sms_instance, "--overlay", str(overlay),
            "--site", str(site), "--provision-bridge", f"{lab.name}-p", "--public-bridge", f"{lab.name}-u",
            "--bind", f"{lab.work}/hosts:/etc/hosts", "--bind", f"{lab.work}/resolv.conf:/etc/resolv.conf",
            "--key", str(admin["key"]))
    assert r.returncode == 0, r.stdout + r.stderr
    lab.sms_overlay = overlay  # the probes and the teardown follow the instance smsctl started


def stop(lab: Lab, project: Project, admin: dict[str, Path]) -> None:
    r = run(lab, project, admin, "stop", "--name", lab.sms_instance)
    assert r.returncode == 0 and not lab.sms_pids(), r.stderr


def test_init_then_start_on_a_fresh_overlay_passes_every_probe(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path]) -> None:
    overlay = admin["work"] / "sms.img"
    site = project.root / "overlays/lab/site.yaml"
    init_and_start(lab, project, admin, site, overlay)
    try:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, outcome.failed
        rc, out, err = lab.on_sms(["stat", "-c", "%U %a", "/etc/munge/munge.key", "/var/spool/slurmctld"])
        assert out.split("\n")[:2] == ["munge 400", "slurm 755"], (out, err)
        status = json.loads(run(lab, project, admin, "status", "--json").stdout)
        assert status[0]["running"] and status[0]["overlay"] == str(overlay)
    finally:
        stop(lab, project, admin)
    # Refused again without --force, and the overlay is the one that ran.
    before = overlay.stat().st_mtime_ns
    r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(site), "--overlay", str(overlay),
            "--new-munge-key", "--key", str(admin["key"]))
    assert r.returncode != 0 and "exists already" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert overlay.stat().st_mtime_ns == before
    fsck = subprocess.run(["e2fsck", "-fn", str(overlay)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout[-500:]
    # The munge key's owner is the image's munge account (the number init read from the image).
    uid, gid = owner_of(lab.passwd, "munge")
    stat = subprocess.run(["debugfs", "-R", "stat /upper/etc/munge/munge.key", str(overlay)],
                          capture_output=True, text=True).stdout
    assert re.search(rf"User:\s+{uid}\s+Group:\s+{gid}\s", stat) and "Mode:  0400" in stat, stat[:300]


@contextmanager
def mgmt_serves(lab: Lab, conf: str) -> Iterator[None]:
    """SMS-mgmt's Warewulf syncs slurm.conf to SMS-services (wwclient): a site with its own
    gives Warewulf the same one, or the next sync replaces it."""
    path = lab.work / "mgmt/etc/slurm/slurm.conf"
    before = path.read_text()
    path.write_text(conf)
    lab.mgmt_build()  # Warewulf 4 serves its prebuilt image until `wwctl overlay build`
    try:
        yield
    finally:
        path.write_text(before)
        lab.mgmt_build()


def own_site(lab: Lab, project: Project, folder: Path, slurm_conf: str, **more: object) -> Path:
    folder.mkdir(exist_ok=True)
    data = yaml.safe_load((project.root / "overlays/lab/site.yaml").read_text())
    data.update(slurm_conf="slurm.conf", slurm_files=["partitions.conf"], **more)
    (folder / "slurm.conf").write_text(slurm_conf)
    (folder / "partitions.conf").write_text("PartitionName=big Nodes=c1 Default=NO MaxTime=INFINITE State=UP\n")
    site = folder / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    return site


def test_the_sites_own_slurm_conf_is_checked_by_the_image_and_served(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path]) -> None:
    """A real cluster's slurm.conf: a second partition (an Include) and a node feature survive."""
    rendered = lab.site_files["/etc/slurm/slurm.conf"]
    conf = rendered.replace("NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000",
                            "NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000 Feature=fast")
    assert conf != rendered
    conf += "Include partitions.conf\n"
    overlay = admin["work"] / "own.img"

    # Slurm's own parser, from the image, refuses a key it does not know: one line, nothing written.
    bad = own_site(lab, project, admin["work"] / "bad", conf + "NoSuchOption=1\n")
    r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(bad), "--overlay", str(overlay),
            "--munge-key", str(admin["munge"]), "--key", str(admin["key"]))
    assert r.returncode != 0 and "the image's Slurm rejects it" in r.stderr and "NoSuchOption" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not overlay.exists() and not [p for p in admin["work"].iterdir() if p.name.startswith(".")]

    site = own_site(lab, project, admin["work"] / "own", conf)
    with mgmt_serves(lab, conf):
        init_and_start(lab, project, admin, site, overlay)
        served(lab, project, admin)


def served(lab: Lab, project: Project, admin: dict[str, Path]) -> None:
    """Every probe passes, and the partition and the feature are served and used."""
    try:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, outcome.failed
        rc, out, err = lab.on_node("c2", ["sinfo", "-h", "-N", "-o", "%P %N %f"])
        assert "big c1 fast" in out.split("\n") or "big c1 fast" in out, (out, err)
        job = submit(lab, 0, "own-conf")  # (on c1, in the default partition)
        assert finished_ok(lab, job, "own-conf") == ""
        rc, out, err = lab.on_node("c1", ["sbatch", "--parsable", "-p", "big", "-C", "fast", "-o", "/tmp/big.out",
                                          "--wrap", "echo big-finished"])
        assert rc == 0, err
        assert finished_ok(lab, out.strip(), "big") == ""
    finally:
        stop(lab, project, admin)


# --- migrating from a monolithic SMS (sms_services/lab/monolith.py) ----------------------
OLD_USERS = ["alice:x:2001:2001:Alice:/home/alice:/bin/bash"]


def monolith_conf(lab: Lab) -> str:
    """The old SMS's slurm.conf: the lab cluster's, tuned as a real one is (a node feature, a
    second partition in an included file), naming the controller SMS-services will become."""
    rendered = lab.site_files["/etc/slurm/slurm.conf"]
    conf = rendered.replace("NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000",
                            "NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000 Feature=fast")
    assert conf != rendered
    return ("# slurm.conf of the cluster's monolithic SMS (tuned by hand over the years)\n" + conf
            # Some of OpenHPC's own defaults (slurm.conf.ohpc), for the image's Slurm to take.
            + "PropagateResourceLimitsExcept=MEMLOCK\nLaunchParameters=use_interactive_step\n"
            + "JobCompType=jobcomp/filetxt\nJobCompLoc=/var/log/slurm/jobcomp.log\n"
            + "Include partitions.conf\n")


@pytest.fixture(scope="module")
def old_sms(lab: Lab, admin: dict[str, Path]) -> Monolith:
    """The old SMS's files, laid out once (its daemons start in the test that needs them)."""
    mono = Monolith(lab, admin["work"] / "old-sms-root")
    mono.lay_out({"slurm.conf": monolith_conf(lab), "cgroup.conf": lab.site_files["/etc/slurm/cgroup.conf"],
                  "partitions.conf": "PartitionName=big Nodes=c1 Default=NO MaxTime=INFINITE State=UP\n"},
                 OLD_USERS)
    return mono


def on_c2(lab: Lab, *command: str) -> str:
    """A Slurm command from a compute node: it asks whichever controller holds the address."""
    rc, out, err = lab.on_node("c2", list(command))
    assert rc == 0, (command, out, err)
    return out


def wait_job(lab: Lab, job: str, states: tuple[str, ...], timeout: float = 60) -> str:
    """``scontrol show job`` once the job is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.on_node("c2", ["scontrol", "-o", "show", "job", job])[1]
        if any(f"JobState={s} " in out for s in states) or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_migration_from_a_monolithic_sms_keeps_its_jobs_config_and_history(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path], old_sms: Monolith) -> None:
    """The README's move: the old SMS (slurmctld + munged on a host of their own, with the
    controller's address, their own slurm.conf and state folder) runs jobs; `init --from-sms
    ROOT --keep-slurm-conf --dry-run`; stop slurmctld and munged, give the address up; `init`
    for real; `smsctl start`. The running job finishes, the finished ones are still known, the
    partition and the feature are served, every probe passes. The gap is printed."""
    site = project.root / "overlays/lab/site.yaml"
    overlay = admin["work"] / "migrated.img"
    init = ["init", str(admin["sif"]), "--site", str(site), "--overlay", str(overlay), "--from-sms",
            str(old_sms.root), "--keep-slurm-conf", "--key", str(admin["key"])]
    with mgmt_serves(lab, monolith_conf(lab)):
        try:
            print(f"old SMS up, nodes idle under it: {old_sms.start()} s")
            assert "big c1 fast" in on_c2(lab, "sinfo", "-h", "-N", "-o", "%P %N %f")
            done = [submit(lab, 0, f"history{i}") for i in (1, 2)]
            for job in done:
                out = wait_job(lab, job, ("COMPLETED", "FAILED", "CANCELLED"))
                assert "JobState=COMPLETED" in out and "ExitCode=0:0" in out, out
            running = submit(lab, 30, "across-migration")
            assert "JobState=RUNNING" in wait_job(lab, running, ("RUNNING",))

            r = run(lab, project, admin, *init, "--dry-run")
            assert r.returncode == 0 and "dry run: nothing was written" in r.stdout, r.stdout + r.stderr
            assert "Slurm 24.11" in r.stdout and "munge key" in r.stdout and "partitions.conf" in r.stdout, r.stdout
            assert not overlay.exists()

            t_stop = old_sms.stop("slurmctld")  # systemctl stop slurmctld munge, on the old SMS
            old_sms.stop("munged")
            old_sms.release_address()
            t = time.monotonic()
            r = run(lab, project, admin, *init)
            assert r.returncode == 0, r.stdout + r.stderr
            t_init = time.monotonic() - t
            t = time.monotonic()
            r = run(lab, project, admin, "start", str(admin["sif"]), "--name", lab.sms_instance, "--overlay",
                    str(overlay), "--site", str(site), "--provision-bridge", f"{lab.name}-p", "--public-bridge",
                    f"{lab.name}-u", "--bind", f"{lab.work}/hosts:/etc/hosts", "--bind",
                    f"{lab.work}/resolv.conf:/etc/resolv.conf", "--key", str(admin["key"]))
            assert r.returncode == 0, r.stdout + r.stderr
            t_start = time.monotonic() - t
            lab.sms_overlay = overlay
            deadline = time.monotonic() + 60
            while "UP" not in lab.on_node("c1", ["scontrol", "ping"], timeout=10)[1]:
                assert time.monotonic() < deadline, "the new controller did not answer within 60 s"
                time.sleep(0.1)
            gap = time.monotonic() - t_stop
            print(f"migration gap (old slurmctld stopped -> SMS-services answers scontrol ping from c1): "
                  f"{gap:.1f} s (init --from-sms {t_init:.1f} s, smsctl start {t_start:.1f} s)")
            assert gap < 120  # far inside SlurmdTimeout (300 s): the nodes never noticed

            # The running job carried on under the new controller and finished with its output.
            assert "JobState=RUNNING" in on_c2(lab, "scontrol", "-o", "show", "job", running)
            assert finished_ok(lab, running, "across-migration") == ""
            # The queue's history: the finished jobs are still known, and job ids carry on.
            for job in done:
                out = on_c2(lab, "scontrol", "-o", "show", "job", job)
                assert "JobState=COMPLETED" in out and "ExitCode=0:0" in out, out
            # Owners moved by name: the key from the old SMS's munge (an EL number) to the image's.
            assert (old_sms.root / "etc/munge/munge.key").stat().st_uid != owner_of(lab.passwd, "munge")[0]
            rc, out, err = lab.on_sms(["stat", "-c", "%U %a", "/etc/munge/munge.key", "/var/spool/slurmctld/job_state"])
            assert out.split("\n")[:2] == ["munge 400", "slurm 600"], (out, err)
            # The old SMS's own configuration is what the nodes are served.
            assert "big c1 fast" in on_c2(lab, "sinfo", "-h", "-N", "-o", "%P %N %f")
            assert "AvailableFeatures=fast" in on_c2(lab, "scontrol", "show", "node", "c1")
            rc, out, err = lab.on_node("c1", ["sbatch", "--parsable", "-p", "big", "-C", "fast", "-o",
                                              "/tmp/big.out", "--wrap", "echo big-finished"])
            assert rc == 0, err
            assert int(out.strip()) > int(running)
            assert finished_ok(lab, out.strip(), "big") == ""
            outcome = probe_services(lab, ready_timeout=90)
            assert outcome.ok, outcome.failed
        finally:  # each step on its own: a cleanup that fails must not hide the test's failure
            steps = [*(lambda n=name: old_sms.stop(n) for name in reversed(old_sms.running())),
                     old_sms.release_address, lambda: lab.sms_pids() and stop(lab, project, admin)]
            for step in steps:
                with contextlib.suppress(Exception):  # the lab's teardown kills what is left
                    step()


@pytest.fixture(scope="module")
def old_root(old_sms: Monolith) -> Path:
    """The old SMS's ROOT with the Slurm state its slurmctld saved when it stopped (run here
    when the migration test did not run first)."""
    if not old_sms.has_state():
        try:
            old_sms.start()
        finally:
            for name in reversed(old_sms.running()):
                old_sms.stop(name)
            old_sms.release_address()
    assert old_sms.has_state()
    return old_sms.root


def state_major(root: Path, major: str) -> None:
    """Make the saved state claim another Slurm: the 16-bit protocol version after the
    PROTOCOL_VERSION header of each state file (high byte: 35 for 20.02, one more per major)."""
    from sms_services import slurm

    for name in ("job_state", "node_state", "part_state"):
        path = root / "var/spool/slurmctld" / name
        data = bytearray(path.read_bytes())
        assert data[4:21] == b"PROTOCOL_VERSION\0", data[:24]
        data[21:23] = ((35 + slurm.MAJORS.index(major)) << 8).to_bytes(2, "big")
        path.write_bytes(bytes(data))


def edit_conf(root: Path, old: str, new: str) -> None:
    path = root / "etc/slurm/slurm.conf"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def outside_state(root: Path) -> None:
    (root / "srv/slurm").mkdir(parents=True)
    (root / "var/spool/slurmctld").rename(root / "srv/slurm/state")
    edit_conf(root, "StateSaveLocation=/var/spool/slurmctld", "StateSaveLocation=/srv/slurm/state")


@pytest.mark.parametrize("change, expect", [
    pytest.param(lambda r: edit_conf(r, "SlurmctldHost=sms-services(198.18.0.2)", "SlurmctldHost=oldsms(198.18.0.9)"),
                 "refused: .*/etc/slurm/slurm.conf: SlurmctldHost=oldsms\\(198.18.0.9\\) must name SMS-services",
                 id="wrong-host"),
    pytest.param(lambda r: state_major(r, "22.05"),
                 "refused: .*/var/spool/slurmctld: state of Slurm 22.05, the image runs 24.11.*skips", id="old-state"),
    pytest.param(lambda r: state_major(r, "25.05"),
                 "refused: .*/var/spool/slurmctld: state of Slurm 25.05, the image runs 24.11.*older than 25.05",
                 id="newer-state"),
    pytest.param(outside_state, "refused: .*StateSaveLocation=/srv/slurm/state is outside the state paths",
                 id="state-outside"),
    pytest.param(lambda r: edit_conf(r, "SlurmctldParameters=enable_configless\n", ""),
                 "refused: .*SlurmctldParameters lacks enable_configless", id="not-configless"),
])
def test_an_import_that_cannot_work_is_refused_and_writes_nothing(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path], old_root: Path, tmp_path: Path,
        change: Callable[[Path], None], expect: str) -> None:
    """Each on a copy of the old SMS's real ROOT with one thing wrong: exit non-zero, one line
    naming it, nothing written."""
    root = tmp_path / "root"
    shutil.copytree(old_root, root, symlinks=True, ignore=shutil.ignore_patterns("*.socket.*"))
    change(root)
    folder = tmp_path / "target"
    folder.mkdir()
    r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(project.root / "overlays/lab/site.yaml"),
            "--overlay", str(folder / "overlay.img"), "--from-sms", str(root), "--keep-slurm-conf",
            "--key", str(admin["key"]))
    refused = [line for line in r.stdout.splitlines() if line.startswith("refused: ")]
    assert r.returncode != 0 and len(refused) == 1 and re.search(expect, refused[0]), r.stdout + r.stderr
    assert r.stderr.strip().endswith("1 problem(s) above; nothing was written"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("case", ["rejected-by-slurm", "missing-root"])
def test_bad_input_to_an_import_is_one_line_and_writes_nothing(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path], old_root: Path, tmp_path: Path,
        case: str) -> None:
    """A kept slurm.conf the image's Slurm rejects (its own parser says so), a ROOT that is not there."""
    root = tmp_path / "root"
    if case == "rejected-by-slurm":
        shutil.copytree(old_root, root, symlinks=True, ignore=shutil.ignore_patterns("*.socket.*"))
        with open(root / "etc/slurm/slurm.conf", "a") as fh:
            fh.write("NoSuchOption=1\n")
        expect = "slurm.conf: the image's Slurm rejects it: .*NoSuchOption"
    else:
        expect = f"{root}: no such folder; give the old SMS's root filesystem"
    folder = tmp_path / "target"
    folder.mkdir()
    r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(project.root / "overlays/lab/site.yaml"),
            "--overlay", str(folder / "overlay.img"), "--from-sms", str(root), "--keep-slurm-conf",
            "--key", str(admin["key"]))
    assert r.returncode != 0 and re.search(expect, r.stderr), r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(folder.iterdir()) == []
