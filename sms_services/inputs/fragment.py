"""A fragment: everything about one service, in one folder under ``defs/``.

``defs/<name>/fragment.yaml`` declares the service; beside it live the scripts
(``bootstrap.sh``, ``pre-install.sh``, ``build.sh``, ``run.sh``), the site
config templates (``templates/``) and the tests that render them. Adding a
service is adding a folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.errors import UserError
from sms_services.inputs.sitetypes import SiteType, parse_type, shown
from sms_services.inputs.yamlfile import Fields, load_mapping, one_line

FAMILIES = ("debian", "el")
NETWORKS = ("provision", "public", "loopback")
PROTOCOLS = ("tcp", "udp")
# Supervisor modes: a daemon is kept running, a oneshot runs once at start
# (e.g. loading NAT rules), none means the fragment only shapes the image.
MODES = ("daemon", "oneshot", "none")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
CAP_RE = re.compile(r"^CAP_[A-Z_]+$")
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# What may reach a definition or an overlay path unquoted: no space, quote, '$' or newline.
PATH_PART_RE = re.compile(r"[A-Za-z0-9_@+,=:.-]+")
PACKAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_:~-]*")
BINARY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")

# Files that never enter the image and so never change its content hash.
_NOT_IMAGE = re.compile(r"(^|/)(test_[^/]*\.py|__pycache__|.*\.pyc|conftest\.py|golden\.txt)(/|$)")


@dataclass(frozen=True)
class Port:
    port: int
    proto: str
    network: str
    what: str


@dataclass(frozen=True)
class SiteVar:
    name: str
    default: object
    doc: str
    secret: bool = False  # never exported to the run scripts' environment
    type: SiteType = SiteType("word")  # every fragment declares one; checked at site load


@dataclass(frozen=True)
class Probe:
    kind: str
    params: dict[str, object]
    # A site switch (a bool site variable) the probe runs under: a service a site turns on
    # (Slurm's own metrics) is proven only where it was turned on.
    when: str = ""


@dataclass(frozen=True)
class FileMode:
    """Owner and mode a site file must have in the overlay (a secret, mostly)."""

    path: str
    owner: str  # an account of the image, resolved to numbers where the overlay is written
    mode: int


@dataclass(frozen=True)
class Break:
    """How to break the service on a running SMS-services, and what must notice.

    The negative tests run ``script`` (``sh -e`` inside SMS-services, with ``ctl``
    for supervisorctl), expect exactly the probes in ``fails`` of this fragment to
    fail (with ``detail`` in their message, if given) and every other probe of it
    to pass, then run ``repair`` and expect all of them to pass again.
    """

    name: str
    doc: str
    script: str
    repair: str
    fails: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True)
class Fragment:
    name: str
    path: Path
    summary: str
    mode: str
    requires: tuple[str, ...]
    packages: dict[str, tuple[str, ...]]
    capabilities: tuple[str, ...]
    ports: tuple[Port, ...]
    state: tuple[str, ...]
    secrets: tuple[str, ...]
    site: tuple[SiteVar, ...]
    templates: dict[str, str]
    probes: tuple[Probe, ...]
    binaries: tuple[str, ...]
    digest: str = field(compare=False)
    file_modes: tuple[FileMode, ...] = ()
    breaks: tuple[Break, ...] = ()

    # The scripts are optional except run.sh for daemons and oneshots.
    def script(self, name: str) -> str | None:
        p = self.path / name
        return p.read_text(encoding="utf-8") if p.is_file() else None

    @property
    def short_digest(self) -> str:
        return self.digest[:12]


def content_digest(folder: Path) -> str:
    """sha256 over every file that goes into the image, names included."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or _NOT_IMAGE.search(rel):
            continue
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def safe_path(path: str) -> bool:
    """An absolute path without '..', '.', '//' or any character a shell or config would read."""
    parts = path.split("/")
    return (len(parts) > 1 and parts[0] == "" and
            all(p not in (".", "..") and PATH_PART_RE.fullmatch(p) for p in parts[1:]))


SAFE_PATH = "an absolute path without '..' of letters, digits and _@+,=:.-"


def _abs_paths(f: Fields, key: str) -> tuple[str, ...]:
    paths = f.list_of_str(key)
    for i, p in enumerate(paths):
        if not safe_path(p):
            raise f.fail(f"{key}[{i}]", f"must be {SAFE_PATH}, found {shown(p)}")
    return tuple(paths)


def _names(f: Fields, key: str, pattern: re.Pattern[str], what: str) -> list[str]:
    names = f.list_of_str(key)
    for i, n in enumerate(names):
        if not pattern.fullmatch(n):
            raise f.fail(f"{key}[{i}]", f"must be {what}, found {shown(n)}")
    return names


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop leads nowhere we would read
        return False


