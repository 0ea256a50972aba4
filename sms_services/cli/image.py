"""smsctl build and manifest: a release's SIF and what it holds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sms_services.cli.common import add_release_args, err_console, out_console, print_json, project_of
from sms_services.errors import UserError


def cmd_build(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.image.build import Builder

    project = project_of(args)
    variant = project.matrix.get(args.release or project.matrix.default).variant(args.variant)
    say: Callable[[str], None] = (lambda s: None) if args.json else (
        lambda s: err_console.print(f"[bold]{variant.name}[/bold] {s}"))
    builder = Builder(project, Apptainer.find(), cache=Path(args.cache) if args.cache else None, say=say)
    result = builder.build(variant, out=Path(args.out) if args.out else None,
                           role="compute" if args.compute else "sms")
    if args.json:
        print_json({"release": result.release, "variant": result.variant, "sif": result.sif,
                    "size": result.size, "sha256": result.sha256, "seconds": result.seconds,
                    "layers": result.layers})
    else:
        out_console.print(f"built {result.sif} ({result.size / 2**20:.1f} MiB, {result.seconds:.0f} s, "
                          f"Slurm {result.labels.get('sms-services.slurm.installed', '?')})")
        print(result.sif)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer, last_line

    app = Apptainer.find()
    sif = Path(args.sif)
    if not sif.is_file():
        raise UserError(f"{sif}: no such image")
    res = app.run(["run", *app.cap_flags, "--app", "manifest", str(sif)], timeout=120)
    if res.returncode != 0:
        raise UserError(f"{sif}: no package manifest ({last_line(res.stderr)}); was it built by smsctl?")
    sys.stdout.write(res.stdout)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("build", help="build a release's SIF")
    add_release_args(s, positional=True)
    s.add_argument("--out", help="output folder (default: build/<release>)")
    s.add_argument("--cache", help="layer and apt cache (default: ~/.cache/sms-services)")
    s.add_argument("--json", action="store_true", help="print one JSON object: sif, size, sha256, seconds")
    s.add_argument("--compute", action="store_true", help="build the lab's compute-node image instead")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("manifest", help="print the package manifest embedded in a SIF")
    s.add_argument("sif")
    s.set_defaults(func=cmd_manifest)
