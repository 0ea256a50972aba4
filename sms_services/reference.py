"""The fragment schema, the site schema and the fragment reference page, from one source.

goss publishes a JSON schema for its input files and HPC Container Maker
generates its building-block docs from the code; here the one description of
``fragment.yaml`` is :data:`FRAGMENT_KEYS` plus the probe registry (each kind's
parameters), and everything an admin reads or an editor validates against is
generated from it: ``docs/fragment.schema.json``, ``docs/site.schema.json`` (from
the fragments' site variables) and ``docs/fragments.md``. ``smsctl check``
validates every fragment.yaml against the same schema, and ``smsctl schema
--check`` fails when a checked-in file is out of step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from sms_services.inputs.fragment import MODES, NETWORKS, PROTOCOLS, Fragment
from sms_services.inputs.project import Project
from sms_services.inputs.site import declared
from sms_services.inputs.sitetypes import TYPE_SPECS, TYPES
from sms_services.inputs.yamlfile import load_mapping
from sms_services.probes import KINDS, NEEDS

_STR = {"type": "string", "minLength": 1}
_STRS = {"type": "array", "items": _STR}
_PATHS = {"type": "array", "items": {"type": "string", "pattern": "^/"}}

# key -> (schema, one line of doc). The order is the reference page's.
FRAGMENT_KEYS: dict[str, tuple[dict[str, Any], str]] = {
    "summary": (_STR, "one line: what the service is for (required)"),
    "mode": ({"enum": list(MODES)}, "daemon (kept running by supervisord), oneshot (runs once at start) "
                                    "or none (only shapes the image); default daemon"),
    "requires": (_STRS, "fragments that must be in the image and start first"),
    "packages": ({"type": "object", "additionalProperties": _STRS},
                 "packages per family (debian, el) or per base (bookworm, EL_9) that differs"),
    "capabilities": ({"type": "array", "items": {"type": "string", "pattern": "^CAP_[A-Z_]+$"}},
                     "Linux capabilities the instance needs for this service"),
    "ports": ({"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["port"],
        "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535},
                       "proto": {"enum": list(PROTOCOLS)}, "network": {"enum": list(NETWORKS)},
                       "what": _STR}}},
              "ports served: port, proto (tcp), network (provision, public, loopback), what"),
    "state": (_PATHS, "paths that are state: they live in the overlay and are backed up"),
    "secrets": (_PATHS, "paths that must never be in the image (checked at build)"),
    "file_modes": ({"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": False, "required": ["mode"],
        "properties": {"owner": _STR, "mode": {"type": "string", "pattern": "^0[0-7]{3}$"}}}},
                   "owner (an account of the image) and mode (quoted octal) of a site file in the overlay"),
    "site": ({"type": "object", "propertyNames": {"pattern": "^[a-z][a-z0-9_]*$"}, "additionalProperties": {
        "type": "object", "additionalProperties": False, "required": ["doc", "type"],
        "properties": {"default": {}, "doc": _STR, "secret": {"type": "boolean"},
                       "type": {"enum": TYPE_SPECS}, "min": {"type": "integer"}, "max": {"type": "integer"},
                       "choices": {**_STRS, "minItems": 1}, "empty": {"type": "boolean"}}}},
             "site variables: type (see Site variable types; `list of T` for a list), default (null: the "
             "site must set it), doc, secret (kept out of site.env), min/max (integer), choices (choice), "
             "empty (true: \"\" is accepted too, turning the feature off)"),
    "templates": ({"type": "object", "additionalProperties": {"type": "string", "pattern": "^/"}},
                  "templates/<file>.j2 -> the overlay path it is rendered to from the site"),
    "probes": ({"type": "array", "items": {"$ref": "#/$defs/probe"}},
               "proof the service answers: a probe kind and its parameters (see Probe kinds); `when: VAR` "
               "runs it only where the site's boolean VAR is on"),
    "breaks": ({"type": "array", "items": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "doc", "break", "repair", "fails"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"}, "doc": _STR,
                       "break": _STR, "repair": _STR, "fails": {**_STRS, "minItems": 1}, "detail": _STR}}},
               "how the negative tests break the service (sh -e inside SMS-services, `ctl` is "
               "supervisorctl), which of its probes must fail (and with what detail), how to repair"),
    "binaries": (_STRS, "commands that must exist in the finished image"),
}


def _probe_schema() -> dict[str, Any]:
    variants = []
    for k in sorted(KINDS.values(), key=lambda k: k.name):
        props: dict[str, Any] = {"kind": {"const": k.name},
                                 "when": {**_STR, "description": "a boolean site variable of the fragment: "
                                          "the probe runs only where the site turned it on"}}
        for pname, spec in k.params.items():
            props[pname] = {"enum": list(spec.choices)} if spec.choices else _STR
        variants.append({"type": "object", "description": k.doc, "additionalProperties": False,
                         "required": ["kind", *[p for p, s in k.params.items() if s.required]],
                         "properties": props})
    return {"oneOf": variants}


def fragment_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sms-services.invalid/fragment.schema.json",
        "title": "sms-services fragment (defs/<service>/fragment.yaml)",
        "type": "object", "additionalProperties": False, "required": ["summary"],
        "properties": {key: {**schema, "description": doc} for key, (schema, doc) in FRAGMENT_KEYS.items()},
        "$defs": {"probe": _probe_schema()},
    }


def site_schema(project: Project) -> dict[str, Any]:
    """site.yaml: every site variable any fragment declares."""
    decl = declared(list(project.fragments.values()))
    props = {name: {**var.type.json_schema(),
                    "description": f"{var.doc} ({var.type.spec}; fragment {owner})"
                    + ("" if var.default is None else f"; default {var.default!r}")}
             for name, (var, owner) in sorted(decl.items())}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://sms-services.invalid/site.schema.json",
            "title": "sms-services site (overlays/<site>/site.yaml)",
            "type": "object", "additionalProperties": False, "properties": props}


def schema_problems(frag: Fragment) -> list[str]:
    """Every way ``frag``'s fragment.yaml departs from the schema, one line each."""
    path = frag.path / "fragment.yaml"
    validator = jsonschema.Draft202012Validator(fragment_schema())
    out = []
    for err in sorted(validator.iter_errors(load_mapping(path)), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        out.append(f"{path}: field '{where}': {err.message[:200]}")
    return out


def site_vars(project: Project, release: str | None = None) -> list[dict[str, Any]]:
    """The site variables (of a release, or of every fragment), for `smsctl site vars`."""
    frags = (list(project.sms_fragments(release)) if release else list(project.fragments.values()))
    return [{"name": name, "fragment": owner, "type": var.type.spec, "default": var.default,
             "required": var.default is None, "secret": var.secret, "doc": var.doc}
            for name, (var, owner) in sorted(declared(frags).items())]


def reference_page(project: Project) -> str:
    """docs/fragments.md: the fragment keys, the probe kinds, the site variables."""
    out = ["# Fragment reference", "",
           "Generated by `smsctl schema --write` from the code (do not edit); the same schema is",
           "`docs/fragment.schema.json`, and `smsctl check` validates every `defs/*/fragment.yaml` with it.", "",
           "## fragment.yaml keys", "", "| key | what |", "|---|---|"]
    out += [f"| `{key}` | {doc} |" for key, (_, doc) in FRAGMENT_KEYS.items()]
    out += ["", "## Probe kinds", "",
            "A probe needing more than SMS-services and one compute node runs only where the target",
            "provides it: " + "; ".join(f"`{n}`: {d}" for n, d in NEEDS.items()) + ".", "",
            "| kind | what it proves | parameters | needs | used by |", "|---|---|---|---|---|"]
    for k in sorted(KINDS.values(), key=lambda k: k.name):
        params = "<br>".join(f"`{p}`{' (required)' if s.required else ''}: {s.doc}"
                             + (f" ({' or '.join(s.choices)})" if s.choices else "")
                             for p, s in k.params.items()) or "-"
        users = ", ".join(sorted({f.name for f in project.fragments.values()
                                  for p in f.probes if p.kind == k.name})) or "-"
        out.append(f"| `{k.name}` | {k.doc} | {params} | {', '.join(sorted(k.needs)) or '-'} | {users} |")
    out += ["", "## Site variable types", "",
            "Every site variable declares one; a site value is checked against it when the site is",
            "loaded, so no value can add a line or a token to a rendered config. `list of T` is a",
            "YAML list of T; `empty: true` also accepts `\"\"`.", "", "| type | accepts |", "|---|---|"]
    out += [f"| `{name}` | {doc} |" for name, doc in TYPES.items()]
    out += ["", "## Site variables", "", "| variable | fragment | type | default | what |", "|---|---|---|---|---|"]
    for v in site_vars(project):
        default = "(required)" if v["required"] else f"`{v['default']!r}`"
        out.append(f"| `{v['name']}` | {v['fragment']} | `{v['type']}` | {default}"
                   f"{' secret' if v['secret'] else ''} | {v['doc']} |")
    return "\n".join(out) + "\n"


def generated(project: Project) -> dict[Path, str]:
    """Every generated reference file, by path under the project root."""
    def js(data: dict[str, Any]) -> str:
        return json.dumps(data, indent=2) + "\n"
    return {Path("docs/fragment.schema.json"): js(fragment_schema()),
            Path("docs/site.schema.json"): js(site_schema(project)),
            Path("docs/fragments.md"): reference_page(project)}
