"""smsctl overlay check|repair|grow: care of an instance's overlay (the controller's whole state)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sms_services.cli.common import err_console, out_console


def overlay_of(args: argparse.Namespace, what: str) -> Path:
    """--overlay PATH, or the overlay the record of --name names; refused while any host's
    instance holds its lease (this host's loop devices do not show another host's use)."""
    from sms_services.runtime.deploy import Record
    from sms_services.runtime.lease import require_free

    overlay = Path(args.overlay) if args.overlay else Path(Record.load(args.name).overlay)
    require_free(overlay, what)
    return overlay


def cmd_check(args: argparse.Namespace) -> int:
    from sms_services.runtime.overlay_care import check

    result = check(overlay_of(args, "check it (the journal replay writes)"))
    if result.clean:
        out_console.print(f"{result.overlay}: clean (e2fsck -fn)", markup=False)
        return 0
    err_console.print(f"smsctl: {result.overlay}: errors: {result.problems()}; repair with "
                      "smsctl overlay repair (takes a backup first)", markup=False)
    return 1


def cmd_repair(args: argparse.Namespace) -> int:
    from sms_services.runtime.backup import backup
    from sms_services.runtime.deploy import state_dir
    from sms_services.runtime.overlay_care import check, repair

    overlay = overlay_of(args, "repair it")
    if check(overlay).clean:
        out_console.print(f"{overlay}: clean, nothing to repair", markup=False)
        return 0
    dest = Path(args.backup_to) if args.backup_to else state_dir() / "repair-backups"
    saved = backup(overlay, dest, keep=args.keep)  # e2fsck -y may delete what it cannot place
    out_console.print(f"backup before repair: {saved.image} (smsctl restore {saved.image} --overlay {overlay} "
                      "undoes the repair, the instance stopped)", markup=False)
    result = repair(overlay)
    changes = [ln for ln in result.output.splitlines() if ln.rstrip().endswith("? yes")]  # what -y agreed to
    for line in changes[:40]:
        out_console.print(f"  {line.strip()}", markup=False)
    if result.code >= 4:
        err_console.print(f"smsctl: {overlay}: e2fsck could not repair everything (exit {result.code}): "
                          f"{result.problems()}; restore the backup or a nightly one", markup=False)
        return 1
    out_console.print(f"{overlay}: repaired (e2fsck -fy exit {result.code}, {len(changes)} change(s)); "
                      "check the controller's state after the start (smsctl reconcile)", markup=False)
    return 0


def cmd_grow(args: argparse.Namespace) -> int:
    from sms_services.runtime.init import parse_size
    from sms_services.runtime.overlay_care import grow

    overlay = overlay_of(args, "grow it")
    old, new = grow(overlay, parse_size(args.size) * 2**20)
    out_console.print(f"{overlay}: grown from {old / 2**20:.0f} MiB to {new / 2**20:.0f} MiB", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overlay", help="check, repair or grow a stopped instance's overlay")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def target(s: argparse.ArgumentParser) -> None:
        g = s.add_mutually_exclusive_group()
        g.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
        g.add_argument("--overlay", metavar="PATH", help="an overlay file instead of a recorded instance's")

    s = verbs.add_parser("check", help="e2fsck -fn after a journal replay; exit 1 on errors")
    target(s)
    s.set_defaults(func=cmd_check)
    s = verbs.add_parser("repair", help="back up the overlay, then e2fsck -fy, and say what changed")
    target(s)
    s.add_argument("--backup-to", metavar="DIR", help="where the backup goes (default $SMS_STATE_DIR/repair-backups)")
    s.add_argument("--keep", type=int, default=3, help="repair backups of this overlay to keep (default 3)")
    s.set_defaults(func=cmd_repair)
    s = verbs.add_parser("grow", help="grow a stopped instance's overlay (sparse) and its filesystem; never shrinks")
    target(s)
    s.add_argument("size", metavar="SIZE", help="the new size, e.g. 8G (a bare number is MiB, as for smsctl init --size)")
    s.set_defaults(func=cmd_grow)
