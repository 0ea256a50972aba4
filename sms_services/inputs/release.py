"""The release matrix: ``releases.yaml`` as typed objects.

A *release* is an OpenHPC release id ("3.5"); a *variant* is one way to build
its image (``el`` from the OpenHPC repository, ``debian`` from a Debian suite
whose Slurm can serve the release's compute nodes); a *base* is the OS a variant
bootstraps from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sms_services import slurm
from sms_services.errors import UserError
from sms_services.inputs.fragment import FAMILIES, NAME_RE
from sms_services.inputs.sitetypes import shown
from sms_services.inputs.yamlfile import Fields, load_mapping, one_line

OHPC_REPO = "http://repos.openhpc.community/OpenHPC"
# Every field below reaches the definition (headers, %post, labels) or a URL: each is held to
# a narrow form, so a release entry can never add a line or a section (a %setup runs on the host).
WAREWULF_RE = re.compile(r"(3|4\.[0-9]+)")
SLURM_RE = re.compile(r"[0-9]{2}\.[0-9]{2}")
RELEASE_RE = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
BASE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
SUITE_RE = re.compile(r"[a-z][a-z0-9.-]{0,31}")
OSVERSION_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3})?")
URL_RE = re.compile(r"(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|file://)(/[A-Za-z0-9._~%+,=@:-]*)*")


def _matching(f: Fields, key: str, pattern: re.Pattern[str], what: str) -> str:
    value = f.str(key, required=True)
    if not pattern.fullmatch(value):
        raise f.fail(key, f"must be {what}, found {shown(value)}")
    return value


@dataclass(frozen=True)
class Base:
    name: str
    family: str
    mirror: str
    suite: str = ""      # debian
    osversion: str = ""  # el
    slurm: str = ""      # the Slurm major this base's own packages ship (debian)


@dataclass(frozen=True)
class Variant:
    """One buildable flavour of a release."""

    release: Release
    kind: str  # "debian" or "el"
    base: Base

    @property
    def family(self) -> str:
        return self.base.family

    @property
    def slurm(self) -> str:
        """The slurmctld major inside the image."""
        return self.base.slurm if self.kind == "debian" else self.release.slurm

    @property
    def name(self) -> str:
        return f"{self.release.id}-{self.kind}"

    @property
    def ohpc_repo(self) -> str:
        return f"{OHPC_REPO}/{self.release.ohpc_major}/{self.base.name}"

    @property
    def ohpc_release_rpm(self) -> str:
        major = self.release.ohpc_major
        el = self.base.osversion
        return f"{self.ohpc_repo}/x86_64/ohpc-release-{major}-1.el{el}.x86_64.rpm"

    def serves(self) -> list[str]:
        """Compute-node Slurm majors this image's controller can serve."""
        return slurm.served_majors(self.slurm)


@dataclass(frozen=True)
class Release:
    id: str
    slurm: str
    warewulf: str
    fragments: tuple[str, ...]
    el: Base | None
    debian: Base | None
    compute: tuple[str, ...] = ()  # fragments of the lab's compute-node image

    def role_fragments(self, role: str) -> tuple[str, ...]:
        return self.compute if role == "compute" else self.fragments

    @property
    def ohpc_major(self) -> str:
        return self.id.split(".")[0]

    @property
    def warewulf_generation(self) -> int:
        return int(self.warewulf.split(".")[0])

    @property
    def wwclient_protocol(self) -> str:
        """The file-sync request SMS-mgmt of this release answers (see defs/wwclient): every
        Warewulf 4 answers /provision/<wwid>?stage=runtime, what its own wwclient asks up to
        4.6; a site whose 4.7+ runs with ``tls: true`` sets ww4-runtime-tls itself."""
        return "ww3" if self.warewulf == "3" else "ww4-provision"

    def variants(self) -> list[Variant]:
        out = []
        if self.debian:
            out.append(Variant(self, "debian", self.debian))
        if self.el:
            out.append(Variant(self, "el", self.el))
        return out

    def variant(self, kind: str | None = None) -> Variant:
        """``kind`` None picks the variant this machine builds: debian when there is one."""
        variants = {v.kind: v for v in self.variants()}
        if kind is None:
            return variants.get("debian") or variants["el"]
        if kind not in variants:
            have = ", ".join(variants) or "none"
            raise UserError(f"release {self.id} has no {kind} variant (it has: {have})")
        return variants[kind]


@dataclass(frozen=True)
class Matrix:
    path: Path
    default: str
    releases: dict[str, Release]
    bases: dict[str, Base]
    default_fragments: tuple[str, ...] = ()

    def get(self, release_id: str) -> Release:
        if release_id not in self.releases:
            raise UserError(
                f"unknown release '{release_id}' (not in {self.path}); "
                f"known: {', '.join(self.releases)}; see 'smsctl releases'"
            )
        return self.releases[release_id]


