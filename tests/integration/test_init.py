"""Production, day one: `smsctl init` then `smsctl start` on a fresh overlay, as the README says.

The lab provides the infrastructure host (its namespace, with bridges of its own),
the compute nodes and SMS-mgmt; smsctl runs there as an admin would run it (see
test_upgrade.smsctl). The lab's own SMS-services is stopped first: the one under
test is the instance `smsctl start` starts on the overlay `smsctl init` made.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from test_upgrade import finished_ok, smsctl, submit

from sms_services.image.accounts import owner_of
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
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


def test_migration_from_a_running_sms_keeps_its_jobs_config_and_history(
        apptainer, lab: Lab, project: Project, admin: dict[str, Path]) -> None:
    """The old SMS here is an instance with a slurm.conf of its own (a second partition, a node
    feature) and jobs running; its root is read from its overlay, mounted read-only. Then:
    init --from-sms --keep-slurm-conf, stop the old controller, start SMS-services."""
    rendered = lab.site_files["/etc/slurm/slurm.conf"]
    conf = rendered.replace("NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000",
                            "NodeName=c1 NodeAddr=198.18.0.11 CPUs=1 RealMemory=1000 Feature=fast")
    conf += "Include partitions.conf\n"
    old_overlay, new_overlay = admin["work"] / "old-sms.img", admin["work"] / "migrated.img"
    root = admin["work"] / "old-root"
    root.mkdir()
    with mgmt_serves(lab, conf):
        migrate(lab, project, admin, conf, old_overlay, new_overlay, root)


def migrate(lab: Lab, project: Project, admin: dict[str, Path], conf: str, old_overlay: Path, new_overlay: Path,
            root: Path) -> None:
    site = project.root / "overlays/lab/site.yaml"
    init_and_start(lab, project, admin, own_site(lab, project, admin["work"] / "old", conf), old_overlay)
    try:
        assert probe_services(lab, only={"slurmctld"}, ready_timeout=90).ok
        done = submit(lab, 0, "before-migration")
        assert finished_ok(lab, done, "before-migration") == ""
        running = submit(lab, 30, "across-migration")
        time.sleep(6)  # slurmctld saves its state within seconds of a change
        # The old SMS stops its controller (a stopped instance: its overlay is consistent).
        t_stop = time.monotonic()
        stop(lab, project, admin)
        subprocess.run(["mount", "-o", "loop,ro,noload", str(old_overlay), str(root)], check=True)
        old_root = root / "upper"

        r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(site), "--overlay", str(new_overlay),
                "--from-sms", str(old_root), "--keep-slurm-conf", "--dry-run", "--key", str(admin["key"]))
        assert r.returncode == 0 and "dry run: nothing was written" in r.stdout, r.stdout + r.stderr
        assert "Slurm 24.11" in r.stdout and "munge key" in r.stdout, r.stdout
        assert not new_overlay.exists()
        r = run(lab, project, admin, "init", str(admin["sif"]), "--site", str(site), "--overlay", str(new_overlay),
                "--from-sms", str(old_root), "--keep-slurm-conf", "--key", str(admin["key"]))
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(lab, project, admin, "start", str(admin["sif"]), "--name", lab.sms_instance, "--overlay",
                str(new_overlay), "--site", str(site), "--provision-bridge", f"{lab.name}-p", "--public-bridge",
                f"{lab.name}-u", "--bind", f"{lab.work}/hosts:/etc/hosts", "--bind",
                f"{lab.work}/resolv.conf:/etc/resolv.conf", "--key", str(admin["key"]))
        assert r.returncode == 0, r.stdout + r.stderr
        lab.sms_overlay = new_overlay
        deadline = time.monotonic() + 60
        while lab.on_node("c1", ["scontrol", "ping"])[1].count("UP") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        gap = round(time.monotonic() - t_stop, 1)
        print(f"migration gap (old controller stopped -> new one answers, init included): {gap} s")
        assert gap < 120
        assert finished_ok(lab, running, "across-migration") == ""
        rc, out, _ = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i"])
        assert done in out.split(), out  # the queue's history came along
        rc, out, err = lab.on_node("c2", ["sinfo", "-h", "-N", "-o", "%P %N %f"])
        assert "big c1 fast" in out, (out, err)
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, outcome.failed
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)
        if lab.sms_pids():
            stop(lab, project, admin)
