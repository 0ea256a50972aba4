"""Fragments + a release variant -> an Apptainer definition.

Each fragment renders its own part (scripts, files, supervisor program); this
module only stitches the parts in dependency order. Nothing global: everything
the text depends on is in the :class:`RenderContext`, so the same context
always gives the same text (the golden tests hold us to that).

The image is built in three layers so that a changed fragment does not redo
the OS bootstrap or the package downloads:

* ``os``       -- bootstrap the base OS (cached by its own text);
* ``packages`` -- every fragment's pre-install step and packages (cached);
* ``final``    -- files, build steps, supervisor programs, labels (always rebuilt).

``layer="all"`` gives the same content as one stand-alone definition, which is
what ``smsctl render`` prints and what an admin can build by hand.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from sms_services import __version__
from sms_services.image.definition import Definition
from sms_services.inputs.fragment import Fragment
from sms_services.inputs.project import Project, git_commit
from sms_services.inputs.release import Variant

LAYERS = ("os", "packages", "final")
LIBEXEC = "/usr/libexec/sms-services"
SHARE = "/usr/share/sms-services"
ETC = "/etc/sms-services"
MANIFEST = f"{SHARE}/manifest.txt"


@dataclass(frozen=True)
class Provenance:
    """Where a build came from; part of the context so renders stay reproducible."""

    commit: str
    tool_version: str


@dataclass(frozen=True)
class RenderContext:
    variant: Variant
    fragments: tuple[Fragment, ...]  # dependency order
    provenance: Provenance
    root: Path  # project root: %files sources are written relative to it
    role: str = "sms"  # "sms": the SMS-services image; "compute": the lab's compute node

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fragments]


def render_context(project: Project, variant: Variant, commit: str | None = None,
                   role: str = "sms") -> RenderContext:
    """What one render needs: the variant, its fragments in order, and where it came from."""
    prov = Provenance(commit if commit is not None else git_commit(project.root), __version__)
    return RenderContext(variant, project.ordered(variant, role), prov, project.root, role)


def packages_for(frag: Fragment, variant: Variant) -> tuple[str, ...]:
    """A base-specific list (e.g. ``bookworm:``) wins over the family list."""
    return frag.packages.get(variant.base.name) or frag.packages.get(variant.family, ())


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def files_of(frag: Fragment, root: Path) -> list[tuple[str, str]]:
    """(source relative to root, destination in image) for everything a fragment ships."""
    out = []
    if (frag.path / "run.sh").is_file():
        out.append((_rel(frag.path / "run.sh", root), f"{LIBEXEC}/{frag.name}/run"))
    for src in sorted(frag.templates):
        out.append((_rel(frag.path / "templates" / src, root), f"{SHARE}/templates/{frag.name}/{src}"))
    tree = frag.path / "files"
    if tree.is_dir():
        for p in sorted(tree.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                out.append((_rel(p, root), "/" + p.relative_to(tree).as_posix()))
    return out


def script_lines(frag: Fragment, name: str, ctx: RenderContext) -> list[str]:
    """A fragment's build-step script as definition lines (golden.py records the same lines)."""
    body = frag.script(name)
    if body is None:
        return []
    lines = [ln for ln in body.rstrip("\n").splitlines() if not ln.startswith("#!")]
    # A subshell per step: a fragment's `set`/variables never leak into the next,
    # and its failure fails the build (the outer %post runs with -e).
    return [f"# --- {frag.name}: {name}", "(", f"SMS_FAMILY={ctx.variant.family}",
            f"SMS_BASE={ctx.variant.base.name}", *lines, ")"]


def dependency_depth(fragments: tuple[Fragment, ...]) -> dict[str, int]:
    """How many levels of (supervised) requirements lie below each fragment.

    The supervisor priority is this depth, not the position in the order:
    supervisord starts and stops one priority level at a time, so programs that
    do not depend on each other share a level and stop together (one tick, not one each).
    """
    by_name = {f.name: f for f in fragments}
    depth: dict[str, int] = {}
    for f in fragments:  # dependency order: requirements come first
        below = [depth[d] + (by_name[d].mode != "none") for d in f.requires if d in depth]
        depth[f.name] = max(below, default=0)
    return depth