def _base(name: str, f: Fields) -> Base:
    f.unknown({"family", "suite", "mirror", "osversion", "slurm"})
    family = f.str("family", required=True)
    if family not in FAMILIES:
        raise f.fail("family", f"must be one of {', '.join(FAMILIES)}, found {shown(family)}")
    mirror = _matching(f, "mirror", URL_RE, "an http://, https:// or file:// URL of letters, digits and ._~%+,=@:-")
    if family == "debian":
        suite = _matching(f, "suite", SUITE_RE, "a Debian suite name like trixie")
        major = _matching(f, "slurm", SLURM_RE, "a Slurm major like 24.11")
        try:
            slurm.index(major)
        except ValueError as err:
            raise f.fail("slurm", one_line(str(err))) from None
        return Base(name, family, mirror, suite=suite, slurm=major)
    return Base(name, family, mirror, osversion=_matching(f, "osversion", OSVERSION_RE, "an EL version like 9"))


def _fragment_names(f: Fields, key: str) -> list[str]:
    names = f.list_of_str(key)
    for i, n in enumerate(names):
        if not NAME_RE.fullmatch(n):
            raise f.fail(f"{key}[{i}]", f"must be a fragment name (lower-case word with dashes), found {shown(n)}")
    return names


def load_matrix(path: Path) -> Matrix:
    top = Fields(load_mapping(path), path)
    top.unknown({"schema", "default", "defaults", "bases", "releases"})
    if top.int("schema", required=True) != 1:
        raise top.fail("schema", "must be 1 (this smsctl reads schema 1)")

    bases = {}
    bf = top.mapping("bases", required=True)
    for name in bf.data:
        if not BASE_RE.fullmatch(str(name)):
            raise bf.fail(str(name), "must be a base name like trixie or EL_9 (letters, digits, _.-)")
        bases[str(name)] = _base(str(name), bf.mapping(name))

    defaults = top.mapping("defaults")
    defaults.unknown({"fragments", "compute"})
    default_frags = _fragment_names(defaults, "fragments")
    compute_frags = tuple(_fragment_names(defaults, "compute"))

    releases: dict[str, Release] = {}
    rf = top.mapping("releases", required=True)
    for rid in rf.data:
        if not isinstance(rid, str) or not RELEASE_RE.fullmatch(rid):  # unquoted, 3.10 would be 3.1
            raise rf.fail(str(rid), "is not an OpenHPC release id like 3.5 (quote it in YAML)")
        r = rf.mapping(rid)
        r.unknown({"slurm", "warewulf", "el", "debian", "fragments", "with", "without"})
        major = _matching(r, "slurm", SLURM_RE, "a Slurm major like 24.11")
        try:
            slurm.index(major)
        except ValueError as err:
            raise r.fail("slurm", one_line(str(err))) from None
        ww = r.str("warewulf", required=True)
        if not WAREWULF_RE.fullmatch(ww):
            raise r.fail("warewulf", f"must be 3 or 4.<minor> (e.g. 4.6), found {shown(ww)}")

        def pick(key: str, family: str, r: Fields = r) -> Base | None:
            name = r.str(key)
            if name is None:
                return None
            if name not in bases:
                raise r.fail(key, f"names base {shown(name)}, not defined under 'bases'")
            if bases[name].family != family:
                raise r.fail(key, f"names base '{name}', which is {bases[name].family}, not {family}")
            return bases[name]

        el, deb = pick("el", "el"), pick("debian", "debian")
        if el is None and deb is None:
            raise r.fail("el", "is missing; a release needs an el or a debian base")
        if deb is not None and not slurm.can_serve(deb.slurm, major):
            raise r.fail(
                "debian",
                f"names {deb.name} whose Slurm {deb.slurm} cannot serve Slurm {major} compute nodes "
                f"(it serves {', '.join(slurm.served_majors(deb.slurm))}); pick another suite or drop it",
            )
        frags = _fragment_names(r, "fragments") or list(default_frags)
        for extra in _fragment_names(r, "with"):
            if extra not in frags:
                frags.append(extra)
        for gone in _fragment_names(r, "without"):
            if gone not in frags:
                raise r.fail("without", f"names '{gone}', which the release does not have")
            frags.remove(gone)
        if not frags:
            raise r.fail("fragments", "is empty; list the services of this release")
        releases[str(rid)] = Release(str(rid), major, ww, tuple(frags), el, deb, compute_frags)

    default = top.str("default", required=True)
    if default not in releases:
        raise top.fail("default", f"names release {shown(default)}, which is not under 'releases'")
    return Matrix(path, default, releases, bases, tuple(default_frags))
