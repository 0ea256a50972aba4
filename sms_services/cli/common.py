"""What every ``smsctl`` noun shares: the consoles, the project, trust and release options, JSON output.

The noun modules (release, image, lab, trust, instance, backup) import from
here and never from each other, so the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sms_services.errors import UserError
from sms_services.inputs.project import Project, load_project

if TYPE_CHECKING:  # cryptography is imported only by the commands that sign
    from sms_services.trust.signing import Trust

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Pipes and CI logs get a wide console: a table cut to 80 columns hides the facts.
# soft_wrap: a line of text (a path, a refusal) stays one line, for grep and for logs;
# tables still fit the width (their columns wrap on their own).
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 140, soft_wrap=True)


def project_of(args: argparse.Namespace) -> Project:
    """The project under ``--root``, or the one found from the current directory."""
    return load_project(Path(args.root).resolve() if args.root else None)


def add_release_args(s: argparse.ArgumentParser, positional: bool = False) -> None:
    s.add_argument("--release", "-r", help="OpenHPC release id (default: releases.yaml's default)")
    if positional:  # `smsctl build 3.5` as well as `smsctl build --release 3.5`
        s.add_argument("release_pos", nargs="?", metavar="RELEASE")
    s.add_argument("--variant", choices=("debian", "el"), help="default: debian when the release has one")


def add_trust_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--key", action="append", metavar="PREFIX",
                   help="trust PREFIX.pub (repeatable; default: the .pub files in ~/.config/sms-services/trusted)")
    s.add_argument("--certificate", help="the signer's X.509 certificate (checked against --certificate-roots)")
    s.add_argument("--certificate-roots", metavar="PEM", help="trusted root certificates (the site CA)")
    s.add_argument("--certificate-intermediates", metavar="PEM")


def trust_of(args: argparse.Namespace, *, candidate: bool = False) -> Trust:
    """Release trust from the command line; ``candidate`` adds this host's build key (verify only)."""
    from sms_services.trust.signing import Trust

    return (Trust.candidate if candidate else Trust.release)(
        args.key, certificate=args.certificate, roots=args.certificate_roots,
        intermediates=args.certificate_intermediates, allow_unsigned=getattr(args, "allow_unsigned", False))


def sif_of(args: argparse.Namespace, target: str) -> Path:
    """A SIF path, or a release id meaning the SIF `smsctl build` wrote for it."""
    path = Path(target)
    if path.suffix == ".sif" or path.exists():
        if not path.is_file():
            raise UserError(f"{path}: no such SIF")
        return path
    from sms_services.image.build import sif_path

    project = project_of(args)
    sif = sif_path(project, project.matrix.get(target).variant())
    if not sif.is_file():
        raise UserError(f"{sif}: release {target} is not built yet (smsctl build {target})")
    return sif


def print_json(data: Any) -> None:
    """One indented JSON document on stdout (``--json``)."""
    print(json.dumps(data, indent=2))


def write_json(path: str, data: Any) -> None:
    """A report for ``--json FILE``, its folder made if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
