"""Probes: proof that each service answers, seen from a compute node.

goss-style: a probe is data in a fragment's ``fragment.yaml`` (``kind`` plus
parameters); each kind is implemented once here as one attempt that either
returns a short detail or raises :class:`ProbeFailed`. The runner retries an
attempt until it passes or its deadline runs out, because services come up
asynchronously after ``instance start``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from sms_services.inputs.fragment import Fragment, Probe


class ProbeFailed(Exception):
    """One attempt failed; the message says what was seen."""


class Cluster(Protocol):
    """What probes need from a running lab (see lab.py)."""

    nodes: list[str]
    sms_fragments: tuple[Fragment, ...]
    sms_ip: str
    sms_public_ip: str
    public_host_ip: str
    mail_domain: str

    def on_node(self, node: str, command: list[str], stdin: str | None = None,
                timeout: float = 30) -> tuple[int, str, str]: ...
    def on_sms(self, command: list[str], stdin: str | None = None,
               timeout: float = 30) -> tuple[int, str, str]: ...
    def on_public(self, command: list[str], timeout: float = 30) -> tuple[int, str, str]: ...
    def mgmt_update(self) -> str: ...


@dataclass
class Result:
    service: str
    probe: str
    ok: bool
    seconds: float  # latency of the last attempt
    waited: float  # from the first attempt to the verdict
    attempts: int
    detail: str
    phase: str = "up"

    def to_dict(self) -> dict:
        return asdict(self)


def _ok(rc_out_err: tuple[int, str, str], what: str) -> str:
    rc, out, err = rc_out_err
    if rc != 0:
        raise ProbeFailed(f"{what} exited {rc}: {(err or out).strip().splitlines()[-1:] or ['no output']}")
    return out


# --- Python one-liners run on the compute node (its image has python3) -------------

# Connected: a chronyd not yet listening is reported at once (ICMP port unreachable ->
# ConnectionRefusedError) instead of after the whole timeout, so the retry comes sooner.
NTP_QUERY = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], 123))
s.send(b"\x23" + 47 * b"\0")
data = s.recv(512)
li, mode, stratum = data[0] >> 6, data[0] & 7, data[1]
secs, frac = struct.unpack("!II", data[40:48])
offset = secs - 2208988800 + frac / 2**32 - time.time()
print(f"leap={li} mode={mode} stratum={stratum} offset={offset:.3f}")
sys.exit(0 if mode == 4 and li != 3 and 0 < stratum < 16 and abs(offset) < 5 else 1)
"""

SMTP_SEND = r"""
import smtplib, sys
host, rcpt, token = sys.argv[1:4]
msg = f"From: slurm@{sys.argv[4]}\r\nTo: {rcpt}\r\nSubject: Slurm Job_id=0 Name=probe Ended\r\n\r\n{token}\r\n"
with smtplib.SMTP(host, 25, timeout=10) as s:
    s.sendmail(f"slurm@{sys.argv[4]}", [rcpt], msg)
print("accepted")
"""

PORTS_OPEN = r"""
import socket, sys, threading
open_ = []
def knock(port):
    try:
        socket.create_connection((sys.argv[1], int(port)), timeout=1).close()
        open_.append(port)
    except OSError:
        pass
knocks = [threading.Thread(target=knock, args=(p,)) for p in sys.argv[2:]]
for t in knocks: t.start()
for t in knocks: t.join()
print(" ".join(sorted(open_, key=int)))
"""

RELAY_TRY = r"""
import smtplib, socket, sys
try:
    s = smtplib.SMTP(sys.argv[1], 25, timeout=5)
except (ConnectionRefusedError, socket.timeout, OSError) as e:
    print(f"refused: no SMTP on the public address ({e.__class__.__name__})"); sys.exit(0)
s.ehlo("outside.example")
s.mail("spammer@outside.example")
code, text = s.rcpt("victim@elsewhere.example")
s.quit()
print(f"RCPT answered {code} {text.decode(errors='replace')}")
sys.exit(0 if code >= 500 else 1)
"""

