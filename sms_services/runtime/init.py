"""smsctl init: a new instance's overlay, made from a site file for an image's release.

An overlay holds an instance's whole state. A new one holds exactly what the
image cannot: the site's files (rendered, or the site's own Slurm files) with
the owners and modes the image's accounts need (fragments' ``file_modes``: the
munge key 0400 munge, slurmdbd.conf 0600), the munge key, and the state folders
every fragment declares, owned as the image owns them. Nothing else.

The lab seeds its scratch overlays with the same two functions (``seed_of``,
``seed_overlay``), so what verify proves is what init makes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.image.accounts import owner_of
from sms_services.inputs.fragment import Fragment
from sms_services.inputs.project import Project
from sms_services.inputs.site import Site, load_site, render_site
from sms_services.inputs.slurmconf import SLURM_DIR, problems
from sms_services.runtime.migrate import Plan, plan_import
from sms_services.runtime.lease import require_free
from sms_services.runtime.overlay import create_overlay, in_use

MUNGE_KEY = "/etc/munge/munge.key"
KEY_MIN, KEY_MAX = 1024, 16384  # munged refuses shorter keys; mungekey makes 1 KiB, allows up to 16 KiB
Folders = dict[str, tuple[int, int, int] | None]  # image path -> uid, gid, mode; None: a symlink there


@dataclass(frozen=True)
class Seed:
    """What goes into a new overlay's upper layer."""

    files: dict[str, str | bytes]
    owners: dict[str, tuple[int, int]]
    modes: dict[str, int]
    folders: list[str]  # the state folders and every parent of a file or folder, parents first


