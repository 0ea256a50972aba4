"""smsctl site vars, site check, schema: what a site may set, whether a site file is right,
and the published schemas and reference page."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from sms_services.cli.common import err_console, out_console, print_json, project_of


def cmd_site_vars(args: argparse.Namespace) -> int:
    from sms_services.reference import site_vars

    project = project_of(args)
    rows = site_vars(project, args.release)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"site variables{' of release ' + args.release if args.release else ''}")
    for col in ("variable", "fragment", "type", "default", "what"):
        table.add_column(col, overflow="fold")
    for v in rows:
        default = "(required)" if v["required"] else repr(v["default"])
        cells = (v["name"], v["fragment"], v["type"], default + (" secret" if v["secret"] else ""), v["doc"])
        table.add_row(*map(escape, cells))  # "[host]:port" in a doc is text, not rich markup
    out_console.print(table)
    return 0


def cmd_site_check(args: argparse.Namespace) -> int:
    from sms_services.inputs.site import load_site, render_site

    project = project_of(args)
    release = args.release or project.matrix.default
    frags = project.sms_fragments(release)
    site = load_site(Path(args.site), frags, list(project.fragments.values()))
    from sms_services.inputs.slurmconf import problems

    files = render_site(site, frags, release)
    found = problems(files, hostname=str(site.values.get("sms_hostname", "")),
                     address=str(site.values.get("provision_ip", "")),
                     state=sorted({p for f in frags for p in f.state}))
    for line in found:
        err_console.print(f"{args.site}: {line}", markup=False)
    if found:
        return 1
    print(f"ok: {args.site} renders {len(files)} files for release {release} (smsctl init also runs the "
          "image's Slurm on slurm.conf)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from sms_services.files import atomic_write
    from sms_services.reference import generated

    project = project_of(args)
    stale = []
    for rel, text in generated(project).items():
        path = project.root / rel
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(rel.as_posix())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text)
            print(f"wrote {rel.as_posix()}")
    for rel_path in stale:
        err_console.print(f"{rel_path}: out of step with the code; run smsctl schema --write", markup=False)
    if args.check and not stale:
        print("ok: schemas and reference page match the code")
    return 1 if stale else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("site", help="the site variables a release reads; check a site file")
    verbs = s.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("vars", help="list the site variables with default and doc (as Warewulf's "
                                      "`wwctl overlay variables`)")
    v.add_argument("--release", help="only the variables of this release's fragments")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_site_vars)
    c = verbs.add_parser("check", help="load and render a site file for a release; one line per problem")
    c.add_argument("site", help="the site.yaml")
    c.add_argument("--release", help="default: releases.yaml's default")
    c.set_defaults(func=cmd_site_check)

    s = sub.add_parser("schema", help="write or check docs/: the fragment and site JSON schemas and "
                                      "the fragment reference page")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true", help="exit 1 naming every file out of step")
    s.set_defaults(func=cmd_schema)