WHOAMI = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(100).decode().strip())
"""


def _py(code: str, *args: str) -> list[str]:
    return ["python3", "-c", code, *args]


# --- one function per probe kind -------------------------------------------------

def munge_roundtrip(c: Cluster, p: dict) -> str:
    node = c.nodes[0]
    cred = _ok(c.on_node(node, ["munge", "-n"]), f"munge -n on {node}")
    _ok(c.on_sms(["unmunge"], stdin=cred), "unmunge on SMS-services of a credential from " + node)
    back = _ok(c.on_sms(["munge", "-n"]), "munge -n on SMS-services")
    _ok(c.on_node(node, ["unmunge"], stdin=back), f"unmunge on {node} of a credential from SMS-services")
    return f"credentials decode both ways ({node} <-> SMS-services)"


def slurm_ping(c: Cluster, p: dict) -> str:
    out = _ok(c.on_node(c.nodes[0], ["scontrol", "ping"]), "scontrol ping")
    if "UP" not in out:
        raise ProbeFailed(f"scontrol ping: {out.strip()}")
    return out.strip().splitlines()[0]


def slurm_nodes_idle(c: Cluster, p: dict) -> str:
    out = _ok(c.on_node(c.nodes[0], ["sinfo", "-h", "-N", "-o", "%N %T"]), "sinfo")
    states = dict(line.split() for line in out.strip().splitlines() if line.strip())
    missing = [n for n in c.nodes if states.get(n) != "idle"]
    if missing:
        raise ProbeFailed("not idle: " + ", ".join(f"{n}={states.get(n, 'absent')}" for n in missing))
    return f"{len(c.nodes)} nodes idle"


def slurm_srun(c: Cluster, p: dict) -> str:
    for node in c.nodes:
        out = _ok(c.on_node(c.nodes[0], ["srun", "-N1", "-w", node, "-t", "1", "hostname"], timeout=40),
                  f"srun on {node}")
        if out.strip() != node:
            raise ProbeFailed(f"srun -w {node} hostname printed {out.strip()!r}")
    return "srun ran on " + ", ".join(c.nodes)


def _wait_job(c: Cluster, node: str, job: str, deadline: float) -> str:
    state = "?"
    while time.monotonic() < deadline:
        out = c.on_node(node, ["scontrol", "-o", "show", "job", job])[1]
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "?")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(0.5)
    return state


def slurm_sbatch(c: Cluster, p: dict) -> str:
    node = c.nodes[-1]
    token = secrets.token_hex(6)
    out = _ok(c.on_node(c.nodes[0], ["sbatch", "--parsable", "-w", node, "-t", "1", "-o",
                                     f"/tmp/probe-{token}.out", "--wrap", f"echo {token}"]), "sbatch")
    job = out.strip().split(";")[0]
    state = _wait_job(c, c.nodes[0], job, time.monotonic() + 30)
    if state != "COMPLETED":
        raise ProbeFailed(f"batch job {job} ended {state}")
    text = c.on_node(node, ["cat", f"/tmp/probe-{token}.out"])[1]
    if token not in text:
        raise ProbeFailed(f"batch job {job} output on {node} lacks its token")
    p["_job"] = job
    return f"batch job {job} COMPLETED on {node} with its output"


def slurm_sacct(c: Cluster, p: dict) -> str:
    out = _ok(c.on_node(c.nodes[0], ["sbatch", "--parsable", "-t", "1", "--wrap", "true"]), "sbatch")
    job = out.strip().split(";")[0]
    _wait_job(c, c.nodes[0], job, time.monotonic() + 30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        acct = c.on_node(c.nodes[0], ["sacct", "-n", "-X", "-j", job, "-o", "State"])[1].strip()
        if acct.startswith("COMPLETED"):
            return f"job {job} recorded by slurmdbd as COMPLETED"
        time.sleep(0.5)
    raise ProbeFailed(f"sacct does not show job {job} COMPLETED (saw {acct!r})")


def slurm_job_mail(c: Cluster, p: dict) -> str:
    rcpt = f"slurm@{c.mail_domain}"
    out = _ok(c.on_node(c.nodes[0], ["sbatch", "--parsable", "-t", "1", "--mail-type=END",
                                     f"--mail-user={rcpt}", "--wrap", "true"]), "sbatch --mail-type=END")
    job = out.strip().split(";")[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if c.on_sms(["grep", "-rqE", f"Job_id={job}[^0-9]", "/var/mail/"])[0] == 0:
            return f"end-of-job mail for job {job} delivered to {rcpt}"
        time.sleep(0.5)
    raise ProbeFailed(f"no end-of-job mail for job {job} in /var/mail (slurmctld MailProg -> postfix)")


def syslog_roundtrip(c: Cluster, p: dict) -> str:
    proto = str(p.get("proto", "udp"))
    node = c.nodes[0]
    token = f"sms-probe-{proto}-{secrets.token_hex(6)}"
    flag = "--udp" if proto == "udp" else "--tcp"
    _ok(c.on_node(node, ["logger", "--server", c.sms_ip, "--port", "514", flag, "--rfc3164",
                         "-t", "probe", token]), f"logger over {proto}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rc, out, _ = c.on_sms(["grep", "-F", token, "/var/log/cluster/messages"])
        if rc == 0:
            if node not in out.split():
                raise ProbeFailed(f"message over {proto} arrived without hostname {node}: {out.strip()}")
            return f"message over {proto} from {node} in /var/log/cluster/messages"
        time.sleep(0.2)
    raise ProbeFailed(f"message over {proto} from {node} not in the central log")


def ntp_query(c: Cluster, p: dict) -> str:
    return _ok(c.on_node(c.nodes[0], _py(NTP_QUERY, c.sms_ip)), "NTP query").strip()


def smtp_deliver(c: Cluster, p: dict) -> str:
    token = f"sms-probe-mail-{secrets.token_hex(6)}"
    rcpt = f"slurm@{c.mail_domain}"
    _ok(c.on_node(c.nodes[0], _py(SMTP_SEND, c.sms_ip, rcpt, token, c.nodes[0])), "SMTP dialogue")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if c.on_sms(["grep", "-rqF", token, "/var/mail/"])[0] == 0:
            return f"job-notification mail to {rcpt} delivered"
        time.sleep(0.3)
    raise ProbeFailed(f"mail to {rcpt} accepted but not delivered to /var/mail")


def smtp_no_relay(c: Cluster, p: dict) -> str:
    return _ok(c.on_public(_py(RELAY_TRY, c.sms_public_ip)), "relay attempt from the public side").strip()


def nat_route(c: Cluster, p: dict) -> str:
    seen = _ok(c.on_node(c.nodes[0], _py(WHOAMI, c.public_host_ip, "8080")),
               f"connection from {c.nodes[0]} to the public host").strip()
    if seen != c.sms_public_ip:
        raise ProbeFailed(f"public host saw source {seen}, not SMS-services' public {c.sms_public_ip}")
    return f"{c.nodes[0]} -> {c.public_host_ip} masqueraded as {seen}"


def public_closed(c: Cluster, p: dict) -> str:
    """Every TCP port a fragment serves (on the provisioning network or loopback) is
    closed to the public network: slurmctld or syslog answering there is an exposure."""
    ports = sorted({str(port.port) for f in c.sms_fragments for port in f.ports
                    if port.proto == "tcp" and port.network != "public"}, key=int)
    seen = _ok(c.on_public(_py(PORTS_OPEN, c.sms_public_ip, *ports)), "connections from the public side").split()
    if seen:
        what = {str(port.port): port.what for f in c.sms_fragments for port in f.ports}
        raise ProbeFailed("open to the public network on " + c.sms_public_ip + ": " +
                          ", ".join(f"{p}/tcp ({what[p]})" for p in seen))
    return f"{', '.join(ports)}/tcp closed to the public network"


def cron_heartbeat(c: Cluster, p: dict) -> str:
    rc, out, _ = c.on_sms(["sh", "-c", "pgrep -x cron || pgrep -x crond"])
    if rc != 0:
        raise ProbeFailed("no cron daemon running")
    rc, beat, _ = c.on_sms(["cat", "/run/sms-services/cron-heartbeat"])
    if rc != 0:
        raise ProbeFailed("cron is running but its @reboot heartbeat job did not run")
    return f"cron (pid {out.split()[0]}) ran its @reboot job at {beat.strip()}"


def wwclient_sync(c: Cluster, p: dict) -> str:
    marker = c.mgmt_update()
    c.on_sms(["supervisorctl", "-c", "/etc/sms-services/supervisord.conf", "signal", "HUP", "wwclient"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if c.on_sms(["getent", "passwd", marker])[0] == 0:
            return f"user {marker} added on SMS-mgmt arrived in /etc/passwd"
        time.sleep(0.3)
    raise ProbeFailed(f"user {marker} added on SMS-mgmt did not arrive within 15 s")


def process(c: Cluster, p: dict) -> str:
    name = str(p.get("name"))
    rc, out, _ = c.on_sms(["pgrep", "-x", name])
    if rc != 0:
        raise ProbeFailed(f"{name} is not running")
    return f"{name} running (pid {out.split()[0]})"


KINDS: dict[str, Callable[[Cluster, dict], str]] = {
    "munge-roundtrip": munge_roundtrip,
    "slurm-ping": slurm_ping,
    "slurm-nodes-idle": slurm_nodes_idle,
    "slurm-srun": slurm_srun,
    "slurm-sbatch": slurm_sbatch,
    "slurm-sacct": slurm_sacct,
    "slurm-job-mail": slurm_job_mail,
    "syslog-roundtrip": syslog_roundtrip,
    "ntp-query": ntp_query,
    "smtp-deliver": smtp_deliver,
    "smtp-no-relay": smtp_no_relay,
    "nat-route": nat_route,
    "public-closed": public_closed,
    "cron-heartbeat": cron_heartbeat,
    "wwclient-sync": wwclient_sync,
    "process": process,
}


def probe_name(probe: Probe) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(probe.params.items()) if not k.startswith("_"))
    return probe.kind + (f"[{extra}]" if extra else "")


def run_one(c: Cluster, service: str, probe: Probe, deadline: float, phase: str = "up") -> Result:
    """Attempt until it passes or ``deadline`` (monotonic) passes; at least one attempt."""
    fn = KINDS.get(probe.kind)
    name = probe_name(probe)
    if fn is None:
        return Result(service, name, False, 0, 0, 0, f"unknown probe kind {probe.kind!r}", phase)
    start = time.monotonic()
    attempts = 0
    detail = ""
    while True:
        attempts += 1
        t = time.monotonic()
        try:
            detail = fn(c, dict(probe.params))
            return Result(service, name, True, round(time.monotonic() - t, 3),
                          round(time.monotonic() - start, 3), attempts, detail, phase)
        except ProbeFailed as err:
            detail = str(err)
        except Exception as err:  # a probe bug must still name its service
            detail = f"{type(err).__name__}: {err}"
        if time.monotonic() + 0.5 > deadline:
            return Result(service, name, False, round(time.monotonic() - t, 3),
                          round(time.monotonic() - start, 3), attempts, detail, phase)
        time.sleep(0.5)


def run_all(c: Cluster, fragments: list[Fragment] | tuple[Fragment, ...], *, ready_timeout: float = 90,
            probe_timeout: float = 20, skip: set[str] = frozenset(), phase: str = "up",
            say: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Every probe of every fragment, in dependency order.

    The first probe gets ``ready_timeout`` (services are still starting); once
    one has passed, each further probe gets ``probe_timeout``.
    """
    results: list[Result] = []
    first = True
    for frag in fragments:
        for probe in frag.probes:
            if probe.kind in skip:
                continue
            budget = ready_timeout if first else probe_timeout
            res = run_one(c, frag.name, probe, time.monotonic() + budget, phase)
            first = first and not res.ok
            results.append(res)
            say(res)
    return results


def failed_services(results: list[Result]) -> list[str]:
    return sorted({r.service for r in results if not r.ok})


def to_json(results: list[Result], meta: dict) -> str:
    return json.dumps({**meta, "ok": all(r.ok for r in results),
                       "failed_services": failed_services(results),
                       "probes": [r.to_dict() for r in results]}, indent=2)