def stop_ranks(fragments: tuple[Fragment, ...]) -> dict[str, int]:
    """When each program stops in the instance's fast stop (the start script's): 0 for what
    no daemon requires, then what those required, and so on; one rank at a time, all of a
    rank at once.

    munged must outlive slurmctld: slurmctld's last RPCs at its exit, job launches among
    them, each need a credential; stopped at the same moment, such a launch could fail and
    leave a job RUNNING in the saved state that no node received.
    """
    rank: dict[str, int] = {}
    for f in reversed(fragments):  # dependency order reversed: whatever requires f comes first
        # A fragment without a program passes its dependents' needs on (slurmctld -> slurm-common
        # -> munge); a oneshot has ended long before any stop.
        rank[f.name] = max((rank[g.name] + (g.mode == "daemon") for g in fragments
                            if f.name in g.requires and g.mode != "oneshot"), default=0)
    return rank


def program_conf(frag: Fragment, priority: int, stop_rank: int = 0) -> list[str]:
    """The supervisord program for one fragment: the order is the priority."""
    daemon = frag.mode == "daemon"
    return [
        f"[program:{frag.name}]",
        # (launch notes the program's stop rank under its pid, for the start script's stop)
        f"command={LIBEXEC}/launch {stop_rank} {frag.name}",
        f"priority={priority}",
        "autostart=true",
        f"autorestart={'true' if daemon else 'false'}",
        f"startsecs={2 if daemon else 0}",
        "startretries=100",
        "exitcodes=0",
        "stopsignal=TERM",
        # The start script's stop waits 10 s for every program, and so does `apptainer
        # instance stop -t 10`; 3 s here let supervisord's own shutdown SIGKILL a slurmctld
        # still writing a large state (50,000 jobs on a busy host) before either gave up.
        "stopwaitsecs=10",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        "stdout_logfile=/var/log/sms-services/%(program_name)s.log",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=3",
    ]


def _header(defn: Definition, ctx: RenderContext, layer: str, from_image: str | None) -> None:
    v = ctx.variant
    # Cached layers are keyed by their text: os and packages layers name only what
    # they depend on, so every release (and role) on the same base shares them.
    if layer == "os":
        what = f"OS layer for {v.base.name}"
    elif layer == "packages":
        what = f"packages layer for {v.base.name}: {' '.join(ctx.names)}"
    else:
        role = "compute node" if ctx.role == "compute" else "SMS-services"
        what = (f"OpenHPC {v.release.id} {role}, {v.kind} variant ({v.base.name})"
                + (f", layer {layer}" if layer != "all" else ""))
    defn.comments = [
        f"sms-services definition: {what}",
        "Generated by 'smsctl render'; change defs/ or releases.yaml instead of this file.",
    ]
    if from_image is not None:
        defn.header = {"Bootstrap": "localimage", "From": from_image}
    elif v.family == "debian":
        defn.header = {"Bootstrap": "debootstrap", "OSVersion": v.base.suite, "MirrorURL": v.base.mirror}
    else:
        defn.header = {"Bootstrap": "yum", "OSVersion": v.base.osversion, "MirrorURL": v.base.mirror,
                       "Include": "dnf"}


def _os_steps(ctx: RenderContext) -> list[str]:
    lines: list[str] = []
    for frag in ctx.fragments:
        lines += script_lines(frag, "bootstrap.sh", ctx)
    return lines


