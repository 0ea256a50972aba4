"""smsctl backup and restore: consistent copies of an SMS-services overlay, and putting one back."""

from __future__ import annotations

import argparse
from pathlib import Path

from sms_services.cli.common import out_console, print_json


def cmd_backup(args: argparse.Namespace) -> int:
    from sms_services.runtime.backup import backup

    b = backup(Path(args.overlay), Path(args.to), keep=args.keep)
    if args.json:
        print_json(b.__dict__)
    else:
        out_console.print(f"backup {b.image}: {b.used_bytes / 2**20:.1f} of {b.overlay_bytes / 2**20:.0f} MiB in use, "
                          f"{b.stored_bytes / 2**20:.1f} MiB on disk, writes held {b.frozen_s * 1000:.0f} ms, "
                          f"sha256 {b.sha256[:16]}..., keeping the newest {args.keep}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from sms_services.runtime.backup import restore

    b = restore(Path(args.backup), Path(args.overlay))
    out_console.print(f"restored {args.overlay} from {b.image} (taken {b.created}, sha256 checked)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