def file_modes(fragments: tuple[Fragment, ...] | list[Fragment],
               passwd: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """Owners (uid, gid from ``passwd``) and modes of the files the fragments declare
    under ``file_modes`` (the munge key 0400 munge, ...)."""
    owners: dict[str, tuple[int, int]] = {}
    modes: dict[str, int] = {}
    for frag in fragments:
        for fm in frag.file_modes:
            modes[fm.path] = fm.mode
            if fm.owner != "root":
                owners[fm.path] = owner_of(passwd, fm.owner)
    return owners, modes


def seed_of(site: Site, fragments: tuple[Fragment, ...], release: str, passwd: str, munge_key: bytes) -> Seed:
    """The site's files, the munge key and the fragments' state folders, with their owners and modes."""
    files: dict[str, str | bytes] = dict(render_site(site, fragments, release))
    files[MUNGE_KEY] = munge_key
    owners, modes = file_modes(fragments, passwd)
    state = {p for frag in fragments for p in frag.state}
    wanted: set[str] = set()
    for path in [*state, *files]:
        parents = PurePosixPath(path).parents if path in files else [PurePosixPath(path), *PurePosixPath(path).parents]
        wanted.update(str(p) for p in parents if str(p) != "/")
    return Seed(files, owners, modes, sorted(wanted))


def image_folders(apptainer: Apptainer, sif: Path, paths: list[str]) -> Folders:
    """Owner and mode of each of ``paths`` the image has (one exec); the others are absent."""
    if not paths:
        return {}
    script = 'for p; do if [ -L "$p" ]; then echo "L $p"; elif [ -d "$p" ]; then stat -c "%u %g %a %n" "$p"; fi; done'
    res = apptainer.exec(sif, ["sh", "-c", script, "sh", *paths], extra=["--contain", "--no-home"])
    if res.returncode != 0:
        raise UserError(f"{sif}: cannot read its folders ({last_line(res.stderr)})")
    out: Folders = {}
    for line in res.stdout.splitlines():
        if line.startswith("L /"):
            out[line[2:]] = None
            continue
        m = re.match(r"^(\d+) (\d+) ([0-7]+) (/.*)$", line)
        if m:
            out[m.group(4)] = (int(m.group(1)), int(m.group(2)), int(m.group(3), 8))
    return out


def seed_overlay(path: Path, seed: Seed, found: Folders, *, size_mib: int, replace: bool = False) -> None:
    """Write ``seed`` into a new overlay at ``path``: each folder owned as the image owns it
    (``found``); one the image lacks is root's, 0755 (its run script makes it its own); none
    where the image has a symlink (a real folder in the upper layer would hide its target)."""
    me = os.geteuid()
    default = (0, 0, 0o755) if me == 0 else (me, os.getegid(), 0o755)
    links = [PurePosixPath(p) for p, attrs in found.items() if attrs is None]
    folders = {p: found.get(p) or default for p in seed.folders
               if not any(PurePosixPath(p).is_relative_to(link) for link in links)}
    create_overlay(path, seed.files, size_mib=size_mib, owners=seed.owners, modes=seed.modes, folders=folders,
                   replace=replace)


# --- the checks init makes before it writes anything --------------------------------
def read_munge_key(path: Path) -> bytes:
    """An existing cluster's munge key, refused unless only its owner (this user: root) can read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise UserError(f"{path}: cannot read the munge key ({err.strerror})") from None
    st = os.fstat(fd)  # of what was opened: no swap between check and read
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UserError(f"{path}: not a regular file; give the munge key file (usually /etc/munge/munge.key)")
    with os.fdopen(fd, "rb") as fh:
        if st.st_uid != os.geteuid():
            raise UserError(f"{path}: owned by uid {st.st_uid}; a munge key must be readable by root only "
                            f"(chown root {path}; chmod 0400 {path})")
        if st.st_mode & 0o077:
            raise UserError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read or change the munge key; "
                            f"chmod 0400 {path} (and ask whether it leaked)")
        if not KEY_MIN <= st.st_size <= KEY_MAX:
            raise UserError(f"{path}: {st.st_size} bytes; a munge key is 1 KiB..16 KiB ({KEY_MIN}..{KEY_MAX} "
                            "bytes; mungekey makes 1 KiB)")
        data = fh.read(KEY_MAX + 1)
    if not KEY_MIN <= len(data) <= KEY_MAX:
        raise UserError(f"{path}: changed while it was read; try again")
    return data


def parse_size(text: str) -> int:
    """'4G', '512M', '1T', '4096' (MiB) -> MiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([MGT]?)i?B?\s*", text, re.I)
    if not m or int(m.group(1)) == 0:
        raise UserError(f"--size {text!r}: give a size like 4G or 512M")
    mib = int(m.group(1)) * {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    if mib < 64:
        raise UserError(f"--size {text}: at least 64M (the state of a small cluster needs more than that)")
    return mib


def check_free_space(folder: Path, size_mib: int) -> None:
    """The overlay is sparse, but the state it grows to must fit: refuse a filesystem too small for it."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize // 2**20
    if free < size_mib:
        raise UserError(f"{folder}: {free} MiB free, less than the overlay's {size_mib} MiB; free space, "
                        "choose another folder or a smaller --size")


def check_slurm_with_image(apptainer: Apptainer, sif: Path, files: dict[str, str | bytes]) -> None:
    """Slurm's own parser, from the image, on the site's slurm.conf and what it includes
    (slurmctld has no test mode; every Slurm command reads slurm.conf in full and stops
    at the first option or value it rejects)."""
    if f"{SLURM_DIR}/slurm.conf" not in files:
        return
    work = Path(tempfile.mkdtemp(prefix="sms-init-slurm-"))
    try:
        for target, content in files.items():
            if target.startswith(SLURM_DIR + "/") and target.count("/") == 3 and not target.endswith("slurmdbd.conf"):
                data = content if isinstance(content, bytes) else content.encode()
                (work / PurePosixPath(target).name).write_bytes(data)
        res = apptainer.exec(sif, ["scontrol", "show", "hostnames", "localhost"], timeout=60,
                             extra=["--contain", "--no-home", "--bind", f"{work}:{SLURM_DIR}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if res.returncode != 0:
        lines = [ln.removeprefix("scontrol: ") for ln in res.stderr.splitlines()
                 if "error" in ln and "fatal" not in ln]
        detail = "; ".join(lines[:2]) or last_line(res.stderr)
        raise UserError(f"slurm.conf: the image's Slurm rejects it: {detail}")


@dataclass(frozen=True)
class ImageFacts:
    """What init needs of the image: its release and Slurm (labels) and accounts."""

    sif: Path
    release: str
    passwd: str
    group: str = ""
    shadow: str = ""
    slurm: str = ""  # the installed slurmctld's version


def image_facts(project: Project, apptainer: Apptainer, sif: Path) -> ImageFacts:
    from sms_services.image.accounts import image_accounts

    labels = apptainer.labels(sif)
    release = labels.get("sms-services.release", "")
    if release not in project.matrix.releases:
        raise UserError(f"{sif}: not an SMS-services image (no known sms-services.release label)")
    passwd, group, shadow = image_accounts(apptainer, sif)
    return ImageFacts(sif, release, passwd, group, shadow, labels.get("sms-services.slurm.installed", ""))


@dataclass(frozen=True)
class Made:
    overlay: Path
    release: str
    size_mib: int
    files: list[str]
    folders: int
    new_key: bool


def init(project: Project, image: ImageFacts, *, site_path: Path, overlay: Path, size_mib: int,
         munge_key: Path | None, new_key: bool, force: bool = False, apptainer: Apptainer | None = None,
         from_sms: Path | None = None, keep_slurm_conf: bool = False, dry_run: bool = False,
         say: Callable[[str], None] = lambda s: None) -> Made | None:
    """Check everything, then make the overlay (with ``from_sms``: say the import plan first;
    ``dry_run``: only that). ``apptainer``: also read the image's folders and run its Slurm
    on the site's slurm.conf (None only in tests without root)."""
    if overlay.exists() and not force:
        raise UserError(f"{overlay}: exists already; smsctl init makes a new overlay (--force replaces it)")
    if overlay.exists() and (not overlay.is_file() or in_use(overlay)):
        raise UserError(f"{overlay}: {'in use by a running instance' if overlay.is_file() else 'not a file'}; "
                        "--force replaces only a stopped instance's overlay")
    if overlay.exists():
        require_free(overlay, "replace it")  # an instance on another host sharing the storage
    if not overlay.parent.is_dir():
        raise UserError(f"{overlay.parent}: no such folder")
    if from_sms is None and munge_key is None and not new_key:
        raise UserError("give --munge-key FILE (the key the cluster's nodes hold) or --new-munge-key "
                        "(a new cluster: give its nodes the same key)")
    if from_sms is not None and new_key:
        raise UserError("--new-munge-key with --from-sms: the nodes hold the old SMS's key; leave it out")
    if from_sms is None and (keep_slurm_conf or dry_run):
        raise UserError("--keep-slurm-conf and --dry-run go with --from-sms ROOT")
    fragments = project.sms_fragments(image.release)
    site = load_site(site_path, fragments, list(project.fragments.values()))
    state_paths = sorted({p for f in fragments for p in f.state})
    plan = None
    if from_sms is not None:
        if keep_slurm_conf and site.values.get("slurm_conf"):
            raise UserError(f"{site_path}: names its own slurm_conf; --keep-slurm-conf would keep the old SMS's "
                            "instead: give one of them")
        plan = plan_import(from_sms, site=site, state_paths=state_paths,
                           image=(image.passwd, image.group, image.shadow), image_slurm=image.slurm,
                           keep_slurm_conf=keep_slurm_conf, need_key=munge_key is None)
        for line in plan.imports:
            say(f"import: {line}")
        for line in plan.changes:
            say(f"change: {line}")
        for line in plan.refusals:
            say(f"refused: {line}")
        if plan.refusals:
            raise UserError(f"--from-sms {from_sms}: {len(plan.refusals)} problem(s) above; nothing was written")
        if dry_run:
            return None
    if munge_key is not None:
        key = read_munge_key(munge_key)
    elif plan is not None and plan.munge_key is not None:
        key = plan.munge_key
    else:
        key = secrets.token_bytes(KEY_MIN)
    seed = seed_of(site, fragments, image.release, image.passwd, key)
    imported: Folders = {}
    if plan is not None:
        seed = _with_plan(seed, plan)
        imported = dict(plan.folders)
    text = {k: v for k, v in seed.files.items() if isinstance(v, str)}
    found = problems(text, hostname=str(site.values.get("sms_hostname", "")),
                     address=str(site.values.get("provision_ip", "")), state=state_paths,
                     metrics=bool(site.values.get("slurm_metrics")), slurm=image.slurm)
    if found:
        raise UserError(f"{site_path}: " + "; ".join(found))
    check_free_space(overlay.parent, size_mib)
    folders: Folders = {}
    if apptainer is not None:
        check_slurm_with_image(apptainer, image.sif, seed.files)
        folders = image_folders(apptainer, image.sif, seed.folders)
    seed_overlay(overlay, seed, {**folders, **imported}, size_mib=size_mib, replace=force)
    return Made(overlay, image.release, size_mib, sorted(seed.files), len(seed.folders), new_key)


def _with_plan(seed: Seed, plan: Plan) -> Seed:
    """The seed with what the plan imports (files, owners, modes replace the rendered ones)."""
    files = {**seed.files, **plan.files}
    wanted = set(seed.folders) | set(plan.folders)
    for path in plan.files:
        wanted.update(str(p) for p in PurePosixPath(path).parents if str(p) != "/")
    for path in plan.folders:
        wanted.update(str(p) for p in PurePosixPath(path).parents if str(p) != "/")
    return Seed(files, {**seed.owners, **plan.owners}, {**seed.modes, **plan.modes}, sorted(wanted))