def _package_steps(ctx: RenderContext) -> list[str]:
    v = ctx.variant
    lines: list[str] = []
    for frag in ctx.fragments:
        lines += script_lines(frag, "pre-install.sh", ctx)
    wanted = sorted({p for f in ctx.fragments for p in packages_for(f, v)})
    lines.append("# --- packages of: " + " ".join(ctx.names))
    if v.family == "debian":
        lines += [
            "export DEBIAN_FRONTEND=noninteractive",
            # sid's Release file is valid for a week only; a site mirror or snapshot that
            # lags behind must still install (signatures are still checked).
            "apt-get -o Acquire::Check-Valid-Until=false update",
            "apt-get install -y --no-install-recommends \\",
            *[f"    {p} \\" for p in wanted[:-1]],
            f"    {wanted[-1]}",
            # A bound host cache keeps the .debs for the next build; otherwise drop them.
            "mountpoint -q /var/cache/apt/archives || apt-get clean",
            # apt's binary caches are ~80 MB and rebuilt on demand.
            "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin",
        ]
    else:
        lines += [
            f"dnf -y install epel-release {v.ohpc_release_rpm}",
            "dnf -y install dnf-plugins-core",
            f"dnf config-manager --set-enabled {'powertools' if v.base.osversion == '8' else 'crb'}",
            "dnf -y install \\",
            *[f"    {p} \\" for p in wanted[:-1]],
            f"    {wanted[-1]}",
            "dnf clean all",
        ]
    return lines


def _final_steps(ctx: RenderContext) -> list[str]:
    v = ctx.variant
    lines: list[str] = []
    for frag in ctx.fragments:
        lines += script_lines(frag, "build.sh", ctx)
    lines += ["# --- supervisor programs, in dependency order", f"mkdir -p {ETC}/supervisor.d"]
    depth, ranks = dependency_depth(ctx.fragments), stop_ranks(ctx.fragments)
    for i, frag in enumerate(f for f in ctx.fragments if f.mode != "none"):
        conf = f"{ETC}/supervisor.d/{(i + 1) * 10:03d}-{frag.name}.conf"
        lines += [f"cat > {conf} <<'SMS_EOF'", *program_conf(frag, 10 * (depth[frag.name] + 1), ranks[frag.name]),
                  "SMS_EOF"]
    release_env = {
        "SMS_RELEASE": v.release.id,
        "SMS_VARIANT": v.kind,
        "SMS_BASE": v.base.name,
        "SMS_FRAGMENTS": " ".join(ctx.names),
        "SMS_SLURM_SERVES": " ".join(v.serves()),
        "SMS_WAREWULF": v.release.warewulf,
        "SMS_RELEASE_WWCLIENT_PROTOCOL": v.release.wwclient_protocol,
    }
    lines += ["# --- what this image is, for scripts at run time",
              f"cat > {ETC}/release.env <<'SMS_EOF'",
              *[f"{k}={shlex.quote(val)}" for k, val in release_env.items()],
              "SMS_EOF",
              f"chmod 0755 {LIBEXEC}/*/run {LIBEXEC}/start {LIBEXEC}/launch 2>/dev/null || true"]
    lines += ["# --- keep the image small: no docs, man pages or foreign locales",
              "rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/*",
              "find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'en*' ! -name locale.alias "
              "-exec rm -rf {} + 2>/dev/null || true"]
    targets = sorted({dest for f in ctx.fragments for dest in f.templates.values()})
    if targets:
        # Site config is rendered into the overlay. A package's default left here
        # would run silently (e.g. Debian's NTP pool) when a site file is missing.
        lines += ["# --- no site config in the image: the overlay brings it",
                  "rm -f " + " ".join(shlex.quote(d) for d in targets)]
    secrets = sorted({(s, f.name) for f in ctx.fragments for s in f.secrets})
    if secrets:
        lines += ["# --- an image never carries a secret: fail the build if one slipped in"]
        for path, owner in secrets:
            lines.append(f"if [ -e {shlex.quote(path)} ]; then echo \"sms-services: secret {path} "
                         f"(declared by fragment {owner}) is in the image; remove it in "
                         f"defs/{owner}/build.sh\" >&2; exit 1; fi")
    if v.family == "debian":
        manifest = "dpkg-query -W -f '${Package}=${Version}\\n' | LC_ALL=C sort"
    else:
        manifest = "rpm -qa --qf '%{NAME}=%{VERSION}-%{RELEASE}\\n' | LC_ALL=C sort"
    lines += ["# --- provenance known only after the install",
              f"mkdir -p {SHARE}", f"{manifest} > {MANIFEST}",
              'echo "sms-services.slurm.installed $( (slurmctld -V || slurmd -V) 2>/dev/null | cut -d" " -f2)"'
              ' >> "$APPTAINER_LABELS"',
              'echo "sms-services.build-date $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$APPTAINER_LABELS"',
              f'echo "sms-services.manifest.packages $(wc -l < {MANIFEST})" >> "$APPTAINER_LABELS"']
    return lines


