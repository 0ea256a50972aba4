"""Slurm: the controller answers, nodes are idle, jobs run, finish, are accounted and mailed."""

from __future__ import annotations

import secrets
import time

from sms_services.probes.registry import IDLE_NODES, Cluster, ProbeFailed, kind, ok, py


@kind("slurm-ping")
def slurm_ping(c: Cluster, p: dict) -> str:
    """`scontrol ping` from a compute node says the controller is UP."""
    out = ok(c.on_node(c.nodes[0], ["scontrol", "ping"]), "scontrol ping")
    if "UP" not in out:
        raise ProbeFailed(f"scontrol ping: {out.strip()}")
    return out.strip().splitlines()[0]


@kind("slurm-nodes-idle", needs={IDLE_NODES})
def slurm_nodes_idle(c: Cluster, p: dict) -> str:
    """Every node of the site is registered and idle (`sinfo`)."""
    out = ok(c.on_node(c.nodes[0], ["sinfo", "-h", "-N", "-o", "%N %T"]), "sinfo")
    states = dict(line.split() for line in out.strip().splitlines() if line.strip())
    missing = [n for n in c.nodes if states.get(n) != "idle"]
    if missing:
        raise ProbeFailed("not idle: " + ", ".join(f"{n}={states.get(n, 'absent')}" for n in missing))
    return f"{len(c.nodes)} nodes idle"


@kind("slurm-srun", needs={IDLE_NODES})
def slurm_srun(c: Cluster, p: dict) -> str:
    """`srun hostname` runs on each node and prints that node's name."""
    for node in c.nodes:
        out = ok(c.on_node(c.nodes[0], ["srun", "-N1", "-w", node, "-t", "1", "hostname"], timeout=40),
                 f"srun on {node}")
        if out.strip() != node:
            raise ProbeFailed(f"srun -w {node} hostname printed {out.strip()!r}")
    return "srun ran on " + ", ".join(c.nodes)


def wait_job(c: Cluster, node: str, job: str, deadline: float) -> str:
    """The job's state once it ended, or the last state seen at the deadline."""
    state = "?"
    while time.monotonic() < deadline:
        out = c.on_node(node, ["scontrol", "-o", "show", "job", job])[1]
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "?")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(0.5)
    return state


def submit(c: Cluster, args: list[str], what: str) -> str:
    return ok(c.on_node(c.nodes[0], ["sbatch", "--parsable", "-t", "1", *args]), what).strip().split(";")[0]


@kind("slurm-sbatch", needs={IDLE_NODES})
def slurm_sbatch(c: Cluster, p: dict) -> str:
    """A batch job completes on the last node and its output file holds what it printed."""
    node = c.nodes[-1]
    token = secrets.token_hex(6)
    job = submit(c, ["-w", node, "-o", f"/tmp/probe-{token}.out", "--wrap", f"echo {token}"], "sbatch")
    state = wait_job(c, c.nodes[0], job, time.monotonic() + 30)
    if state != "COMPLETED":
        raise ProbeFailed(f"batch job {job} ended {state}")
    text = c.on_node(node, ["cat", f"/tmp/probe-{token}.out"])[1]
    if token not in text:
        raise ProbeFailed(f"batch job {job} output on {node} lacks its token")
    return f"batch job {job} COMPLETED on {node} with its output"


@kind("slurm-sacct", needs={IDLE_NODES})
def slurm_sacct(c: Cluster, p: dict) -> str:
    """A finished job is recorded by slurmdbd (`sacct` shows it COMPLETED)."""
    job = submit(c, ["--wrap", "true"], "sbatch")
    wait_job(c, c.nodes[0], job, time.monotonic() + 30)
    deadline = time.monotonic() + 20
    acct = ""
    while time.monotonic() < deadline:
        acct = c.on_node(c.nodes[0], ["sacct", "-n", "-X", "-j", job, "-o", "State"])[1].strip()
        if acct.startswith("COMPLETED"):
            return f"job {job} recorded by slurmdbd as COMPLETED"
        time.sleep(0.5)
    raise ProbeFailed(f"sacct does not show job {job} COMPLETED (saw {acct!r})")


@kind("slurm-job-mail", needs={IDLE_NODES})
def slurm_job_mail(c: Cluster, p: dict) -> str:
    """A job with --mail-type=END gets its end-of-job mail delivered on SMS-services."""
    rcpt = f"slurm@{c.mail_domain}"
    job = submit(c, ["--mail-type=END", f"--mail-user={rcpt}", "--wrap", "true"], "sbatch --mail-type=END")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if c.on_sms(["grep", "-rqE", f"Job_id={job}[^0-9]", "/var/mail/"])[0] == 0:
            return f"end-of-job mail for job {job} delivered to {rcpt}"
        time.sleep(0.5)
    raise ProbeFailed(f"no end-of-job mail for job {job} in /var/mail (slurmctld MailProg -> postfix)")


# A scrape as Prometheus would make it, from the provisioning network (a compute node).
_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.headers.get("Content-Type", "") + "\\n" + r.read().decode())
"""


NODES_TOTAL = "slurm_nodes"  # "Total number of nodes" (Slurm 26.05's /metrics/nodes)


def scrape(c: Cluster, path: str) -> dict[str, list]:
    """Metric family name -> its samples, of what slurmctld serves at ``path``, parsed as
    Prometheus does (26.05 serves text/plain in the Prometheus text format, HELP and TYPE
    for every family; the text parser also takes OpenMetrics' trailing ``# EOF``)."""
    from prometheus_client.parser import text_string_to_metric_families

    host = f"[{c.sms_ip}]" if ":" in c.sms_ip else c.sms_ip
    url = f"http://{host}:6817{path}"
    out = ok(c.on_node(c.nodes[0], py(_SCRAPE, url), timeout=15), f"GET {url}")
    ctype, _, body = out.partition("\n")
    try:
        return {f.name: list(f.samples) for f in text_string_to_metric_families(body)}
    except ValueError as err:
        raise ProbeFailed(f"GET {url} ({ctype or 'no content type'}): not metrics ({err}); "
                          f"it began {body[:60]!r}") from None


@kind("slurm-metrics")
def slurm_metrics(c: Cluster, p: dict) -> str:
    """slurmctld serves its own metrics (GET /metrics/nodes on port 6817), counting every node of the site."""
    families = scrape(c, "/metrics/nodes")
    total = families.get(NODES_TOTAL)
    if not total:
        raise ProbeFailed(f"/metrics/nodes has no {NODES_TOTAL} (families: {', '.join(sorted(families)) or 'none'})")
    count = int(total[0].value)
    if count != len(c.nodes):
        raise ProbeFailed(f"/metrics/nodes counts {count} nodes, the site has {len(c.nodes)}")
    return f"/metrics/nodes: {len(families)} metric families, {count} nodes"
