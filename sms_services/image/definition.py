"""Apptainer definition files as data: render them, parse them, check them.

The checks work on text, so they apply to any definition file (``smsctl lint``)
and catch what Apptainer users trip over before a ten-minute build does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sms_services.errors import UserError

# Bootstrap agents Apptainer 1.x knows (apptainer/internal/pkg/build/sources).
AGENTS = frozenset({
    "library", "docker", "docker-archive", "docker-daemon", "oci", "oci-archive",
    "shub", "oras", "localimage", "debootstrap", "yum", "dnf", "zypper", "busybox",
    "arch", "scratch",
})
# Sections that may appear once per definition (per stage).
SINGLE = frozenset({
    "setup", "post", "environment", "runscript", "startscript", "test", "labels",
    "help", "arguments",
})
# %files may appear more than once ("%files from stage"); %app* take an app name.
MULTI = frozenset({"files"})
APP = frozenset({"appinstall", "apprun", "appenv", "applabels", "apphelp", "appfiles",
                 "appstart", "apptest"})
# Apptainer mounts fresh tmpfs-like dirs here at run time, hiding what a build put there.
EPHEMERAL = ("/tmp", "/var/tmp")


@dataclass
class Section:
    name: str
    arg: str = ""
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = f"%{self.name}" + (f" {self.arg}" if self.arg else "")
        # No indentation: heredoc terminators and config files must start at column 0.
        body = "\n".join(self.lines)
        return head + ("\n" + body if body else "") + "\n"


@dataclass
class Definition:
    comments: list[str] = field(default_factory=list)
    header: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def section(self, name: str, arg: str = "") -> Section:
        """The section, created at the end on first use (so order = first use)."""
        for s in self.sections:
            if s.name == name and s.arg == arg:
                return s
        s = Section(name, arg)
        self.sections.append(s)
        return s

    def text(self) -> str:
        _no_injection(self)
        out = [f"# {c}" if c else "#" for c in self.comments]
        out += [f"{k}: {v}" for k, v in self.header.items()]
        text = "\n".join(out) + "\n"
        for s in self.sections:
            if s.lines or s.name in ("files",):
                text += "\n" + s.render()
        return text


# Python's line breaks (a superset of what Apptainer's parser splits on) and a section start.
_BREAK = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
_STARTS_SECTION = re.compile(r"^\s*%[A-Za-z]")


def _no_injection(defn: Definition) -> None:
    """Refuse a definition in which a value could have added a line or a section.

    The inputs are validated where they are read (releases.yaml, fragment.yaml); this is
    the second wall: every interpolated value sits inside one line of the text, so a line
    break in any of them, or a body line that Apptainer would read as a section header
    (``%setup`` runs as root on the build host), means an input slipped through.
    """
    def refuse(where: str, value: str, why: str) -> UserError:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return UserError(f"definition {where}: {why} in {shown}; an input carries it (fix releases.yaml "
                         "or the fragment)")

    for c in defn.comments:
        if _BREAK.search(c):
            raise refuse("comment", c, "a line break")
    for k, v in defn.header.items():
        if _BREAK.search(k) or _BREAK.search(v) or not _HEADER.match(f"{k}: {v}"):
            raise refuse(f"header {k!r}", v, "a line break or a malformed key")
    for s in defn.sections:
        if _BREAK.search(s.arg) or not re.fullmatch(r"[a-z]+", s.name):
            raise refuse(f"section %{s.name!r}", s.arg, "a line break")
        for line in s.lines:
            if _BREAK.search(line):
                raise refuse(f"section %{s.name}", line, "a line break")
            if _STARTS_SECTION.match(line):
                raise refuse(f"section %{s.name}", line, "a line that starts a new section")


_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9]*):\s*(.*?)\s*$")
_SECTION = re.compile(r"^%([a-z]+)\b\s*(.*?)\s*$")


@dataclass(frozen=True)
class Problem:
    line: int
    message: str


def parse(text: str) -> tuple[dict[str, str], list[tuple[int, Section]], list[Problem]]:
    """Split a definition into header and sections, keeping line numbers."""
    header: dict[str, str] = {}
    sections: list[tuple[int, Section]] = []
    problems: list[Problem] = []
    current: Section | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        m = _SECTION.match(raw)
        if m:
            current = Section(m.group(1), m.group(2))
            sections.append((no, current))
            continue
        if current is not None:
            current.lines.append(raw)
            continue
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        h = _HEADER.match(raw)
        if not h:
            problems.append(Problem(no, f"header line is not 'Key: value': {raw.strip()!r}"))
            continue
        key = h.group(1).lower()
        if key in header:
            problems.append(Problem(no, f"header '{h.group(1)}' given twice"))
        header[key] = h.group(2)
    return header, sections, problems


def lint(text: str) -> list[Problem]:
    """Everything wrong with a definition that Apptainer would only tell us late, or never."""
    header, sections, problems = parse(text)
    agent = header.get("bootstrap")
    if agent is None:
        problems.append(Problem(1, "no 'Bootstrap:' header; add one (e.g. Bootstrap: debootstrap)"))
    elif agent.lower() not in AGENTS:
        problems.append(Problem(1, f"unknown bootstrap agent '{agent}' (known: {', '.join(sorted(AGENTS))})"))
    elif agent.lower() in ("localimage", "docker", "library", "oras", "oci") and "from" not in header:
        problems.append(Problem(1, f"bootstrap agent '{agent}' needs a 'From:' header"))
    elif agent.lower() in ("debootstrap", "yum", "dnf", "zypper") and "mirrorurl" not in header:
        problems.append(Problem(1, f"bootstrap agent '{agent}' needs a 'MirrorURL:' header"))
    elif agent.lower() == "debootstrap" and "osversion" not in header:
        problems.append(Problem(1, "bootstrap agent 'debootstrap' needs an 'OSVersion:' header"))

    seen: dict[tuple[str, str], int] = {}
    for no, s in sections:
        known = s.name in SINGLE or s.name in MULTI or s.name in APP
        if not known:
            problems.append(Problem(no, f"unknown section '%{s.name}'"))
            continue
        if s.name in APP and not s.arg:
            problems.append(Problem(no, f"section '%{s.name}' needs an app name"))
        key = (s.name, s.arg if s.name in APP or s.name in MULTI else "")
        if key in seen and s.name not in MULTI:
            problems.append(Problem(no, f"section '%{s.name}{' ' + s.arg if s.arg else ''}' "
                                         f"appears twice (first at line {seen[key]}); Apptainer keeps only one"))
        seen.setdefault(key, no)
        if s.name in ("files", "appfiles"):
            for off, ln in enumerate(s.lines, 1):
                parts = ln.split()
                if not parts or parts[0].startswith("#"):
                    continue
                dest = parts[1] if len(parts) > 1 else parts[0]
                for eph in EPHEMERAL:
                    if dest == eph or dest.startswith(eph + "/"):
                        problems.append(Problem(
                            no + off,
                            f"%files copies into {dest}: {eph} is replaced at run time, "
                            "so the file would vanish; put it elsewhere (e.g. /usr/share)",
                        ))
    return problems