def _confined(folder: Path) -> None:
    """No link in a fragment may lead out of it: whatever it names would go into the image
    (files/), into the overlay (templates/) or into the definition (scripts)."""
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() and not _inside(p, folder):
            raise UserError(f"{one_line(str(p))}: a link out of fragment {folder.name} "
                            f"(to {one_line(os.readlink(p))}); "
                            "copy the file into the fragment instead")


def _template(tf: Fields, folder: Path, src: str) -> str:
    """A template's source stays in templates/ and its target is a plain absolute path."""
    parts = src.split("/")
    if src.startswith("/") or any(p in ("", ".", "..") or not PATH_PART_RE.fullmatch(p) for p in parts):
        raise tf.fail(src, "must name a file under templates/ (a relative path without '..')")
    path = folder / "templates" / src
    if not _inside(path, folder / "templates"):
        raise tf.fail(src, f"names templates/{src}, which leads out of {folder}/templates")
    if not path.is_file():
        raise tf.fail(src, f"names templates/{src}, which does not exist in {folder}")
    target = tf.str(src, required=True)
    if not safe_path(target):
        raise tf.fail(src, f"target must be {SAFE_PATH}, found {shown(target)}")
    return target


def load_fragment(folder: Path) -> Fragment:
    name = folder.name
    meta_path = folder / "fragment.yaml"
    if not NAME_RE.fullmatch(name):
        raise UserError(f"{folder}: fragment folder names are lower-case words with dashes")
    f = Fields(load_mapping(meta_path), meta_path)
    f.unknown({
        "summary", "mode", "requires", "packages", "capabilities", "ports", "state",
        "secrets", "site", "templates", "probes", "binaries", "file_modes", "breaks",
    })
    mode = f.str("mode", "daemon")
    if mode not in MODES:
        raise f.fail("mode", f"must be one of {', '.join(MODES)}, found {mode!r}")

    # Keys are families (debian, el) or base names (bookworm, EL_9) for a base
    # that differs; base names are checked against releases.yaml in checks.py.
    pk = f.mapping("packages")
    packages = {key: tuple(_names(pk, key, PACKAGE_RE, "a package name")) for key in sorted(pk.data)}

    caps = tuple(f.list_of_str("capabilities"))
    for i, c in enumerate(caps):
        if not CAP_RE.fullmatch(c):
            raise f.fail(f"capabilities[{i}]", f"must be a capability name like CAP_NET_ADMIN, found {c!r}")

    ports = []
    for pf in f.list_of_mappings("ports"):
        pf.unknown({"port", "proto", "network", "what"})
        port = pf.int("port", required=True)
        if not 0 < port < 65536:
            raise pf.fail("port", f"must be 1-65535, found {port}")
        proto = pf.str("proto", "tcp")
        if proto not in PROTOCOLS:
            raise pf.fail("proto", f"must be tcp or udp, found {proto!r}")
        net = pf.str("network", "provision")
        if net not in NETWORKS:
            raise pf.fail("network", f"must be one of {', '.join(NETWORKS)}, found {net!r}")
        ports.append(Port(port, proto, net, pf.str("what", name)))

    site = []
    sf = f.mapping("site")
    for var in sorted(sf.data):
        vf = sf.mapping(var)
        vf.unknown({"default", "doc", "secret", "type", "min", "max", "choices", "empty"})
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(var)):
            raise sf.fail(str(var), "must be a lower-case name with '_' (it becomes SMS_<NAME> in site.env)")
        try:
            vtype = parse_type(vf.data.get("type"), vf.data)
        except ValueError as err:
            raise vf.fail("type", str(err)) from None
        default, secret = vf.data.get("default"), vf.bool("secret")
        if default is not None and vtype.problem(default) is not None:
            raise vf.fail("default", f"must be {vtype.expected()}, found {shown(default, secret)}")
        site.append(SiteVar(var, default, vf.str("doc", required=True), secret, vtype))

    _confined(folder)
    tf = f.mapping("templates")
    templates = {src: _template(tf, folder, str(src)) for src in sorted(tf.data)}

    probes = []
    for pf in f.list_of_mappings("probes"):
        kind = pf.str("kind", required=True)
        when = pf.str("when", "")
        switch = next((v for v in site if v.name == when), None)
        if when and (switch is None or switch.type.spec != "boolean"):
            raise pf.fail("when", f"{when!r} must be a boolean site variable this fragment declares "
                                  "(the switch that turns the probed feature on)")
        probes.append(Probe(kind, {k: v for k, v in pf.data.items() if k not in ("kind", "when")}, when))

    file_modes = []
    ff = f.mapping("file_modes")
    for path in sorted(ff.data):
        mf = ff.mapping(path)
        mf.unknown({"owner", "mode"})
        if not safe_path(path):
            raise ff.fail(path, f"must be {SAFE_PATH}")
        owner = mf.str("owner", "root")
        if not ACCOUNT_RE.fullmatch(owner):
            raise mf.fail("owner", f"must be an account name, found {owner!r}")
        mode_text = mf.str("mode", required=True)
        if not re.fullmatch(r"0[0-7]{3}", mode_text):
            raise mf.fail("mode", f"must be an octal mode in quotes like \"0400\", found {mode_text!r}")
        file_modes.append(FileMode(path, owner, int(mode_text, 8)))

    breaks = []
    names = set()
    for bf in f.list_of_mappings("breaks"):
        bf.unknown({"name", "doc", "break", "repair", "fails", "detail"})
        bname = bf.str("name", required=True)
        if not NAME_RE.fullmatch(bname) or bname in names:
            raise bf.fail("name", f"must be a unique lower-case word with dashes, found {bname!r}")
        names.add(bname)
        fails = tuple(bf.list_of_str("fails"))
        if not fails:
            raise bf.fail("fails", "must name the probes (kind[param=value]) the break makes fail")
        breaks.append(Break(bname, bf.str("doc", required=True), bf.str("break", required=True),
                            bf.str("repair", required=True), fails, bf.str("detail", "")))

    if mode != "none" and not (folder / "run.sh").is_file():
        raise UserError(
            f"{folder}/run.sh: missing run script for {mode} fragment '{name}'; "
            "add it, or set 'mode: none' in fragment.yaml"
        )

    return Fragment(
        name=name,
        path=folder,
        summary=f.str("summary", required=True),
        mode=mode,
        requires=tuple(f.list_of_str("requires")),
        packages=packages,
        capabilities=caps,
        ports=tuple(ports),
        state=_abs_paths(f, "state"),
        secrets=_abs_paths(f, "secrets"),
        site=tuple(site),
        templates=templates,
        probes=tuple(probes),
        file_modes=tuple(file_modes),
        breaks=tuple(breaks),
        binaries=tuple(_names(f, "binaries", BINARY_RE, "a command name")),
        digest=content_digest(folder),
    )


