"""smsctl verify and rehearse: prove an image, or a cutover, in a lab cluster of network namespaces."""

from __future__ import annotations

import argparse
from pathlib import Path

from sms_services.cli.common import (
    add_release_args,
    add_trust_args,
    err_console,
    out_console,
    project_of,
    sif_of,
    trust_of,
    write_json,
)


def cmd_verify(args: argparse.Namespace) -> int:
    import signal

    from sms_services.apptainer import Apptainer
    from sms_services.lab.verify import verify
    from sms_services.probes.report import print_table

    project = project_of(args)
    release = args.release or project.matrix.default
    # SIGTERM (CI cancelling a job) tears the lab down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def say_result(r) -> None:
        mark = "[green]pass[/green]" if r.ok else "[red]FAIL[/red]"
        err_console.print(f"{mark} {r.service:10} {r.probe:28} {r.phase:9} {r.detail}")

    outcome = verify(project, Apptainer.find(), release, sif=Path(args.sif) if args.sif else None,
                     trust=trust_of(args, candidate=True),
                     site_path=Path(args.site) if args.site else None,
                     json_path=Path(args.json) if args.json else None,
                     junit_path=Path(args.junit) if args.junit else None,
                     say=lambda s: err_console.print(f"[bold]verify {release}[/bold] {s}"),
                     say_result=say_result)
    print_table(outcome.results, f"verify OpenHPC {release}: {outcome.meta['sif']}", out_console)
    t = outcome.meta["timings"]
    out_console.print(", ".join(f"{k} {v}" for k, v in t.items()))
    for service, log in outcome.meta.get("logs", {}).items():
        err_console.print(f"--- last lines of {service}'s log ---\n{log.rstrip()}", markup=False)
    if not outcome.ok:
        err_console.print(f"smsctl: verify {release} FAILED: {'; '.join(outcome.failed)}", markup=False)
        return 1
    out_console.print(f"verify {release}: all {len(outcome.results)} probes passed")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.lab.rehearse import rehearse

    report = rehearse(project_of(args), Apptainer.find(), sif_of(args, args.to).resolve(), Path(args.overlay),
                      old_sif=sif_of(args, args.old).resolve(), trust=trust_of(args, candidate=args.candidate),
                      site_path=Path(args.site) if args.site else None, job_nodes=args.job_nodes,
                      say=lambda s: err_console.print(f"[bold]rehearse[/bold] {s}"))
    if args.json:
        write_json(args.json, report.to_dict())
    cut = report.cutover
    if cut:
        out_console.print(f"cutover in the lab: service gap {cut['gap_s']} s, every probe green "
                          f"{cut['green_s']} s after the start; jobs {len(report.jobs_before)} -> "
                          f"{len(report.jobs_after)}, nodes {len(report.nodes_before)} -> {len(report.nodes_after)}")
    if report.farm_nodes:
        out_console.print(f"nodes: {', '.join(report.instance_nodes)} ran as full nodes (the probes' jobs); "
                          f"{len(report.farm_nodes)} more were simulated by slurmd processes of the node farm")
    if report.go:
        out_console.print(f"GO: {Path(report.new_sif).name} can replace {Path(report.old_sif).name} "
                          f"on {args.overlay} ({report.seconds} s)")
        return 0
    for reason in report.reasons:
        err_console.print(f"no-go: {reason}", markup=False)
    err_console.print(f"smsctl: NO-GO for {Path(report.new_sif).name} on {args.overlay}", markup=False)
    return 1


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("verify", help="start the SIF in a lab cluster and prove every service answers")
    add_release_args(s, positional=True)
    s.add_argument("--sif", help="image to verify (default: build/<release>/..., built or brought up to date first)")
    s.add_argument("--site", help="lab site file (default: overlays/lab/site.yaml)")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML")
    add_trust_args(s)
    s.add_argument("--allow-unsigned", action="store_true",
                   help="start an unsigned image (local development only; says so loudly)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("rehearse", help="go/no-go for a cutover, on a copy of the live overlay in a lab")
    s.add_argument("--to", required=True, metavar="NEW", help="the new image (a SIF or a release id)")
    s.add_argument("--from", dest="old", required=True, metavar="OLD",
                   help="the image running on the overlay now (a SIF or a release id)")
    s.add_argument("--overlay", required=True, metavar="LIVE", help="the live overlay (only copied, never changed)")
    s.add_argument("--site", help="the site file the live cluster uses (default: the lab's)")
    s.add_argument("--job-nodes", type=_positive, default=2, metavar="K",
                   help="the site's first K nodes run as full lab nodes (real jobs); the rest as slurmd "
                        "processes of one node farm, each with its own address (default: 2)")
    s.add_argument("--json", metavar="FILE", help="write the report as JSON")
    s.add_argument("--candidate", action="store_true",
                   help="also trust this host's build key (a candidate not yet release-signed)")
    add_trust_args(s)
    s.set_defaults(func=cmd_rehearse)
