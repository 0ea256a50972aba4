"""``smsctl``: the admin's command line.

Every command prints a table for people and, with ``--json``, one JSON object
for scripts. Bad input ends in one line on stderr and a non-zero exit.

One module per noun registers its commands (as Warewulf's ``wwctl/<noun>/``
does); this module only assembles the parser and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys

from sms_services import __version__
from sms_services.cli import backup, boot, ha, image, instance, lab, monitor, overlay, release, site, trust
from sms_services.cli.common import err_console
from sms_services.errors import UserError

# The order of `smsctl --help`: make an image, prove it, sign and publish it, run it, watch it, keep its state.
NOUNS = (release, site, image, lab, trust, instance, boot, monitor, overlay, backup, ha)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smsctl", description="Build, verify, sign and publish SMS-services images.")
    p.add_argument("--version", action="version", version=f"smsctl {__version__}")
    p.add_argument("--root", help="project folder (default: found from the current directory)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for noun in NOUNS:
        noun.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "release_pos", None):
        if args.release and args.release != args.release_pos:
            parser.error("give the release once")
        args.release = args.release_pos
    try:
        return args.func(args)
    except UserError as err:
        err_console.print(f"smsctl: {err}", markup=False)
        return err.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        err_console.print("smsctl: interrupted; partial files were removed", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
