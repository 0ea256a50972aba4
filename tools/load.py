"""Load bench: SMS-services with N registered nodes under load, as JSON and a table.

nox -s load -- [RELEASE] [--nodes 450] [--jobs 10000] [--job-nodes 2] [--cutovers 3]
(see sms_services/lab/load.py for what each phase measures). Numbers are measured,
never asserted: results/load.json is the record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.lab.progress import elapsed_say
from sms_services.inputs.project import Project, find_root
from sms_services.lab import load


def table(r: dict) -> Table:
    t = Table(title=f"load: release {r['release']}, {r['nodes']} nodes ({r['job_nodes']} full), {r['jobs']} jobs")
    t.add_column("measure")
    t.add_column("value", justify="right")
    lab, farm = r.get("lab", {}), r.get("lab", {}).get("farm", {})
    rows = [
        ("lab start to every node idle", f"{lab.get('start_to_all_idle_s')} s"),
        ("farm memory per node (PSS / RSS)", f"{farm.get('pss_per_node_mib')} / {farm.get('rss_per_node_mib')} MiB"),
        ("farm memory (PSS)", f"{farm.get('pss_mib')} MiB"),
        ("machine memory in use for the lab", f"{lab.get('machine_mem_used_mib')} MiB"),
    ]
    for key, label in (("cutover_empty_queue", "cutover gap, empty queue"),
                       ("cutover_pending_queue", f"cutover gap, {r['jobs']} pending")):
        c = r.get(key)
        if c:
            rows.append((f"{label} (median / max, jobs lost)",
                         f"{c['gap_median_s']} / {c['gap_max_s']} s, {c['jobs_lost']}"))
    if r.get("submit"):
        rows.append(("sbatch accepted", f"{r['submit']['per_s']} jobs/s"))
    tp = r.get("throughput")
    if tp:
        rows += [("jobs started / completed per second", f"{tp['started_per_s']} / {tp['completed_per_s']}"),
                 ("completed per second (peak)", f"{tp['completed_per_s_peak']}"),
                 ("scontrol ping p50 / p99", f"{tp['scontrol_ping_ms']['p50']} / {tp['scontrol_ping_ms']['p99']} ms"),
                 ("squeue p50 / p99", f"{tp['squeue_ms']['p50']} / {tp['squeue_ms']['p99']} ms")]
    o = r.get("overhead", {})
    if "ratio_completed" in o:
        rows.append((f"container / host networking, {o['jobs']} jobs (completed/s, submitted/s)",
                     f"{o['ratio_completed']} ({o['container']['completed_per_s']} / {o['host']['completed_per_s']}), "
                     f"{o['ratio_submit']}"))
    tu = r.get("tuning", {})
    if "ratio_completed" in tu:
        rows.append((f"tuned / base slurm.conf ({tu['values']}), {tu['jobs']} jobs (completed/s, submitted/s)",
                     f"{tu['ratio_completed']} ({tu['tuned']['completed_per_s']} / {tu['base']['completed_per_s']}), "
                     f"{tu['ratio_submit']} ({tu['tuned']['submit_per_s']} / {tu['base']['submit_per_s']})"))
    rh = r.get("rehearsal", {})
    if "go" in rh:
        rows.append((f"rehearsal, {rh['farm_nodes'] + len(rh['instance_nodes'])} nodes "
                     f"({len(rh['instance_nodes'])} full)",
                     f"{'GO' if rh['go'] else 'NO-GO'} in {rh['seconds']} s, {rh['machine_mem_used_mib_peak']} MiB more"))
    m = r.get("munge")
    if m:
        rows.append(("munge encode / encode+decode", f"{m.get('encode_per_s')} / {m.get('encode_decode_per_s')} /s"))
        if "encode_per_s_10_threads" in m:
            rows.append(("munge, munged with 10 threads", f"{m.get('encode_per_s_10_threads')} / "
                                                          f"{m.get('encode_decode_per_s_10_threads')} /s"))
    for proto in ("tcp", "udp"):
        s = r.get("syslog", {}).get(proto, {})
        if "sent" in s:
            rows.append((f"rsyslog {proto.upper()} ({s['senders']} senders)",
                         f"{s.get('received_per_s', 0):.0f} msg/s arrived, {s.get('lost')} of {s['sent']} lost "
                         f"({s.get('loss_pct')} %)"))
    n = r.get("ntp", {})
    if "per_s" in n:
        rows.append((f"NTP answers ({n['senders']} clients)", f"{n['per_s']:.0f} /s"))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("release", nargs="?")
    ap.add_argument("--nodes", type=int, default=450)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--job-nodes", type=int, default=2)
    ap.add_argument("--cutovers", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="length of each syslog/NTP load")
    ap.add_argument("--sif", type=Path, help="an SMS-services SIF (default: the release's, built if stale)")
    ap.add_argument("--syslog-messages", type=int, default=200_000, help="messages per syslog load (all senders)")
    ap.add_argument("--overhead-jobs", type=int, default=2000,
                    help="jobs per side of the container-vs-host-networking comparison (0: skip it)")
    ap.add_argument("--no-rehearsal", action="store_true", help="skip the N-node rehearsal at the end")
    ap.add_argument("--compute-sif", type=Path, help="the compute node image (with --sif: nothing is built)")
    ap.add_argument("--phases", default=",".join(load.PHASES),
                    help=f"comma-separated phases to run, of {','.join(load.PHASES)} (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a site variable for the lab (YAML value), e.g. --set 'scheduler_parameters=defer'")
    ap.add_argument("--tune", action="append", default=[], metavar="KEY=VALUE",
                    help="the tuning phase: --jobs jobs each with the lab's slurm.conf and with these site "
                         "variables, alternated (e.g. --tune 'scheduler_parameters=defer,max_rpc_cnt=150')")
    ap.add_argument("--out", type=Path, default=Path("results/load.json"))
    args = ap.parse_args()
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = [p for p in phases if p not in load.PHASES]
    if unknown:
        ap.error(f"--phases: unknown {','.join(unknown)} (known: {','.join(load.PHASES)})")
    site_values, tune = {}, {}
    for flag, items, into in (("--set", args.set, site_values), ("--tune", args.tune, tune)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                ap.error(f"{flag} {item}: give KEY=VALUE")
            into[key] = yaml.safe_load(value) if value else ""
    # 10,000 queued jobs are 10,000 saved scripts in the overlay, and logs grow under load.
    os.environ.setdefault("SMS_LAB_OVERLAY_MIB", "1024")
    console = Console()
    start = time.monotonic()
    say = elapsed_say(console)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")
    load.PARTIAL.append(partial)
    try:
        project = Project(find_root())
        release = args.release or project.matrix.default
        result = load.run_load(project, Apptainer.find(), release, nodes=args.nodes, jobs=args.jobs,
                               job_nodes=args.job_nodes, cutovers=args.cutovers, sif=args.sif,
                               compute_sif=args.compute_sif, site_values=site_values, phases=phases, tune=tune,
                               seconds=args.seconds, syslog_messages=args.syslog_messages,
                               overhead_jobs=args.overhead_jobs,
                               rehearsal=not args.no_rehearsal, say=say)
    except UserError as err:
        console.print(f"load: {err}", highlight=False)
        return err.exit_code
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["kernel"] = platform.release()
    result["bench_s"] = round(time.monotonic() - start, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    console.print(table(result))
    console.print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
