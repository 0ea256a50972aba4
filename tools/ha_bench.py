"""HA bench: failover, planned move and cutover gaps on one lab HA pair, as JSON and a table.

nox -s ha -- [RELEASE] [--runs 3] [--sif SIF --compute-sif SIF]
(see sms_services/lab/ha_bench.py for what each part measures). Numbers are measured,
never asserted: results/ha.json is the record (results/ha.partial.json while it runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.lab.progress import elapsed_say
from sms_services.inputs.project import Project, find_root
from sms_services.lab import ha_bench

GOAL_S = 30  # the goal for host death -> every probe green (reported, never asserted)

DEATH_ROWS = [("knet_link_down_s", "corosync: link to the dead host down"),
              ("token_timeout_s", "corosync: token timed out"),
              ("membership_s", "corosync: new membership (after consensus)"),
              ("fencing_requested_s", "Pacemaker asks for fencing"),
              ("fenced_s", "fenced (agent done)"),
              ("start_initiated_s", "start initiated on the survivor"),
              ("started_s", "started on the survivor"),
              ("probes_green_s", "every probe green"),
              ("controller_gap_c1_s", "controller gap seen from c1")]


def _cell(values: dict, key: str) -> str:
    s = values.get(key) or {}
    return "-" if s.get("median") is None else f"{s['median']} / {s['max']}"


def _runs(phase: dict, key: str) -> str:
    return ", ".join("-" if r.get(key) is None else str(r[key]) for r in phase.get("runs", []))


def table(r: dict) -> Table:
    t = Table(title=f"HA pair: release {r['release']}, {r['runs']} runs each, corosync token {r.get('token_ms')} ms")
    t.add_column("measure (seconds after the event)")
    t.add_column("each run", justify="right")
    t.add_column("median / max", justify="right")
    death = r.get("host_death", {})
    for key, label in DEATH_ROWS:
        t.add_row(f"host death: {label}", _runs(death, key), _cell(death.get("summary", {}), key))
    move = r.get("planned_move", {})
    for key, label in (("started_s", "started"), ("probes_green_s", "every probe green"),
                       ("controller_gap_c1_s", "controller gap seen from c1")):
        t.add_row(f"planned move: {label}", _runs(move, key), _cell(move.get("summary", {}), key))
    for name, label in (("cutover_pacemaker", "with Pacemaker"), ("cutover_plain", "without Pacemaker")):
        c = r.get(name, {})
        t.add_row(f"cutover gap {label}", _runs(c, "gap_s"), _cell(c.get("summary", {}), "gap_s"))
    return t


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return proc.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("release", nargs="?")
    ap.add_argument("--runs", type=int, default=3, help="measurements of each kind (default 3)")
    ap.add_argument("--sif", type=Path, help="an SMS-services SIF (default: the release's, built if stale)")
    ap.add_argument("--compute-sif", type=Path, help="the compute-node SIF (with --sif; default: the release's)")
    ap.add_argument("--out", type=Path, default=Path("results/ha.json"))
    ap.add_argument("--keep-logs", type=Path, default=Path("results/ha-logs"),
                    help="where the hosts' corosync and Pacemaker logs are copied before the teardown")
    args = ap.parse_args()
    console = Console()
    start = time.monotonic()
    say = elapsed_say(console)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")

    def save(result: dict) -> None:
        partial.write_text(json.dumps(result, indent=1) + "\n")

    try:
        if args.compute_sif is not None and args.sif is None:
            raise UserError("--compute-sif needs --sif too")
        for path in (args.sif, args.compute_sif):
            if path is not None and not path.is_file():
                raise UserError(f"{path}: no such SIF")
        project = Project(find_root())
        release = args.release or project.matrix.default
        result = ha_bench.run_ha_bench(project, Apptainer.find(), release, runs=args.runs, sif=args.sif,
                                       compute_sif=args.compute_sif, keep_logs=args.keep_logs,
                                       say=say, save=save)
    except UserError as err:
        console.print(f"ha bench: {err}", highlight=False)
        return err.exit_code
    except KeyboardInterrupt:
        console.print(f"ha bench: interrupted; what was measured is in {partial}", highlight=False)
        return 130
    result["commit"] = _commit()
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["kernel"] = platform.release()
    result["bench_s"] = round(time.monotonic() - start, 1)
    green = (result.get("host_death", {}).get("summary", {}).get("probes_green_s") or {}).get("max")
    result["goal_host_death_green_s"] = GOAL_S
    result["goal_met"] = None if green is None else green < GOAL_S
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    console.print(table(result))
    console.print(f"host death -> every probe green: max {green} s; goal under {GOAL_S} s: "
                  f"{'met' if result['goal_met'] else 'NOT met'} (measured, not asserted)")
    console.print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
