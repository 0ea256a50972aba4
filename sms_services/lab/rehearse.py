"""Go or no-go for a cutover, decided on a copy of the live overlay.

The live overlay is copied (never opened: a running instance's is copied frozen),
the old image is started on the copy in a lab to read the queue and node list
the way the live controller has them, then the lab cuts over to the new image
exactly as `smsctl cutover` would, and the result is compared. Each reason for
a no-go is named; a step Slurm does not allow is a no-go before anything starts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.verify import open_lab, prepare_images
from sms_services.runtime.cutover import CutoverReport, cutover, step_reasons
from sms_services.runtime.overlay import copy_overlay, frozen
from sms_services.trust.signing import Trust, check


@dataclass
class Rehearsal:
    old_sif: str
    new_sif: str
    overlay: str
    go: bool = False
    reasons: list[str] = field(default_factory=list)
    jobs_before: list[str] = field(default_factory=list)
    jobs_after: list[str] = field(default_factory=list)
    nodes_before: list[str] = field(default_factory=list)
    nodes_after: list[str] = field(default_factory=list)
    cutover: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Which of the site's nodes ran as full lab nodes and which as node-farm slurmd.
    instance_nodes: list[str] = field(default_factory=list)
    farm_nodes: list[str] = field(default_factory=list)
    memory_mib: dict = field(default_factory=dict)  # the node farm's (RSS, PSS)

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_state(lab: Lab) -> tuple[list[str], list[str]]:
    """The controller's job ids (queued, running and recently finished) and its node names."""
    rc, out, err = lab.on_sms(["squeue", "-h", "-t", "all", "-o", "%i"], timeout=30)
    if rc != 0:
        raise UserError(f"the controller did not list its jobs: {err.strip()[:200]}")
    jobs = sorted(out.split(), key=int)
    rc, out, err = lab.on_sms(["sinfo", "-h", "-N", "-o", "%N"], timeout=30)
    nodes = sorted(set(out.split())) if rc == 0 else []
    return jobs, nodes


def quiesce(lab: Lab, timeout: float = 60) -> None:
    """Keep the copy's jobs off the rehearsal lab's nodes, which are not the live ones.

    What the copy says is running runs on the live nodes: here those jobs are ghosts
    holding nodes until Slurm gives up on them (about a minute). What is pending
    would start on the lab's nodes. Cancel the one, hold the other (their ids stay
    in the queue for the comparison) and wait for idle nodes, so the probes test
    the new controller and not Slurm's clean-up.
    """
    def ids(states: str) -> list[str]:
        return lab.on_sms(["squeue", "-h", "-t", states, "-o", "%i"])[1].split()

    pending = ids("PD")
    if pending:
        lab.on_sms(["scontrol", "hold", ",".join(pending)])
    running = ids("R,CG,S")
    if running:
        lab.on_sms(["scancel", *running])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = lab.on_sms(["sinfo", "-h", "-N", "-o", "%T"])[1].split()
        if states and all(s == "idle" for s in states):
            return
        time.sleep(0.5)


def rehearse(project: Project, apptainer: Apptainer, new_sif: Path, overlay: Path, *, old_sif: Path,
             trust: Trust, site_path: Path | None = None, name: str = "smsrehearse", deadline: float = 120,
             job_nodes: int | None = 2, say: Callable[[str], None] = lambda s: None) -> Rehearsal:
    start = time.monotonic()
    report = Rehearsal(str(old_sif), str(new_sif), str(overlay))
    if not overlay.is_file():
        raise UserError(f"{overlay}: no such overlay")
    for sif in (old_sif, new_sif):
        if not sif.is_file():
            raise UserError(f"{sif}: no such SIF")
    old_labels, new_labels = apptainer.labels(old_sif), apptainer.labels(new_sif)
    old_release = old_labels.get("sms-services.release", "")
    if old_release not in project.matrix.releases:
        raise UserError(f"{old_sif}: not an SMS-services image (no known sms-services.release label)")
    signer = None
    try:
        signer = check(apptainer, new_sif, trust, warn=say)
    except UserError as err:
        report.reasons.append(f"signature: {err}")
    # Nodes keep the old release's slurmd until they are reprovisioned.
    _, compute_sif = prepare_images(project, apptainer, old_release, old_sif, say)
    node_slurmd = apptainer.labels(compute_sif).get("sms-services.slurm.installed", "")
    report.reasons += step_reasons(old_labels, new_labels, node_slurmd)
    if report.reasons:  # starting the new image on this state would prove nothing (or damage the copy)
        report.seconds = round(time.monotonic() - start, 1)
        return report

    # Not "<name>-...": the lab's start removes such folders as a crashed run's.
    work = Path(tempfile.mkdtemp(prefix=f"{name}copy-"))
    try:
        copy = work / overlay.name
        with frozen(overlay):  # a live overlay: copied at one instant
            copy_overlay(overlay, copy)
        say(f"rehearsing on a copy of {overlay}")
        with open_lab(project, apptainer, old_release, sif=old_sif, site_path=site_path, name=name, trust=trust,
                      overlay=copy, compute_sif=compute_sif, job_nodes=job_nodes, say=say) as lab:
            report.instance_nodes, report.farm_nodes = list(lab.nodes), lab.farm_node_names
            report.jobs_before, report.nodes_before = cluster_state(lab)
            quiesce(lab)
            if lab.farm is not None:  # (after quiesce: every slurmd has registered by then)
                report.memory_mib = lab.farm.memory()
                say(f"{len(lab.nodes)} full nodes, {len(lab.farm.nodes)} simulated by the node farm "
                    f"({report.memory_mib['pss_mib']} MiB PSS)")
            result: CutoverReport = cutover(lab, project, new_sif, trust=trust, deadline=deadline,
                                            node_slurmd=node_slurmd, rollback=False, signer=signer, say=say)
            report.cutover = result.to_dict()
            report.reasons += result.reasons
            if result.ok:
                report.jobs_after, report.nodes_after = cluster_state(lab)
                lost = [j for j in report.jobs_before if j not in report.jobs_after]
                if lost:
                    report.reasons.append(f"jobs lost by the new controller: {', '.join(lost)}")
                gone = [n for n in report.nodes_before if n not in report.nodes_after]
                if gone:
                    report.reasons.append(f"nodes lost by the new controller: {', '.join(gone)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.go = not report.reasons
    report.seconds = round(time.monotonic() - start, 1)
    return report