def _labels(ctx: RenderContext) -> list[str]:
    v = ctx.variant
    labels = {
        "sms-services.release": v.release.id,
        "sms-services.role": ctx.role,
        "sms-services.variant": v.kind,
        "sms-services.base": v.base.name,
        "sms-services.slurm.compute": v.release.slurm,
        "sms-services.slurm.serves": " ".join(v.serves()),
        "sms-services.warewulf": v.release.warewulf,
        "sms-services.fragments": " ".join(f"{f.name}@{f.short_digest}" for f in ctx.fragments),
        "sms-services.git-commit": ctx.provenance.commit,
        "sms-services.tool-version": ctx.provenance.tool_version,
        "sms-services.manifest": f"apptainer run --app manifest IMAGE (or {MANIFEST})",
    }
    labels.update({f"sms-services.fragment.{f.name}": f.digest for f in ctx.fragments})
    return [f"{k} {val}" for k, val in labels.items()]


def render(ctx: RenderContext, layer: str = "all", from_image: str | None = None) -> Definition:
    """The definition for one layer, or ``all`` for the stand-alone file.

    ``from_image`` is the previous layer's SIF (layers ``packages`` and ``final``).
    """
    if layer not in LAYERS + ("all",):
        raise ValueError(f"unknown layer {layer!r}")
    v = ctx.variant
    defn = Definition()
    _header(defn, ctx, layer, from_image if layer in ("packages", "final") else None)
    final = layer in ("all", "final")
    if final:
        # Apptainer applies %files before %post; the text follows the same order.
        files = defn.section("files")
        for frag in ctx.fragments:
            files.lines += [f"{src} {dst}" for src, dst in files_of(frag, ctx.root)]
    post = defn.section("post")
    post.lines += ["set -eu", "umask 022", "export LC_ALL=C"]
    if layer in ("all", "os"):
        post.lines += ["# ===== layer os"] + _os_steps(ctx)
    if layer in ("all", "packages"):
        post.lines += ["# ===== layer packages"] + _package_steps(ctx)
    if final:
        post.lines += ["# ===== layer final"] + _final_steps(ctx)
        defn.section("labels").lines += _labels(ctx)
        defn.section("environment").lines += [
            f". {ETC}/release.env",
            "export SMS_RELEASE SMS_VARIANT SMS_BASE SMS_FRAGMENTS",
        ]
        defn.section("startscript").lines += [f"exec {LIBEXEC}/start \"$@\""]
        defn.section("runscript").lines += [
            f'echo "sms-services for OpenHPC {v.release.id} ({v.kind}/{v.base.name})"',
            'echo "services: $SMS_FRAGMENTS"',
            'echo "start it as an instance: apptainer instance start ... IMAGE NAME (see smsctl)"',
        ]
        test = defn.section("test")
        test.lines += ["set -e", "# every service binary a fragment declares must be in the image"]
        for frag in ctx.fragments:
            for binary in frag.binaries:
                test.lines.append(f"command -v {shlex.quote(binary)} >/dev/null || "
                                  f"{{ echo 'missing {binary} (fragment {frag.name})' >&2; exit 1; }}")
        defn.section("apprun", "manifest").lines += [f"exec cat {MANIFEST}"]
        defn.section("help").lines += [
            f"SMS-services for OpenHPC {v.release.id}: the time-critical services of an",
            "OpenHPC System Management Server in one read-only image.",
            f"Services: {', '.join(ctx.names)}.",
            f"Serves compute nodes running Slurm {', '.join(v.serves())}.",
            "Package manifest: apptainer run --app manifest IMAGE",
        ]
    return defn
