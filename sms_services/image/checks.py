"""Checks across fragments and releases that no single file can make on its own."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
import jinja2.meta

from sms_services.image.definition import lint
from sms_services.image.render import render, render_context
from sms_services.inputs.fragment import FAMILIES, Fragment
from sms_services.inputs.project import Project
from sms_services.inputs.release import Variant
from sms_services.probes import probe_name, probe_problems
from sms_services.reference import schema_problems


@dataclass(frozen=True)
class Finding:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# Names every template may use besides the site variables (see site.py).
TEMPLATE_GLOBALS = frozenset({"fragments", "release"})


def check_fragment(frag: Fragment, project: Project) -> list[Finding]:
    out: list[Finding] = []
    meta = f"{frag.path}/fragment.yaml"
    allowed = set(FAMILIES) | set(project.matrix.bases)
    for key in frag.packages:
        if frag.packages[key] and key not in allowed:
            out.append(Finding(meta, f"field 'packages.{key}' is neither a family nor a base in releases.yaml"))
    # A template may use its own variables and those of what it requires (base always).
    visible = {v.name for v in frag.site}
    for dep in set(frag.requires) | {"base"}:
        if dep in project.fragments:
            visible |= {v.name for v in project.fragments[dep].site}
    env = jinja2.Environment()
    for src in frag.templates:
        path = frag.path / "templates" / src
        try:
            used = jinja2.meta.find_undeclared_variables(env.parse(path.read_text()))
        except jinja2.TemplateSyntaxError as err:
            out.append(Finding(f"{path}:{err.lineno}", f"template syntax error: {err.message}"))
            continue
        for name in sorted(used - visible - TEMPLATE_GLOBALS):
            out.append(Finding(str(path), f"uses '{name}', which neither {frag.name} nor what it "
                                          "requires declares under 'site'"))
    out += [Finding(line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in schema_problems(frag)]
    out += check_probes(frag)
    return out


def check_probes(frag: Fragment) -> list[Finding]:
    """Probe kinds and parameters exist (a typo fails here, not in a root lab), and every
    break names probes of this fragment."""
    meta = f"{frag.path}/fragment.yaml"
    out = [Finding(meta, f"probes[{i}]: {problem}")
           for i, probe in enumerate(frag.probes) for problem in probe_problems(probe)]
    names = {probe_name(p) for p in frag.probes}
    for b in frag.breaks:
        out += [Finding(meta, f"breaks '{b.name}': fails names {name!r}, which is not a probe of "
                              f"{frag.name} (its probes: {', '.join(sorted(names)) or 'none'})")
                for name in b.fails if name not in names]
    return out


def check_variant(variant: Variant, project: Project, role: str = "sms") -> list[Finding]:
    """Model checks, then lint of the rendered text."""
    out: list[Finding] = []
    frags = project.ordered(variant, role)  # raises on unknown fragment, missing dependency, cycle
    claimed: dict[tuple[int, str], str] = {}
    for frag in frags:
        for port in frag.ports:
            key = (port.port, port.proto)
            if key in claimed and claimed[key] != frag.name:
                out.append(Finding(f"{frag.path}/fragment.yaml",
                                   f"port {port.port}/{port.proto} is also claimed by fragment "
                                   f"'{claimed[key]}' in release {variant.release.id}"))
            claimed.setdefault(key, frag.name)
    text = render(render_context(project, variant, commit="check", role=role)).text()
    for p in lint(text):
        out.append(Finding(f"release {variant.name} {role} definition line {p.line}", p.message))
    return out


def check_all(project: Project) -> list[Finding]:
    out: list[Finding] = []
    for frag in project.fragments.values():
        out += check_fragment(frag, project)
    for rel in project.matrix.releases.values():
        for variant in rel.variants():
            for role in ("sms", "compute"):
                out += check_variant(variant, project, role)
    return out
