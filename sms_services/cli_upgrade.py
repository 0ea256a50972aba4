"""smsctl backup, restore and rehearse: the commands of an upgrade."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup
    from .cli import out_console

    b = backup(Path(args.overlay), Path(args.to), keep=args.keep)
    if args.json:
        print(json.dumps(b.__dict__, indent=2))
    else:
        out_console.print(f"backup {b.image}: {b.used_bytes / 2**20:.1f} of {b.overlay_bytes / 2**20:.0f} MiB in use, "
                          f"{b.stored_bytes / 2**20:.1f} MiB on disk, writes held {b.frozen_s * 1000:.0f} ms, "
                          f"sha256 {b.sha256[:16]}..., keeping the newest {args.keep}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore
    from .cli import out_console

    b = restore(Path(args.backup), Path(args.overlay))
    out_console.print(f"restored {args.overlay} from {b.image} (taken {b.created}, sha256 checked)")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    from .apptainer import Apptainer
    from .cli import _project, _sif_of, _trust, err_console, out_console
    from .rehearse import rehearse

    report = rehearse(_project(args), Apptainer.find(), _sif_of(args, args.to).resolve(), Path(args.overlay),
                      old_sif=_sif_of(args, args.old).resolve(), trust=_trust(args, candidate=args.candidate),
                      site_path=Path(args.site) if args.site else None,
                      say=lambda s: err_console.print(f"[bold]rehearse[/bold] {s}"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    cut = report.cutover
    if cut:
        out_console.print(f"cutover in the lab: service gap {cut['gap_s']} s, every probe green "
                          f"{cut['green_s']} s after the start; jobs {len(report.jobs_before)} -> "
                          f"{len(report.jobs_after)}, nodes {len(report.nodes_before)} -> {len(report.nodes_after)}")
    if report.go:
        out_console.print(f"GO: {Path(report.new_sif).name} can replace {Path(report.old_sif).name} "
                          f"on {args.overlay} ({report.seconds} s)")
        return 0
    for reason in report.reasons:
        err_console.print(f"no-go: {reason}", markup=False)
    err_console.print(f"smsctl: NO-GO for {Path(report.new_sif).name} on {args.overlay}", markup=False)
    return 1


def add_parsers(sub, trust_args: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("backup", help="copy a live overlay consistently (writes held for milliseconds)")
    s.add_argument("--overlay", required=True, help="the SMS-services overlay (running or not)")
    s.add_argument("--to", required=True, metavar="DIR", help="backup folder")
    s.add_argument("--keep", type=int, default=7, help="backups of this overlay to keep (default 7)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="put a backup in place of an overlay (checksum checked first)")
    s.add_argument("backup", help="a .img written by smsctl backup")
    s.add_argument("--overlay", required=True, help="where to put it (no instance may be using it)")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("rehearse", help="go/no-go for a cutover, on a copy of the live overlay in a lab")
    s.add_argument("--to", required=True, metavar="NEW", help="the new image (a SIF or a release id)")
    s.add_argument("--from", dest="old", required=True, metavar="OLD",
                   help="the image running on the overlay now (a SIF or a release id)")
    s.add_argument("--overlay", required=True, metavar="LIVE", help="the live overlay (only copied, never changed)")
    s.add_argument("--site", help="the site file the live cluster uses (default: the lab's)")
    s.add_argument("--json", metavar="FILE", help="write the report as JSON")
    s.add_argument("--candidate", action="store_true",
                   help="also trust this host's build key (a candidate not yet release-signed)")
    trust_args(s)
    s.set_defaults(func=cmd_rehearse)
