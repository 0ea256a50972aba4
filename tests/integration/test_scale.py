"""A CI-sized scale lab: 50 nodes register, 500 trivial jobs all complete, none lost
across a cutover. (The big numbers come from ``nox -s load``, not from here.)

48 of the nodes are real slurmd processes of the lab's node farm (``lab/farm.py``),
c1 and c2 full instances; half of the jobs are held in the queue while the
controller is replaced, so the new one must read them back from the state it saved.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from sms_services.inputs.project import Project
from sms_services.lab.cluster import lab_is_gone, leftovers
from sms_services.lab.scale import job_states, node_states, scale_lab, submit_jobs, wait_jobs
from sms_services.runtime.cutover import cutover
from sms_services.trust.signing import Trust

NODES, JOBS = 50, 500


def _pid_in_its_namespace(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def test_fifty_nodes_five_hundred_jobs_and_a_cutover_lose_nothing(apptainer, project: Project) -> None:
    name = "smsscale50"
    with scale_lab(project, apptainer, "3.5", NODES, job_nodes=2, name=name, ready_timeout=150) as lab:
        states = node_states(lab)
        assert len(states) == NODES and set(states.values()) == {"idle"}, Counter(states.values())
        assert lab.farm is not None and len(lab.farm.slurmd_pids()) == NODES - 2
        # slurmd kills whatever process its pid file names: each farm node must see its own
        # /run (its pid file names itself) and its own spool folder, through its own root.
        pids = lab.farm.slurmd_pids()
        for pid in pids:
            assert int(Path(f"/proc/{pid}/root/run/slurmd.pid").read_text()) == _pid_in_its_namespace(pid)
        assert len({os.stat(f"/proc/{pid}/root/var/spool/slurmd").st_dev for pid in pids}) == len(pids)
        # Half the jobs wait in the queue (held) across the cutover; half run before it.
        held, _ = submit_jobs(lab, JOBS // 2, hold=True, exclude=lab.nodes)
        running, _ = submit_jobs(lab, JOBS // 2, exclude=lab.nodes)
        before = job_states(lab)
        assert set(held) | set(running) <= set(before)

        report = cutover(lab, project, lab.sms_sif, trust=Trust.candidate(), deadline=90)
        assert report.ok and not report.rolled_back, report.reasons
        assert report.gap_s is not None and report.gap_s < 60, report.gap_s

        after = job_states(lab)
        lost = sorted(set(before) - set(after), key=int)
        assert not lost, f"jobs lost across the cutover: {lost[:20]}"
        assert all(after[j] == "PENDING" for j in held), Counter(after[j] for j in held)
        rc, _, err = lab.on_sms(["scontrol", "release", ",".join(held)], timeout=60)
        assert rc == 0, err
        # (a job Slurm requeues after a late completion message waits out its requeue delay)
        final = wait_jobs(lab, held + running, timeout=420)
        assert Counter(final.values()) == Counter({"COMPLETED": JOBS}), Counter(final.values())
        states = node_states(lab)
        assert len(states) == NODES, f"nodes after the cutover: {len(states)}"
    assert lab_is_gone(name, apptainer), leftovers(name, apptainer)
