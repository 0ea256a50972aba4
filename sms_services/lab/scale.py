"""A lab of many nodes and many jobs: what the scale test and the load bench share.

``scale_lab`` opens the lab site with N nodes (the lab's c1, c2 as full instances
that run real jobs, the rest in the node farm) and waits until each has registered.
The job helpers submit trivial batch jobs from SMS-services in one shell (one
``apptainer exec`` for thousands of ``sbatch``) and read the queue back.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.farm import scale_nodes, scale_site_text
from sms_services.lab.verify import open_lab

# Wide enough for 1,000 nodes (a Linux bridge takes at most 1,024 ports).
SCALE_NETWORK = "198.18.0.0/21"


def write_scale_site(project: Project, nodes: int, folder: Path, values: dict | None = None) -> Path:
    """The lab site with ``nodes`` nodes; ``values`` set further site variables (a bench's tuning)."""
    base = (project.root / "overlays/lab/site.yaml").read_text()
    site = folder / "site.yaml"
    text = scale_site_text(base, scale_nodes(yaml.safe_load(base)["nodes"], SCALE_NETWORK, nodes), SCALE_NETWORK)
    if values:
        text = yaml.safe_dump({**yaml.safe_load(text), **values}, sort_keys=False)
    site.write_text(text)
    return site


@contextmanager
def scale_lab(project: Project, apptainer: Apptainer, release: str, nodes: int, *, job_nodes: int = 2,
              name: str = "smsscale", sif: Path | None = None, compute_sif: Path | None = None,
              site_values: dict | None = None, ready_timeout: float = 180,
              say: Callable[[str], None] = lambda s: None) -> Iterator[Lab]:
    """A lab with ``nodes`` registered nodes (``job_nodes`` of them full instances); ``sif`` and
    ``compute_sif`` given together: no image is built; ``site_values``: further site variables."""
    if not 1 <= job_nodes <= nodes:
        raise UserError(f"--job-nodes {job_nodes}: give 1 to {nodes} (the number of nodes)")
    folder = Path(tempfile.mkdtemp(prefix=f"{name}site"))  # not "<name>-": the lab removes those
    try:
        site = write_scale_site(project, nodes, folder, site_values)
        t = time.monotonic()
        with open_lab(project, apptainer, release, sif=sif, compute_sif=compute_sif, site_path=site, name=name,
                      job_nodes=job_nodes, say=say) as lab:
            lab.timings["open_lab_s"] = round(time.monotonic() - t, 2)  # with image checks (and builds)
            t = time.monotonic()
            wait_nodes(lab, nodes, ready_timeout, say=say)
            lab.timings["registration_s"] = round(time.monotonic() - t, 2)  # every slurmd started -> all idle
            # The lab's own start (network, SMS-services, nodes, farm) to every node idle.
            lab.timings["start_to_all_idle_s"] = round(sum(lab.timings.get(k, 0) for k in (
                "lab_up_s", "sms_instance_start_s", "job_nodes_start_s", "farm_start_s", "registration_s")), 2)
            yield lab
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def node_states(lab: Lab) -> dict[str, str]:
    rc, out, err = lab.on_sms(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=60)
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def wait_nodes(lab: Lab, count: int, timeout: float, say: Callable[[str], None] = lambda s: None) -> None:
    """Until ``count`` nodes are idle; one line naming those that are not when it runs out."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        states = node_states(lab)
        idle = sum(1 for s in states.values() if s == "idle")
        if idle != last:
            say(f"{idle}/{count} nodes idle")
            last = idle
        if idle >= count:
            return
        if time.monotonic() > deadline:
            bad = sorted(n for n, s in states.items() if s != "idle")
            raise UserError(f"lab: {count - idle} of {count} nodes not idle after {timeout:.0f} s: "
                            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}")
        time.sleep(1)


def submit_jobs(lab: Lab, count: int, *, hold: bool = False, exclude: list[str] | None = None,
                parallel: int = 4, timeout: float = 1800, minutes: int = 10) -> tuple[list[str], float]:
    """``count`` trivial batch jobs (``true``, output discarded) from SMS-services, ``parallel``
    submitters at once; their ids and the seconds the submissions took.

    A time limit of ``minutes``, not one: with 1 minute, 44 of the 250 jobs running across a
    cutover in one run ended TIMEOUT. Not a late end report (slurmstepd retries it each second
    for MessageTimeout, so it reaches the new controller about a second after it listens).
    Most likely the controller held them RUNNING with no slurmstepd reporting them, and a
    1-minute limit came before the node registration that would requeue them; two reruns did
    not reproduce it (README, Scale)."""
    args = ["--parsable", "-t", str(minutes), "-o", "/dev/null", "-J", "trivial"]
    if hold:
        args.append("-H")
    if exclude:
        args.append(f"--exclude={','.join(exclude)}")
    script = (f"seq {count} | xargs -P {parallel} -I@ sbatch {' '.join(args)} --wrap true")
    t = time.monotonic()
    rc, out, err = lab.on_sms(["sh", "-c", script], timeout=timeout)
    seconds = time.monotonic() - t
    ids = [line.split(";")[0] for line in out.split() if line.split(";")[0].isdigit()]
    if len(ids) != count:
        raise UserError(f"submitted {len(ids)} of {count} jobs: {err.strip()[-300:]}")
    return ids, seconds


def job_states(lab: Lab) -> dict[str, str]:
    """Every job the controller knows (queued, running, recently finished): id -> state."""
    rc, out, err = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i %T"], timeout=120)
    if rc != 0:
        raise UserError(f"squeue failed: {err.strip()[:200]}")
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def wait_jobs(lab: Lab, ids: list[str], timeout: float, say: Callable[[str], None] = lambda s: None,
              poll: float = 2) -> dict[str, str]:
    """Until every job in ``ids`` has ended (or ``timeout``): id -> final state."""
    deadline = time.monotonic() + timeout
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "PREEMPTED"}
    last = -1
    while True:
        states = job_states(lab)
        mine = {i: states.get(i, "MISSING") for i in ids}
        done = sum(1 for s in mine.values() if s in ended)
        if done != last:
            say(f"{done}/{len(ids)} jobs ended")
            last = done
        if done == len(ids) or time.monotonic() > deadline:
            return mine
        time.sleep(poll)
