"""smsctl releases, render, check, lint and pipelines: the release matrix, its definitions and its CI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from sms_services.cli.common import add_release_args, err_console, out_console, print_json, project_of
from sms_services.errors import UserError


def cmd_releases(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer

    project = project_of(args)
    try:
        runtime: str | None = f"{Apptainer.find().flavour} {'.'.join(map(str, Apptainer.find().version))}"
    except UserError:
        runtime = None
    rows = []
    for rel in project.matrix.releases.values():
        variants = []
        for v in rel.variants():
            if v.kind == "debian":
                here = "yes" if runtime else "no: needs Apptainer (scripts/install-host.sh)"
            else:
                here = "render only: needs an EL mirror and OpenHPC repo"
            variants.append({"variant": v.kind, "base": v.base.name, "slurmctld": v.slurm,
                             "serves_slurmd": v.serves(), "buildable_here": here})
        rows.append({
            "release": rel.id, "default": rel.id == project.matrix.default, "slurm": rel.slurm,
            "warewulf": rel.warewulf, "wwclient_protocol": rel.wwclient_protocol,
            "el_base": rel.el.name if rel.el else None, "debian_suite": rel.debian.name if rel.debian else None,
            "ohpc_repo": rel.variant("el").ohpc_repo if rel.el else None,
            "fragments": list(rel.fragments), "variants": variants,
        })
    if args.json:
        print_json({"default": project.matrix.default, "runtime": runtime, "releases": rows})
        return 0
    defaults = project.matrix.default_fragments
    table = Table(title=f"OpenHPC releases ({project.matrix.path.name})", show_lines=False)
    for col in ("release", "Slurm", "Warewulf", "EL base", "Debian", "slurmctld", "serves slurmd",
                "builds here", "fragments"):
        table.add_column(col, no_wrap=col != "serves slurmd")
    for r in rows:
        deb = next((v for v in r["variants"] if v["variant"] == "debian"), None)
        table.add_row(
            r["release"] + (" *" if r["default"] else ""), r["slurm"], r["warewulf"], r["el_base"] or "-",
            r["debian_suite"] or "-", deb["slurmctld"] if deb else "-",
            " ".join(deb["serves_slurmd"]) if deb else "-",
            "debian" if deb and deb["buildable_here"] == "yes" else "-",
            _fragment_diff(r["fragments"], defaults),
        )
    out_console.print(table)
    out_console.print("* default release. defaults: " + " ".join(defaults))
    out_console.print("EL variants render and pass checks everywhere; they build where an EL mirror "
                      "and the OpenHPC repository are reachable. --json for everything.")
    return 0


def _fragment_diff(frags: list[str], defaults: tuple[str, ...]) -> str:
    """'defaults' or the difference from them: the table stays narrow."""
    extra = [f"+{f}" for f in frags if f not in defaults]
    gone = [f"-{f}" for f in defaults if f not in frags]
    return " ".join(["defaults", *extra, *gone])


def cmd_render(args: argparse.Namespace) -> int:
    from sms_services.image.render import render, render_context

    project = project_of(args)
    variant = project.matrix.get(args.release or project.matrix.default).variant(args.variant)
    ctx = render_context(project, variant, commit=args.commit, role="compute" if args.compute else "sms")
    sys.stdout.write(render(ctx, args.layer).text())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sms_services.image.checks import check_all

    project = project_of(args)
    findings = check_all(project)
    for f in findings:
        err_console.print(f"{f}", markup=False)
    if findings:
        return 1
    n = sum(len(r.variants()) for r in project.matrix.releases.values())
    print(f"ok: {len(project.fragments)} fragments, {len(project.matrix.releases)} releases, {n} variants")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from sms_services.image.definition import lint

    bad = 0
    for path in args.files:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror})") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not a text file (byte {err.start} is not UTF-8); "
                            "lint checks Apptainer definition files") from None
        for p in lint(text):
            err_console.print(f"{path}:{p.line}: {p.message}", markup=False)
            bad += 1
    return 1 if bad else 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from sms_services.image.pipelines import check_pipelines, write_pipelines

    project = project_of(args)
    if args.check:
        problems = check_pipelines(project)
        for line in problems:
            err_console.print(line, markup=False)
        return 1 if problems else 0
    written, removed = write_pipelines(project)
    for path in written:
        print(f"wrote {path.as_posix()}")
    for path in removed:
        print(f"removed {path.as_posix()}")
    if not written and not removed:
        print("ok: CI pipelines already match releases.yaml")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("releases", help="list OpenHPC releases and what each image holds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_releases)

    s = sub.add_parser("render", help="print the assembled Apptainer definition")
    add_release_args(s)
    s.add_argument("--layer", choices=("all", "os", "packages", "final"), default="all")
    s.add_argument("--commit", help="git commit to stamp into labels (default: the checkout's)")
    s.add_argument("--compute", action="store_true", help="the lab's compute-node image instead")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("check", help="check every fragment, release and rendered definition")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("lint", help="check Apptainer definition files for common mistakes")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_lint)

    s = sub.add_parser("pipelines", help="generate the per-release CI pipelines under ci/ from releases.yaml")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="write ci/ files and remove those of dropped releases")
    g.add_argument("--check", action="store_true", help="exit 1 listing files that are not up to date")
    s.set_defaults(func=cmd_pipelines)
