"""Real batch jobs on c1, for the tests that prove a job lives through a cutover,
a failover or a migration. Queried from c1, not from SMS-services: the controller
may be on either host, or moving."""

from __future__ import annotations

import time

from sms_services.lab.cluster import Lab

ENDED_BADLY = ("FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _state(lab: Lab, job: str) -> str:
    return lab.on_node("c1", ["scontrol", "-o", "show", "job", job])[1]


def submit(lab: Lab, seconds: int, tag: str) -> str:
    """A batch job on c1 that sleeps, then writes its tag to its output; returned once
    it has started. A controller stopped while slurmd still answers its launch request
    fails the launch (the job ends FAILED at once: not what the test is about)."""
    rc, out, err = lab.on_node("c1", ["sbatch", "--parsable", "-w", "c1", "-o", f"/tmp/{tag}.out", "--wrap",
                                      f"sleep {seconds}; echo {tag}-finished"])
    assert rc == 0, err
    job = out.strip()
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = _state(lab, job)
        if "JobState=RUNNING" in state:
            time.sleep(2)  # the launch's answer reaches slurmctld
            return job
        if "JobState=" in state and "JobState=PENDING" not in state:
            return job  # (a short job may have ended already; finished_ok says how)
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not start: {state.strip()[:300]}")


def finished_ok(lab: Lab, job: str, tag: str, timeout: float = 120) -> str:
    """Wait for ``job``; '' when it completed with exit 0 and wrote its tag, else what went wrong."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _state(lab, job)
        if "JobState=COMPLETED" in state:
            break
        if any(f"JobState={s}" in state for s in ENDED_BADLY):
            return f"job {job}: {state[:300]}"
        time.sleep(1)
    else:
        return f"job {job} did not finish: {state[:300]}"
    if "ExitCode=0:0" not in state:
        return f"job {job} exit code: {state[:300]}"
    _, out, err = lab.on_node("c1", ["cat", f"/tmp/{tag}.out"])
    return "" if out.strip() == f"{tag}-finished" else f"job {job} output: {out!r} {err!r}"