def load_fragments(defs: Path) -> dict[str, Fragment]:
    """Every fragment folder under ``defs`` (a folder without fragment.yaml is skipped)."""
    if not defs.is_dir():
        raise UserError(f"{defs}: fragment folder not found; run from the project root or set --defs")
    out = {}
    for folder in sorted(p for p in defs.iterdir() if p.is_dir() and (p / "fragment.yaml").exists()):
        if not _inside(folder, defs):
            raise UserError(f"{one_line(str(folder))}: a link out of {defs} (to {one_line(os.readlink(folder))}); "
                            "a fragment lives in its folder under defs/")
        out[folder.name] = load_fragment(folder)
    return out


def order(selected: list[str], fragments: dict[str, Fragment], origin: str) -> list[Fragment]:
    """Fragments in dependency order (deterministic), checking every requirement.

    ``origin`` names where the selection came from, for the error message.
    """
    chosen = []
    for name in selected:
        if name not in fragments:
            raise UserError(f"{origin}: fragment '{name}' does not exist under defs/ "
                            f"(known: {', '.join(sorted(fragments))})")
        chosen.append(fragments[name])
    names = {f.name for f in chosen}
    for frag in chosen:
        for dep in frag.requires:
            if dep not in names:
                raise UserError(
                    f"{frag.path}/fragment.yaml: field 'requires' names '{dep}', which is not in "
                    f"{origin}; add '{dep}' there or drop the requirement"
                )
    # Depth-first walk in name order: the same inputs always give the same order,
    # and a cycle is reported with its members.
    done: list[Fragment] = []
    state: dict[str, int] = {}
    by_name = {f.name: f for f in chosen}

    def visit(f: Fragment, trail: list[str]) -> None:
        if state.get(f.name) == 2:
            return
        if state.get(f.name) == 1:
            cycle = trail[trail.index(f.name):] + [f.name]
            raise UserError(
                f"{f.path}/fragment.yaml: field 'requires' makes a dependency cycle "
                f"({' -> '.join(cycle)}); remove one of these requirements"
            )
        state[f.name] = 1
        for dep in sorted(f.requires):
            visit(by_name[dep], trail + [f.name])
        state[f.name] = 2
        done.append(f)

    # base first: every other fragment installs onto it.
    for f in sorted(chosen, key=lambda f: (f.name != "base", f.name)):
        visit(f, [])
    return done
