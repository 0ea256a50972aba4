"""A site: the values one cluster sets (addresses, names, relays), never baked into an image.

``site.yaml`` is a flat mapping of the site variables that the release's
fragments declare (``smsctl site vars`` lists them with their docs). Rendering
a site gives the files that go into an instance's overlay: each fragment's
templates, and ``/etc/sms-services/site.env`` for the run scripts.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from sms_services.errors import UserError
from sms_services.inputs.fragment import Fragment, SiteVar
from sms_services.inputs.sitetypes import shown
from sms_services.inputs.yamlfile import load_mapping, one_line

SITE_ENV = "/etc/sms-services/site.env"
# Site variables naming a file of the site's own that is used instead of a rendered one
# (a real cluster's slurm.conf with its partitions, QoS, prolog...): variable -> overlay path.
OWN_FILES = {"slurm_conf": "/etc/slurm/slurm.conf", "cgroup_conf": "/etc/slurm/cgroup.conf"}
# ... and the one naming further files that go beside them (gres.conf, topology.conf, an Include).
OWN_EXTRA = ("slurm_files", "/etc/slurm")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Site:
    path: Path
    values: dict[str, Any]


def declared(fragments: tuple[Fragment, ...] | list[Fragment]) -> dict[str, tuple[SiteVar, str]]:
    """Every site variable of these fragments -> (declaration, fragment name)."""
    out: dict[str, tuple[SiteVar, str]] = {}
    for frag in fragments:
        for var in frag.site:
            out.setdefault(var.name, (var, frag.name))
    return out


def load_site(path: Path, fragments: tuple[Fragment, ...] | list[Fragment],
              every: list[Fragment] | None = None) -> Site:
    """Values for ``fragments``; keys of other fragments in ``every`` are allowed and
    ignored, so one site file serves releases with and without e.g. slurmdbd.

    Every value is held to its declared type here, so nothing a site sets can add a
    line (or a token) to a rendered config; a bad value is one line naming the field.
    """
    raw = load_mapping(path)
    decl = declared(fragments)
    unknown = sorted(set(map(str, raw)) - set(decl) - set(declared(every or [])))
    if unknown:
        raise UserError(f"{path}: field '{one_line(unknown[0])}' is not a site variable of any fragment "
                        f"(known here: {', '.join(sorted(decl))})")
    values: dict[str, Any] = {}
    for name, (var, owner) in sorted(decl.items()):
        value = raw.get(name, var.default)
        if value is None:
            raise UserError(f"{path}: field '{name}' is missing; set it ({var.doc}; declared by fragment {owner})")
        bad = var.type.problem(value)
        if bad is not None:
            where, expected = bad
            raise UserError(f"{path}: field '{name}{one_line(where)}' must be {expected}, "
                            f"found {shown(value if not where else _at(value, where), var.secret)}")
        values[name] = value
    _cross_check(path, values)
    return Site(path, values)


def _at(value: Any, where: str) -> Any:
    """The part of ``value`` a problem points at (``[1].name``), for the message; the whole
    value when the path does not lead anywhere (a key holding '.' or '[')."""
    part = value
    try:
        for step in where.replace("]", "").replace("[", ".").split(".")[1:]:
            part = part[int(step)] if isinstance(part, list) else part[step]
    except (LookupError, ValueError, TypeError):
        return value
    return part


def _cross_check(path: Path, values: dict[str, Any]) -> None:
    """What no single field shows: addresses on the wrong network, two nodes alike."""
    nets = {k: ipaddress.ip_network(values[k]) for k in ("provision_network", "public_network") if k in values}
    inside = [("provision_ip", "provision_network"), ("public_ip", "public_network"),
              ("wwclient_server", "provision_network")]
    inside += [(f"nodes[{i}].address", "provision_network") for i in range(len(values.get("nodes", [])))]
    for field, net in inside:
        value = _at(values, "." + field) if field.startswith("nodes") else values.get(field)
        if value in (None, "") or net not in nets:
            continue
        if ipaddress.ip_address(value) not in nets[net]:
            raise UserError(f"{path}: field '{field}' {value} is outside {net} {nets[net]}; "
                            f"use an address of {nets[net]}")
    seen: dict[str, str] = {}
    if "provision_ip" in values:
        seen[str(ipaddress.ip_address(values["provision_ip"]))] = "provision_ip"
    names: dict[str, int] = {}
    for i, node in enumerate(values.get("nodes", [])):
        name = str(node["name"]).lower()
        if name in names:
            raise UserError(f"{path}: field 'nodes[{i}].name' {node['name']} is also nodes[{names[name]}]'s; "
                            "every node needs a name of its own")
        names[name] = i
        addr = str(ipaddress.ip_address(node["address"]))
        if addr in seen:
            raise UserError(f"{path}: field 'nodes[{i}].address' {node['address']} is also {seen[addr]}'s; "
                            "every node needs an address of its own")
        seen[addr] = f"nodes[{i}]"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_site(site: Site, fragments: tuple[Fragment, ...] | list[Fragment],
                release: str = "") -> dict[str, str]:
    """Image path -> file content for everything a site puts into the overlay."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    context = dict(site.values, fragments=[f.name for f in fragments], release=release)
    files: dict[str, str] = {}
    for frag in fragments:
        for src, target in sorted(frag.templates.items()):
            path = frag.path / "templates" / src
            try:
                files[target] = env.from_string(path.read_text()).render(context)
            except jinja2.TemplateError as err:
                raise UserError(f"{path}: cannot render for {site.path} ({err})") from None
    files.update(own_files(site, fragments))
    lines = ["# Site values for the run scripts, rendered by smsctl from " + site.path.name]
    decl = declared(fragments)
    # Only what these fragments declare, and never a secret: every process sees this file.
    lines += [f"SMS_{k.upper()}={shlex.quote(_env_value(v))}" for k, v in sorted(site.values.items())
              if k in decl and not decl[k][0].secret]
    files[SITE_ENV] = "\n".join(lines) + "\n"
    return files


def own_files(site: Site, fragments: tuple[Fragment, ...] | list[Fragment]) -> dict[str, str]:
    """The site's own config files (paths relative to the site file) that replace or join
    the rendered ones: image path -> content. Only for variables these fragments declare."""
    decl = declared(fragments)
    out: dict[str, str] = {}
    for var, target in OWN_FILES.items():
        if var in decl and site.values.get(var):
            out[target] = _read_own(site, var, str(site.values[var]))
    var, folder = OWN_EXTRA
    if var in decl:
        given = site.values.get(var) or []
        if not isinstance(given, list):
            raise UserError(f"{site.path}: field '{var}' must be a list of file paths")
        for i, name in enumerate(given):
            base = Path(str(name)).name
            target = f"{folder}/{base}"
            if not _FILE_NAME.match(base) or target in OWN_FILES.values() or target in out:
                raise UserError(f"{site.path}: field '{var}[{i}]' {name!r} cannot go to {target} "
                                "(a plain file name, not slurm.conf or cgroup.conf, each once)")
            out[target] = _read_own(site, f"{var}[{i}]", str(name))
    return out


def _read_own(site: Site, field: str, name: str) -> str:
    path = site.path.parent / name  # (an absolute name stays as it is)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not UTF-8 text"
        raise UserError(f"{site.path}: field '{field}': cannot read {path} ({reason})") from None
    return text if text.endswith("\n") else text + "\n"
