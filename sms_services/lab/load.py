"""The load bench: SMS-services in a lab of N registered nodes, measured under load.

What it measures, in this order (each phase reports what it saw; nothing is asserted):

* the lab: seconds until every node is idle, the node farm's memory (RSS and PSS,
  per node) and the machine's memory in use;
* the cutover gap with an empty queue (``cutovers`` times, the same image);
* munge: credentials encoded and decoded per second (``remunge`` in SMS-services);
* rsyslog and NTP from one socket per node address (``loadgen``);
* ``jobs`` trivial batch jobs submitted held (the submit rate slurmctld accepts),
  then the cutover gap with all of them pending, and whether every one was kept;
* the same jobs released: started and completed per second, and ``scontrol ping``
  and ``squeue`` latency (p50, p99) from a compute node while they run;
* container overhead: ``overhead_jobs`` jobs with SMS-services as it runs (its own network
  namespace on CNI bridges), then the same with host networking: the ratio.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.lab.cluster import Lab
from sms_services.lab.scale import job_states, scale_lab, submit_jobs, wait_nodes
from sms_services.runtime.cutover import cutover
from sms_services.runtime.overlay import write_overlay_files
from sms_services.trust.signing import Trust

Say = Callable[[str], None]

# From a compute node, as users and slurmd see the controller: both commands timed in ms.
LATENCY_LOOP = ('while :; do a=$(date +%s%N); scontrol ping >/dev/null 2>&1; b=$(date +%s%N); '
                'squeue -h >/dev/null 2>&1; c=$(date +%s%N); '
                'echo "$a $(( (b - a) / 1000 )) $(( (c - b) / 1000 ))"; sleep 0.2; done')


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 2)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Log lines that mark a cutover's steps inside SMS-services: (step, log, pattern). The old
# instance's lines come before the new supervisord's start, the new one's after it.
STEPS = [
    ("old_ctld_sigterm", "slurmctld", "Terminate signal"),
    ("old_ctld_saving", "slurmctld", "Saving all slurm state"),
    ("new_supervisord", "supervisord", "supervisord started with pid"),
    ("new_munge_spawned", "supervisord", "spawned: 'munge'"),
    ("new_ctld_spawned", "supervisord", "spawned: 'slurmctld'"),
    ("new_ctld_version", "slurmctld", "slurmctld version"),
    ("new_ctld_jobs_recovered", "slurmctld", "Recovered information about"),
    ("new_ctld_primary", "slurmctld", "Running as primary controller"),
]
LOGS = {"slurmctld": "/var/log/slurm/slurmctld.log", "supervisord": "/var/log/sms-services/supervisord.log"}


def _log_time(line: str) -> float | None:
    """A slurmctld (``[2026-12-02T12:00:00.123]``) or supervisord (``2026-12-02 12:00:00,123``)
    line's time; both log in UTC inside SMS-services, as the host does."""
    m = re.match(r"\[?(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[.,](\d+))?", line)
    if not m:
        return None
    t = calendar.timegm(time.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H:%M:%S"))
    return t + (int(m[3]) / 10 ** len(m[3]) if m[3] else 0.0)


def _breakdown(lab: Lab, report, marks: dict[str, float]) -> dict:
    """Where one cutover's gap went: every step as seconds after the compute node's last
    answer from the old controller (``gap_from``), read from the host's clock and the logs."""
    if report.gap_from is None:
        return {}
    lines: dict[str, list[tuple[float, str]]] = {}
    for name, path in LOGS.items():
        # slurmctld logs one line per job it recovers: of each run of those, the first and last.
        rc, out, _ = lab.on_sms(["sh", "-c", f"tail -n 100000 {path} | awk '/Recovered JobId/ "
                                 "{ if (!n++) print; last = $0; next } n > 1 { print last } { n = 0; print }'"],
                                timeout=60)
        lines[name] = [(t, ln) for ln in out.splitlines()
                       if (t := _log_time(ln)) is not None and report.gap_from - 5 <= t <= report.gap_to + 5]
    new_at = next((t for t, ln in lines["supervisord"] if "supervisord started with pid" in ln), report.gap_to)
    steps = {k: round(v - report.gap_from, 3) for k, v in marks.items()}
    for step, log, pattern in STEPS:
        old = step.startswith("old_")
        found = [t for t, ln in lines[log] if pattern in ln and (t < new_at if old else t >= new_at)]
        if found:
            steps[step] = round(found[0] - report.gap_from, 3)
    old_last = [t for t, ln in lines["slurmctld"] if t < new_at]
    if old_last:
        steps["old_ctld_last_line"] = round(old_last[-1] - report.gap_from, 3)
    steps["first_answer"] = round(report.gap_to - report.gap_from, 3)
    return {"gap_s": report.gap_s, "pings_down": report.gap_pings_down,
            "steps_s": dict(sorted(steps.items(), key=lambda kv: kv[1])),
            **{f"{name}_lines": [f"{t - report.gap_from:+.3f} {ln[:160]}" for t, ln in found][:80]
               for name, found in lines.items()}}


def _timed(lab: Lab, marks: dict[str, float]) -> None:
    """Record on the host's clock when the lab's stop and start of SMS-services begin and end."""
    for name in ("stop_sms", "start_sms"):
        method = getattr(type(lab), name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            marks.setdefault(f"host_{_name}_called", time.time())
            try:
                return _method(lab, *args, **kwargs)
            finally:
                marks.setdefault(f"host_{_name}_returned", time.time())
        setattr(lab, name, wrapper)


def _cutovers(lab: Lab, project: Project, count: int, say: Say, label: str) -> dict:
    gaps, lost_total, oks, breakdowns = [], 0, 0, []
    for i in range(count):
        before = set(job_states(lab))
        marks: dict[str, float] = {}
        _timed(lab, marks)
        try:
            report = cutover(lab, project, lab.sms_sif, trust=Trust.candidate(), deadline=180)
        finally:
            for name in ("stop_sms", "start_sms"):
                lab.__dict__.pop(name, None)
        after = set(job_states(lab))
        lost = before - after
        lost_total += len(lost)
        oks += report.ok and not report.rolled_back
        if report.gap_s is not None:
            gaps.append(report.gap_s)
        breakdowns.append({**_breakdown(lab, report, marks), "settle_s": report.settle_s,
                           "agents_left": report.agents_left})
        say(f"cutover {i + 1}/{count} ({label}): gap {report.gap_s} s, ok {report.ok}, "
            f"waited {report.settle_s} s for slurmctld's RPCs "
            f"({'sdiag too slow' if report.agents_left < 0 else f'{report.agents_left} left'}), "
            f"{len(before)} jobs before, {len(lost)} lost; steps {breakdowns[-1].get('steps_s')}")
    return {"cutovers": count, "ok": oks, "gaps_s": gaps, "gap_median_s": statistics.median(gaps) if gaps else None,
            "gap_max_s": max(gaps) if gaps else None, "jobs_lost": lost_total, "breakdown": breakdowns}


# A second munged beside the running one, with SchedMD's high-throughput thread count, on
# its own socket: the before/after of ``--num-threads`` in one run, on the same key.
TUNED_MUNGED = ("setpriv --reuid=munge --regid=munge --init-groups munged --num-threads {threads} "
                "-S /run/munge/bench.socket --pid-file /run/munge/bench.pid --seed-file /var/lib/munge/bench.seed "
                "--log-file /var/log/munge/bench.log")


def _remunge(lab: Lab, seconds: int, args: list[str]) -> float | None:
    rc, stdout, err = lab.on_sms(["remunge", "-q", "-T", "4", "-D", str(seconds), *args], timeout=seconds + 60)
    try:
        return float(stdout.strip().split()[-1])
    except (ValueError, IndexError):
        return None


def _munge(lab: Lab, say: Say, seconds: int = 10, threads: int = 10) -> dict:
    """``remunge`` (munge's own benchmark, 4 client threads) inside SMS-services: encode, and
    encode+decode, against the running munged (2 threads, munge's default) and one with ``threads``."""
    out: dict = {}
    for what, args in (("encode", ["-e"]), ("encode_decode", ["-d"])):
        out[f"{what}_per_s"] = _remunge(lab, seconds, args)
        say(f"munge {what}: {out[f'{what}_per_s']} credentials/s")
    rc, _, err = lab.on_sms(["sh", "-c", TUNED_MUNGED.format(threads=threads)])
    if rc != 0:
        say(f"munge with {threads} threads did not start: {err.strip()[-200:]}")
        return out
    try:
        for what, args in (("encode", ["-e"]), ("encode_decode", ["-d"])):
            key = f"{what}_per_s_{threads}_threads"
            out[key] = _remunge(lab, seconds, [*args, "-S", "/run/munge/bench.socket"])
            say(f"munge {what}, munged with {threads} threads: {out[key]} credentials/s")
    finally:
        lab.on_sms(["sh", "-c", "kill $(cat /run/munge/bench.pid)"])
    return out


def _loadgen(lab: Lab, kind: str, senders: list[str], seconds: float, say: Say, count: int = 0) -> dict:
    """One socket per node namespace (each from its node's own address) at the SMS-services."""
    cmd = [sys.executable, "-m", "sms_services.lab.loadgen", kind, lab.sms_ip, str(seconds), str(count), *senders]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    if proc.returncode != 0:
        say(f"{kind}: load generator failed: {proc.stderr.strip()[-200:]}")
        return {"error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def _syslog(lab: Lab, senders: list[str], seconds: float, count: int, say: Say) -> dict:
    """``count`` messages from every sender at once, over TCP then UDP: how fast they arrive
    in the cluster log and how many do. The log is emptied after each (the overlay is small)."""
    out = {}
    log = "/var/log/cluster/messages"
    for proto in ("tcp", "udp"):
        t0 = time.monotonic()
        sent = _loadgen(lab, f"syslog-{proto}", senders, seconds, say, count)
        if "token" not in sent:
            out[proto] = sent
            continue
        received, seen_at, stable = 0, time.monotonic(), 0
        while stable < 4 and time.monotonic() - t0 < seconds + 120:  # rsyslog drains its queue
            rc, stdout, _ = lab.on_sms(["grep", "-cF", sent["token"], log], timeout=60)
            now = int(stdout.strip() or 0)
            if now != received:
                received, seen_at, stable = now, time.monotonic(), 0
            else:
                stable += 1
            if received >= sent["sent"]:
                break
            time.sleep(0.5)
        lab.on_sms(["truncate", "-s", "0", log])
        sent.update(received=received, lost=sent["sent"] - received,
                    loss_pct=round(100 * (sent["sent"] - received) / max(sent["sent"], 1), 2),
                    received_per_s=round(received / max(seen_at - t0, 0.001), 1))
        say(f"syslog {proto}: {sent['senders']} senders sent {sent['sent']} at {sent['per_s']:.0f}/s; "
            f"{received} arrived ({sent['received_per_s']:.0f}/s), {sent['lost']} lost")
        out[proto] = sent
    return out


def _release_behind_partition(lab: Lab, ids: list[str], parallel: int = 4) -> float:
    """Release the held ``ids`` with their partition down, so that none starts yet; seconds it took.

    ``scontrol release`` updates one job per RPC (34 per second with jobs running beside it):
    released one by one, the first jobs run while the last wait to be released and the rate
    measured is the release's. Behind a down partition (Slurm queues its jobs but starts none)
    the release is not timed, and bringing the partition up frees them all in one step."""
    partition = str(lab.site.values.get("partition", "normal"))
    t = time.monotonic()
    rc, _, err = lab.on_sms(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], timeout=120)
    if rc != 0:
        raise UserError(f"partition {partition} not taken down: {err.strip()[:200]}")
    size = -(-len(ids) // parallel)
    # On stdin: 10,000 ids are longer than one argument may be.
    script = "".join(f"scontrol release {','.join(ids[i:i + size])} &\n" for i in range(0, len(ids), size))
    lab.on_sms(["sh"], stdin=script + "wait\n", timeout=3600)
    rc, out, _ = lab.on_sms(["squeue", "-h", "-n", "trivial", "-t", "PD", "-o", "%r"], timeout=120)
    held = sum(1 for r in out.split() if "Held" in r)
    if held:
        raise UserError(f"{held} of {len(ids)} jobs still held after scontrol release")
    return time.monotonic() - t


def _throughput(lab: Lab, ids: list[str], timeout: float, say: Say) -> dict:
    """Release ``ids`` (held) in one step and sample until all ended: rates and controller latency."""
    watch = subprocess.Popen(lab.exec_command(lab.nodes[0], ["sh", "-c", LATENCY_LOOP]), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd="/", start_new_session=True)
    total = len(ids)
    samples: list[tuple[float, int, int]] = []  # (t, started, completed)
    prepare_s = _release_behind_partition(lab, ids)
    t0 = time.monotonic()
    partition = str(lab.site.values.get("partition", "normal"))
    rc, _, err = lab.on_sms(["scontrol", "update", f"PartitionName={partition}", "State=UP"], timeout=120)
    if rc != 0:
        raise UserError(f"partition {partition} not brought up: {err.strip()[:200]}")
    released_s = time.monotonic() - t0
    last_say = 0.0
    while time.monotonic() - t0 < timeout:
        rc, out, _ = lab.on_sms(["squeue", "-h", "-o", "%t", "-n", "trivial"], timeout=120)
        if rc != 0:
            time.sleep(1)
            continue
        states = out.split()
        pending = states.count("PD")
        started, completed = total - pending, total - len(states)
        now = time.monotonic() - t0
        samples.append((now, started, completed))
        if now - last_say > 10 or completed == total:
            say(f"jobs: {started}/{total} started, {completed}/{total} completed after {now:.0f} s")
            last_say = now
        if completed >= total:
            break
        time.sleep(1)
    os.killpg(watch.pid, 15)
    lat_out = watch.communicate(timeout=30)[0]
    pings, squeues = [], []
    for line in lat_out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            pings.append(int(parts[1]) / 1000)
            squeues.append(int(parts[2]) / 1000)
    end = samples[-1] if samples else (0.0, 0, 0)
    first_start = next((t for t, s, _ in samples if s > 0), 0.0)
    # Peak over 10-second windows: one-second samples mostly measure squeue's own timing.
    rates, k = [], 0
    for a in samples:
        while k < len(samples) and samples[k][0] - a[0] < 10:
            k += 1
        if k < len(samples):
            rates.append((samples[k][2] - a[2]) / (samples[k][0] - a[0]))
    return {"jobs": total, "release": "partition up", "release_s": round(released_s, 2),
            "release_prepare_s": round(prepare_s, 1), "seconds": round(end[0], 1),
            "completed": end[2], "started_per_s": round(end[1] / end[0], 1) if end[0] else None,
            "completed_per_s": round(end[2] / end[0], 1) if end[0] else None,
            "completed_per_s_peak": round(max(rates), 1) if rates else None,
            "first_start_s": round(first_start, 2),
            # A job Slurm requeues (a lost completion message) waits out its requeue delay: the
            # time to 99 % shows the rate without that tail.
            "completed_99pct_s": next((round(t, 1) for t, _, c in samples if c >= 0.99 * total), None),
            "scontrol_ping_ms": {"p50": pct(pings, 50), "p99": pct(pings, 99), "samples": len(pings)},
            "squeue_ms": {"p50": pct(squeues, 50), "p99": pct(squeues, 99), "samples": len(squeues)}}


# Each side runs twice, in the order host, container, container, host: both sides then
# meet the queue's history (finished jobs slurmctld keeps for MinJobAge, 300 s) at the same
# mean position, and the ratio is not biased by which side runs first.
OVERHEAD_ORDER = ("host", "container", "container", "host")


def _network_mode(lab: Lab, mode: str, current: str, nodes: int, say: Say) -> str:
    """SMS-services restarted with its own network namespace ("container") or the lab's ("host")."""
    if mode == current:
        return current
    lab.stop_sms()
    if mode == "host":
        lab.start_sms_host_network(lab.sms_sif)
    else:
        lab.end_host_network()
        lab.start_sms(lab.sms_sif)
    wait_nodes(lab, nodes, 300, say=say)
    return mode


def _side_sum(runs: list[dict]) -> dict:
    jobs = sum(r["jobs"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    submit_s = sum(r["jobs"] / r["submit_per_s"] for r in runs)
    return {"jobs": jobs, "seconds": round(seconds, 1), "completed_per_s": round(jobs / seconds, 1) if seconds else None,
            "submit_per_s": round(jobs / submit_s, 1) if submit_s else None,
            "completed_per_s_runs": [r["completed_per_s"] for r in runs]}


def _overhead(lab: Lab, count: int, nodes: int, say: Say) -> dict:
    """``count`` held-then-released jobs per side, with SMS-services in its own network namespace
    on CNI bridges (as it runs) and with host networking (its daemons on the bridge itself),
    in halves, in ``OVERHEAD_ORDER``."""
    out: dict = {"jobs": count, "order": list(OVERHEAD_ORDER), "runs": []}
    current = "container"
    try:
        for mode in OVERHEAD_ORDER:
            current = _network_mode(lab, mode, current, nodes, say)
            ids, submit_s = submit_jobs(lab, count // 2, hold=True)
            tp = _throughput(lab, ids, timeout=max(900, count), say=say)
            out["runs"].append({"mode": mode, "submit_per_s": round(len(ids) / submit_s, 1), **tp})
            say(f"{mode} networking: {out['runs'][-1]['submit_per_s']} submitted/s, {tp['completed_per_s']} completed/s")
    finally:
        _network_mode(lab, "container", current, nodes, say)
    return _ratios(out, "container", "host", say)


def _restart_with(lab: Lab, project: Project, values: dict, nodes: int, say: Say) -> None:
    """SMS-services restarted on its overlay with slurm.conf rendered from the lab's site plus
    ``values`` (checked as a site file is); slurmctld alone reads what the tuning changes."""
    raw = yaml.safe_load(lab.site.path.read_text())
    path = lab.work / "tuned-site.yaml"
    path.write_text(yaml.safe_dump({**raw, **values}, sort_keys=False))
    # Every fragment's keys are allowed (the lab site sets slurmdbd's, which 3.5 has not).
    site = load_site(path, lab.sms_fragments, list(project.fragments.values()))
    conf = "/etc/slurm/slurm.conf"
    lab.stop_sms()
    try:
        owners, modes = lab.site_file_modes()
        assert lab.sms_overlay is not None
        write_overlay_files(lab.sms_overlay, {conf: render_site(site, lab.sms_fragments, lab.release)[conf]},
                            owners=owners, modes=modes)
    finally:
        lab.start_sms(lab.sms_sif)
    wait_nodes(lab, nodes, 300, say=say)


def _tuning(lab: Lab, project: Project, values: dict, count: int, nodes: int, say: Say) -> dict:
    """``count`` held-then-released jobs per side, with slurm.conf as the lab's site renders it
    ("base") and with ``values`` added ("tuned"), in halves, base, tuned, tuned, base: sbatch's
    rate and the jobs' (the same alternation as the container/host comparison)."""
    out: dict = {"values": values, "jobs": count, "order": ["base", "tuned", "tuned", "base"], "runs": []}
    current = "base"
    try:
        for side in out["order"]:
            if side != current:
                _restart_with(lab, project, values if side == "tuned" else {}, nodes, say)
                current = side
            ids, submit_s = submit_jobs(lab, count // 2, hold=True)
            tp = _throughput(lab, ids, timeout=max(900, count), say=say)
            out["runs"].append({"mode": side, "submit_per_s": round(len(ids) / submit_s, 1), **tp})
            say(f"{side}: {out['runs'][-1]['submit_per_s']} submitted/s, {tp['completed_per_s']} completed/s")
    finally:
        if current != "base":
            _restart_with(lab, project, {}, nodes, say)
    return _ratios(out, "tuned", "base", say)


def _ratios(out: dict, side: str, against: str, say: Say) -> dict:
    """Each side's runs summed, and ``side``'s rates over ``against``'s."""
    for mode in (side, against):
        out[mode] = _side_sum([r for r in out["runs"] if r["mode"] == mode])
    a, b = out[side], out[against]
    out["ratio_completed"] = round(a["completed_per_s"] / b["completed_per_s"], 3) if b["completed_per_s"] else None
    out["ratio_submit"] = round(a["submit_per_s"] / b["submit_per_s"], 3) if b["submit_per_s"] else None
    say(f"{side}/{against}: completed {out['ratio_completed']}, submitted {out['ratio_submit']}")
    return out


def _rehearsal(lab: Lab, project: Project, apptainer: Apptainer, job_nodes: int, say: Say) -> dict:
    """``rehearse`` of the same image on a copy of this lab's overlay with its N-node site (the
    nodes simulated by a second node farm): time, memory, and the verdict."""
    from sms_services.lab.rehearse import rehearse

    mem = mem_available_mib()
    peak = [0.0]

    def watch(line: str) -> None:
        peak[0] = max(peak[0], mem - mem_available_mib())
        say(f"rehearse: {line}")

    assert lab.sms_overlay is not None
    try:
        report = rehearse(project, apptainer, lab.sms_sif, lab.sms_overlay, old_sif=lab.sms_sif,
                          trust=Trust.candidate(), site_path=lab.site.path, name="smsrehload", job_nodes=job_nodes,
                          say=watch)
    except UserError as err:
        return {"error": str(err)}
    out = {"go": report.go, "reasons": report.reasons, "seconds": report.seconds,
           "instance_nodes": report.instance_nodes, "farm_nodes": len(report.farm_nodes),
           "farm_memory": report.memory_mib, "machine_mem_used_mib_peak": round(peak[0]),
           "gap_s": report.cutover.get("gap_s"), "jobs_before": len(report.jobs_before),
           "jobs_after": len(report.jobs_after)}
    say(f"rehearsal with {len(report.farm_nodes) + len(report.instance_nodes)} nodes: "
        f"{'GO' if report.go else 'NO-GO'} in {report.seconds} s, {round(peak[0])} MiB more in use at most")
    return out


# The bench's phases, in the order they run (``phases`` picks some: a bench of one question).
PHASES = ("empty", "munge", "syslog", "ntp", "pending", "throughput", "overhead", "tuning", "rehearsal")


def run_load(project: Project, apptainer: Apptainer, release: str, *, nodes: int = 450, jobs: int = 10000,
             job_nodes: int = 2, cutovers: int = 3, sif: Path | None = None, compute_sif: Path | None = None,
             site_values: dict | None = None, seconds: float = 10, syslog_messages: int = 200_000,
             overhead_jobs: int = 2000, rehearsal: bool = True, phases: tuple[str, ...] = PHASES,
             tune: dict | None = None, say: Say = lambda s: None) -> dict:
    result: dict = {"release": release, "nodes": nodes, "job_nodes": job_nodes, "jobs": jobs,
                    "phases": list(phases), "site_values": site_values or {},
                    "machine": {"cpus": os.cpu_count(), "mem_available_mib_before": round(mem_available_mib())}}
    mem_before = mem_available_mib()
    t = time.monotonic()
    with scale_lab(project, apptainer, release, nodes, job_nodes=job_nodes, name="smsload", sif=sif,
                   compute_sif=compute_sif, site_values=site_values, ready_timeout=600, say=say) as lab:
        assert lab.farm is not None
        result["lab"] = {**lab.timings, "with_image_checks_s": round(time.monotonic() - t, 1),
                         "farm": lab.farm.memory(),
                         "machine_mem_used_mib": round(mem_before - mem_available_mib())}
        say(f"{nodes} nodes idle after {result['lab']['start_to_all_idle_s']} s; farm "
            f"{result['lab']['farm']['pss_mib']} MiB PSS ({result['lab']['farm']['pss_per_node_mib']} per node), "
            f"machine {result['lab']['machine_mem_used_mib']} MiB more in use")
        _save_partial(result)
        if "empty" in phases:
            result["cutover_empty_queue"] = _cutovers(lab, project, cutovers, say, "empty queue")
        if "munge" in phases:
            result["munge"] = _munge(lab, say)
        senders = [lab.farm.netns(n) for n in lab.farm.nodes]
        if "syslog" in phases:
            result["syslog"] = _syslog(lab, senders, seconds * 6, syslog_messages, say)
        if "ntp" in phases:
            result["ntp"] = _loadgen(lab, "ntp", senders, seconds, say)
            say(f"ntp: {result['ntp'].get('per_s')} answers/s for {result['ntp'].get('senders')} clients")
        _save_partial(result)
        ids: list[str] = []
        if {"pending", "throughput"} & set(phases):
            say(f"submitting {jobs} held jobs")
            ids, submit_s = submit_jobs(lab, jobs, hold=True, timeout=7200)
            result["submit"] = {"jobs": jobs, "seconds": round(submit_s, 1), "per_s": round(jobs / submit_s, 1)}
            say(f"submitted {jobs} jobs in {submit_s:.0f} s ({jobs / submit_s:.0f}/s)")
        if "pending" in phases:
            result["cutover_pending_queue"] = _cutovers(lab, project, cutovers, say, f"{jobs} pending")
            _save_partial(result)
        if "throughput" in phases:
            result["throughput"] = _throughput(lab, ids, timeout=max(1800, jobs), say=say)
            result["lab"]["farm_after"] = lab.farm.memory()
            _save_partial(result)
        elif ids:  # held jobs left in the queue would only slow the next phases
            lab.on_sms(["scancel", "-n", "trivial"], timeout=300)
        if overhead_jobs and "overhead" in phases:
            try:
                result["overhead"] = _overhead(lab, overhead_jobs, nodes, say)
            except UserError as err:  # the other numbers stand without this one
                result["overhead"] = {"error": str(err)}
                say(f"container overhead not measured: {err}")
            _save_partial(result)
        if tune and "tuning" in phases:
            result["tuning"] = _tuning(lab, project, tune, jobs, nodes, say)
            _save_partial(result)
        if rehearsal and "rehearsal" in phases:
            _save_partial(result)
            result["rehearsal"] = _rehearsal(lab, project, apptainer, job_nodes, say)
    result["lab"]["teardown_s"] = lab.timings.get("teardown_s")
    return result


PARTIAL: list[Path] = []


def _save_partial(result: dict) -> None:
    """What was measured so far, so a bench cut short still leaves numbers."""
    for path in PARTIAL:
        path.write_text(json.dumps(result, indent=1) + "\n")
