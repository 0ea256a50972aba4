"""Golden-text testing: rendered output is compared with a checked-in file.

Set ``SMS_UPDATE_GOLDEN=1`` to rewrite the files after an intended change, then
review the diff like any other change: it shows exactly what an image gains.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from sms_services.image.render import (
    files_of,
    packages_for,
    program_conf,
    render_context,
    script_lines,
)
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.probes import KINDS, probe_name

GOLDEN_COMMIT = "0000000000000000000000000000000000000000"
# Fragments are shown as they render for the default release's variant and the lab site.
LAB_SITE = "overlays/lab/site.yaml"


def compare(golden: Path, actual: str) -> None:
    if os.environ.get("SMS_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual)
        return
    if not golden.exists():
        raise AssertionError(f"{golden} does not exist; create it with SMS_UPDATE_GOLDEN=1")
    expected = golden.read_text()
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            str(golden), "rendered", n=2))
        raise AssertionError(f"rendered text differs from {golden} "
                             f"(SMS_UPDATE_GOLDEN=1 to accept):\n{diff[:6000]}")


def render_fragment(project: Project, name: str) -> str:
    """Everything one fragment contributes to an image and to an overlay, as text."""
    frag = project.fragments[name]
    rel = project.matrix.get(project.matrix.default)
    # A fragment outside the default release is shown in the first release that has it.
    candidates = [rel, *project.matrix.releases.values()]
    rel, role = next((r, role) for r in candidates for role in ("sms", "compute")
                     if name in r.role_fragments(role) and r.debian)
    variant = rel.variant()
    ctx = render_context(project, variant, GOLDEN_COMMIT, role)
    out = [f"# fragment {name} as rendered for release {rel.id} ({variant.kind}/{variant.base.name})",
           f"summary: {frag.summary}", f"mode: {frag.mode}",
           f"packages: {' '.join(packages_for(frag, variant)) or '-'}",
           f"el packages: {' '.join(frag.packages.get('el', ())) or '-'}",
           f"capabilities: {' '.join(frag.capabilities) or '-'}",
           "ports: " + (" ".join(f"{p.port}/{p.proto}@{p.network}" for p in frag.ports) or "-"),
           f"state: {' '.join(frag.state) or '-'}", f"secrets: {' '.join(frag.secrets) or '-'}",
           f"requires: {' '.join(frag.requires) or '-'}", f"binaries: {' '.join(frag.binaries) or '-'}"]
    out += [f"file mode: {fm.path} {fm.owner} {fm.mode:04o}" for fm in frag.file_modes]
    out += [f"site variable: {v.name} ({v.type.spec}) = {v.default!r}{' (secret)' if v.secret else ''}: {v.doc}"
            for v in frag.site]
    out += [f"probe: {probe_name(p)}" + (f" (needs {', '.join(sorted(KINDS[p.kind].needs))})"
                                         if p.kind in KINDS and KINDS[p.kind].needs else "")
            + (f" (when site {p.when} is on)" if p.when else "")
            for p in frag.probes]
    out += [f"break {b.name}: {b.doc} -> fails {' '.join(b.fails)}" for b in frag.breaks]
    out += ["", "## %files"]
    out += [f"{src} {dst}" for src, dst in files_of(frag, project.root)]
    for step in ("bootstrap.sh", "pre-install.sh", "build.sh"):
        lines = script_lines(frag, step, ctx)
        if lines:
            out += ["", f"## %post {step}", *lines]
    if frag.mode != "none":
        out += ["", "## supervisor program (priority and stop rank as in an image of this fragment alone)",
                *program_conf(frag, 10)]
    if frag.templates:
        site = load_site(project.root / LAB_SITE, ctx.fragments, list(project.fragments.values()))
        rendered = render_site(site, ctx.fragments, rel.id)
        for target in sorted(frag.templates.values()):
            out += ["", f"## overlay file {target} (lab site)", rendered[target].rstrip("\n")]
    return "\n".join(out) + "\n"
