"""Reconcile asks each job's node and cancels only what the node says it does not have."""

from __future__ import annotations

import time

from sms_services.runtime.reconcile import reconcile


class FakeCluster:
    """The controller's view and each node's answer, as the real commands print them."""

    def __init__(self, jobs: str, nodes: dict[str, tuple[int, str, str]], up_s: int = 5) -> None:
        self.jobs, self.nodes, self.up_s, self.cancelled = jobs, nodes, up_s, []

    def on_sms(self, command, stdin=None, timeout=30):
        if command[:3] == ["env", "TZ=UTC", "squeue"]:
            return 0, self.jobs, ""
        if command[0] == "ps":
            return 0, f"{self.up_s}\n", ""
        if command[0] == "scancel":
            self.cancelled += command[1:]
            return 0, "", ""
        raise AssertionError(command)

    def on_node(self, node, command, stdin=None, timeout=30):
        assert command[:2] == ["scontrol", "listpids"]
        return self.nodes[node] if command[2] != "13" else (0, "PID JOBID\n1 13 batch\n", "")


def stamp(ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - ago))


def test_only_jobs_their_node_disowns_are_cancelled() -> None:
    jobs = (f"11 c1 {stamp(600)}\n12 c2 {stamp(600)}\n13 c1 {stamp(600)}\n"
            f"14 c1 {stamp(2)}\n")  # 14: started under this controller a moment ago, maybe still launching
    c = FakeCluster(jobs, {"c1": (1, "", "JobId=11 does not exist on node (null).\n"),
                           "c2": (255, "", "ssh: connect to host c2 port 22: No route to host\n")})
    found = reconcile(c)  # type: ignore[arg-type]
    assert found.ghosts == ["11"] and found.unknown == ["12"] and found.running == ["13"]
    assert c.cancelled == ["11"]


def test_a_dry_run_cancels_nothing() -> None:
    c = FakeCluster(f"21 c1 {stamp(600)}\n", {"c1": (1, "", "There are no steps for job 21 on node (null).\n")})
    assert reconcile(c, dry_run=True).ghosts == ["21"] and c.cancelled == []  # type: ignore[arg-type]
