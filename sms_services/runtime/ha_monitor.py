"""Is a recorded instance serving? The OCF agent's monitor (``smsctl ha monitor``).

Pacemaker recovers what its monitor reports, so "the container runs" is not
enough: a hung slurmctld (stopped, deadlocked, spinning) leaves the instance
running and the cluster without a controller. So the answer is "running" only
when the instance runs AND its slurmctld answers ``scontrol ping`` inside it,
within a timeout, and the exit codes are OCF's own, so the agent passes them on.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.runtime.deploy import Record
from sms_services.runtime.instance import caps_of, exec_command, instance_pids

# OCF return codes (resource-agents' ocf-returncodes).
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_NOT_RUNNING = 0, 1, 7


@dataclass
class State:
    code: int  # an OCF return code
    detail: str  # one line: why


def controller_state(project: Project, apptainer: Apptainer, name: str, *, timeout: float = 5) -> State:
    """OCF_SUCCESS when ``name`` runs and its slurmctld answers, OCF_NOT_RUNNING when the
    instance does not run, OCF_ERR_GENERIC when it runs but its controller does not answer,
    or when whether it runs cannot be told (never "not running" on a guess: Pacemaker would
    start it elsewhere while it writes on)."""
    try:
        return _state(project, apptainer, name, timeout)
    except UserError as err:
        return State(OCF_ERR_GENERIC, str(err))


def _state(project: Project, apptainer: Apptainer, name: str, timeout: float) -> State:
    record = Record.load(name)
    if not instance_pids(apptainer, name):
        return State(OCF_NOT_RUNNING, f"instance {name} is not running")
    caps = caps_of(project.sms_fragments(record.release))
    cmd = exec_command(apptainer, name, caps, ["scontrol", "ping"])
    try:
        # scontrol gives up only after Slurm's MessageTimeout (10 s by default): ours is shorter.
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired:
        return State(OCF_ERR_GENERIC, f"instance {name} runs but slurmctld did not answer scontrol ping "
                                      f"within {timeout:g} s")
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0 and "is UP" in out:
        return State(OCF_SUCCESS, f"instance {name} runs and slurmctld answers: {out.splitlines()[0]}")
    if not instance_pids(apptainer, name):  # it stopped while we asked
        return State(OCF_NOT_RUNNING, f"instance {name} is not running")
    first = out.splitlines()[0] if out else f"exit code {proc.returncode}"
    return State(OCF_ERR_GENERIC, f"instance {name} runs but slurmctld does not answer: {first[:200]}")
