"""Jobs a controller believes are running that no node runs: after a restore.

A restored overlay holds the controller's state as it was at the backup. Jobs
that ran then and have finished since are still RUNNING there, and Slurm 24.11
did not give them up within 15 minutes (measured: the node stayed allocated,
so new jobs waited). Each such job's batch host is asked (``scontrol listpids``
talks to that node's slurmd); the jobs their node does not have are cancelled.
A node that cannot be asked is never taken as an answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sms_services.errors import UserError
from sms_services.probes import Cluster

GONE = ("does not exist on node", "There are no steps for job")
SETTLE_S = 30  # a job started this recently, under this controller, may still be launching


@dataclass
class Reconciled:
    ghosts: list[str] = field(default_factory=list)  # cancelled (or, dry run, to cancel)
    unknown: list[str] = field(default_factory=list)  # their node did not answer
    running: list[str] = field(default_factory=list)  # confirmed by their node


def _started(stamp: str) -> float:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return time.time()  # unknown start: treat as recent, never as a ghost


def reconcile(c: Cluster, *, dry_run: bool = False) -> Reconciled:
    # (Start times in UTC: the instance's time zone need not be this host's.)
    rc, out, err = c.on_sms(["env", "TZ=UTC", "squeue", "-h", "-t", "R,CG,S", "-o", "%i %B %S"])
    if rc != 0:
        raise UserError(f"reconcile: the controller did not list its running jobs ({err.strip()[:200]})")
    # Every job started before this controller did is settled (it is what a restore brought).
    rc, up, _ = c.on_sms(["ps", "-o", "etimes=", "-C", "slurmctld"])
    controller_start = time.time() - int(up.split()[0]) if rc == 0 and up.split() else time.time()
    found = Reconciled()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        started = _started(fields[2])
        if started > controller_start and time.time() - started < SETTLE_S:
            continue
        job, host = fields[0], fields[1]
        rc, o, e = c.on_node(host, ["scontrol", "listpids", job], timeout=15)
        if rc == 0:
            found.running.append(job)
        elif any(g in e + o for g in GONE):
            found.ghosts.append(job)
        else:
            found.unknown.append(job)
    if found.ghosts and not dry_run:
        rc, _, err = c.on_sms(["scancel", *found.ghosts])
        if rc != 0:
            raise UserError(f"reconcile: scancel {' '.join(found.ghosts)} failed ({err.strip()[:200]})")
    return found
