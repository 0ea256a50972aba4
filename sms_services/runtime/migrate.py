"""smsctl init --from-sms ROOT: what an existing (monolithic) SMS hands over to SMS-services.

ROOT is the old SMS's root filesystem, mounted read-only, or an unpacked copy of
the paths read here. The plan imports the Slurm state (StateSaveLocation, so
running jobs carry on), the munge key the nodes hold, the cluster's users and
groups (uid/gid >= 1000), and with ``keep_slurm_conf`` its Slurm files. It says
what it imports and what it must change, and refuses, one line each, what
cannot work: a controller host that is not SMS-services, a configless setup
that is not, state from a Slurm the image's cannot load (Slurm's upgrade
window, as for cutover and rehearse), state kept outside the state paths.
Nothing is written here: ``init`` writes the overlay from the plan.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sms_services import slurm
from sms_services.errors import UserError
from sms_services.image.accounts import Accounts, ids, merge
from sms_services.inputs.site import Site
from sms_services.inputs.slurmconf import SLURM_DIR, includes, problems, settings

# Slurm files beside slurm.conf that a kept configuration brings along when ROOT has them.
SLURM_FILES = ("cgroup.conf", "gres.conf", "topology.conf", "acct_gather.conf", "job_container.conf",
               "plugstack.conf", "oci.conf", "helpers.conf", "scrontab.conf")
FIRST_USER, NOBODY = 1000, 65534
STATE_DEST = "/var/spool/slurmctld"  # where the rendered slurm.conf keeps state
# Slurm's state files begin with packstr("PROTOCOL_VERSION") and a 16-bit protocol
# version whose high byte grows by one per major release: 35 was 20.02.
_STATE_FILES = ("job_state", "node_state", "part_state")
_FIRST_PROTOCOL = 35


@dataclass
class Plan:
    root: Path
    imports: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    folders: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    munge_key: bytes | None = None


def state_version(folder: Path) -> str | None:
    """The Slurm major that wrote the state in ``folder`` ('24.11'), None when it has none."""
    for name in _STATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        head = path.read_bytes()[:64]
        tag = b"PROTOCOL_VERSION\0"
        if len(head) < 4 + len(tag) + 2 or head[4:4 + len(tag)] != tag:
            raise UserError(f"{path}: not a Slurm state file (no PROTOCOL_VERSION header)")
        (version,) = struct.unpack(">H", head[4 + len(tag):4 + len(tag) + 2])
        index = (version >> 8) - _FIRST_PROTOCOL
        if not 0 <= index < len(slurm.MAJORS):
            raise UserError(f"{path}: written by a Slurm this tool does not know (protocol {version >> 8}); "
                            f"known: {', '.join(slurm.MAJORS)}")
        return slurm.MAJORS[index]
    return None


def inside(root: Path, path: str) -> Path:
    """``path`` of the old SMS, under ROOT: a link or '..' that leads out of ROOT (an absolute
    link on a mounted root points at this host's own files) is refused, not followed."""
    p = root / path.lstrip("/")
    real, top = p.resolve(), root.resolve()
    if real != top and top not in real.parents:
        raise UserError(f"{p}: leads out of {root} (to {real}); give a copy of the old SMS without that link")
    return real


def _read(root: Path, path: str) -> bytes | None:
    p = inside(root, path)
    try:
        return p.read_bytes() if p.is_file() else None
    except OSError as err:
        raise UserError(f"{p}: cannot read it ({err.strerror})") from None


def _users(old: Accounts) -> tuple[str, str, str]:
    """The cluster's own users and groups of the old SMS: ids >= 1000 (not nobody)."""
    def mine(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if len(line.split(":")) > 3 and line.split(":")[2].isdigit()
                and FIRST_USER <= int(line.split(":")[2]) != NOBODY]
    users = mine(old[0])
    names = {u.split(":")[0] for u in users}
    shadow = [line for line in old[2].splitlines() if line.split(":")[0] in names]
    return "\n".join(users), "\n".join(mine(old[1])), "\n".join(shadow)


def plan_import(root: Path, *, site: Site, state_paths: list[str], image: Accounts, image_slurm: str,
                keep_slurm_conf: bool, need_key: bool = True) -> Plan:
    """What ``init --from-sms ROOT`` would import and change, and what it refuses."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give the old SMS's root filesystem (mounted read-only) "
                        "or an unpacked copy of its /etc and Slurm state")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"{root}: cannot read it")
    plan = Plan(root)
    conf_bytes = _read(root, f"{SLURM_DIR}/slurm.conf")
    if conf_bytes is None:
        raise UserError(f"{root}: no etc/slurm/slurm.conf there; is it the old SMS's root?")
    conf = conf_bytes.decode(errors="replace")
    keys = settings(conf)
    hostname, address = str(site.values.get("sms_hostname", "")), str(site.values.get("provision_ip", ""))

    # Slurm files: kept, or rendered from the site (then the old state moves to the rendered location).
    kept: dict[str, str] = {}
    if keep_slurm_conf:
        kept[f"{SLURM_DIR}/slurm.conf"] = conf
        names = [*(f"{SLURM_DIR}/{n}" for n in SLURM_FILES), *includes(conf)]
        for path in dict.fromkeys(names):
            data = _read(root, path)
            if data is not None:
                kept[path] = data.decode(errors="replace")
        plan.files.update(kept)
        plan.imports.append(f"Slurm config: {', '.join(sorted(kept))} (kept instead of the rendered ones)")
    found = problems({f"{SLURM_DIR}/slurm.conf": conf, **kept}, hostname=hostname, address=address,
                     state=state_paths, metrics=bool(site.values.get("slurm_metrics")), slurm=image_slurm)
    if not keep_slurm_conf:  # the rendered slurm.conf keeps state where it should, includes nothing,
        # and says MetricsType exactly when the site asks (init checks that one against the image)
        found = [p for p in found if not any(w in p for w in ("StateSaveLocation=", "Include ", "MetricsType"))]
    plan.refusals += [f"{root}/etc/slurm/{line}" for line in found]

    # The controller's state: where the old slurm.conf kept it.
    where = keys.get("statesavelocation", "/var/spool/slurmctld")
    dest = where if keep_slurm_conf else STATE_DEST
    source = inside(root, where)
    version = state_version(source) if source.is_dir() else None
    if version is None:
        plan.refusals.append(f"{source}: no Slurm state (job_state) there: the StateSaveLocation of "
                             f"{root}/etc/slurm/slurm.conf; stop the old slurmctld only after it saved its state")
    else:
        try:
            allowed, why = slurm.upgrade_allowed(version, image_slurm)
        except ValueError:  # an image built before the label, or a Slurm this tool does not know
            allowed, why = False, f"the image's Slurm version {image_slurm!r} is unknown (label sms-services.slurm.installed)"
        if not allowed:
            plan.refusals.append(f"{source}: state of Slurm {version}, the image runs {image_slurm}: {why}")
        count = _import_tree(plan, source, dest, image=image, old_passwd=_text(root, "/etc/passwd"),
                             old_group=_text(root, "/etc/group"))
        plan.imports.append(f"Slurm state: {where} ({count} files, Slurm {version}) -> {dest}")
        if dest != where:
            plan.changes.append(f"StateSaveLocation {where} -> {dest} (the rendered slurm.conf's)")

    # The munge key the nodes hold.
    key = _read(root, "/etc/munge/munge.key") if need_key else None
    if not need_key:
        plan.changes.append("munge key: the one --munge-key gives, not the old SMS's")
    elif key is None:
        plan.refusals.append(f"{root}/etc/munge/munge.key: missing; the nodes' key must come along (or give "
                             "--munge-key)")
    elif not 1024 <= len(key) <= 16384:
        plan.refusals.append(f"{root}/etc/munge/munge.key: {len(key)} bytes; a munge key is 1 KiB..16 KiB")
    else:
        plan.munge_key = key
        plan.imports.append("munge key: /etc/munge/munge.key (the one the nodes hold)")

    # The cluster's users and groups, added to the image's system accounts.
    old = (_text(root, "/etc/passwd"), _text(root, "/etc/group"), _text(root, "/etc/shadow"))
    users = _users(old)
    taken = set(ids(image[0])) | set(ids(image[1]))
    clashes = sorted({line.split(":")[0] for text in users[:2] for line in text.splitlines()} & taken)
    if clashes:
        plan.changes.append(f"not imported, the image has accounts of these names: {', '.join(clashes)}")
    # slurmd takes a controller's messages only from SlurmUser's number as the node knows it
    # (the old SMS's passwd is what the nodes were given). The new controller runs as the kept
    # slurm.conf's SlurmUser (Slurm's default: root), or as the rendered one's (slurm).
    slurm_user = keys.get("slurmuser", "root") if keep_slurm_conf else "slurm"
    was, now = ids(old[0]).get(slurm_user), ids(image[0]).get(slurm_user)
    if was is not None and now is not None and was != now:
        plan.changes.append(f"SlurmUser {slurm_user} is uid {was} on the old SMS, {now} in the image: the nodes "
                            f"must know {slurm_user} as {now} before the move (the passwd SMS-mgmt serves them), "
                            "or slurmd refuses the new controller")
    merged = merge(image, users)
    plan.files.update(merged)
    n_users, n_groups = len(users[0].splitlines()), len(users[1].splitlines())
    plan.imports.append(f"accounts: {n_users} users, {n_groups} groups (uid/gid >= {FIRST_USER})"
                        + ("" if old[2] else "; no /etc/shadow: passwords stay locked"))
    plan.modes["/etc/shadow"] = 0o640
    plan.owners["/etc/shadow"] = (0, ids(image[1]).get("shadow", 0))
    return plan


def _text(root: Path, path: str) -> str:
    data = _read(root, path)
    return data.decode(errors="replace") if data is not None else ""


def _import_tree(plan: Plan, source: Path, dest: str, *, image: Accounts, old_passwd: str, old_group: str) -> int:
    """Every file and folder under ``source`` into the plan at ``dest``, owners moved by name to
    the image's numbers (the old SMS numbered slurm its own way)."""
    uid_names = {v: k for k, v in ids(old_passwd).items()}
    gid_names = {v: k for k, v in ids(old_group).items()}
    new_uids, new_gids = ids(image[0]), ids(image[1])

    def owner(st: os.stat_result) -> tuple[int, int]:  # a number without a name stays as it is
        return (new_uids.get(uid_names.get(st.st_uid, ""), st.st_uid),
                new_gids.get(gid_names.get(st.st_gid, ""), st.st_gid))

    count = 0
    for dirpath, dirnames, filenames in os.walk(source):
        rel = PurePosixPath(dest) / Path(dirpath).relative_to(source).as_posix()
        target = str(rel).rstrip("/") if str(rel) != "." else dest
        st = os.lstat(dirpath)
        plan.folders[target] = (*owner(st), stat.S_IMODE(st.st_mode))
        for name in filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue  # (sockets, links: nothing slurmctld keeps as state)
            key = f"{target}/{name}"
            plan.files[key] = path.read_bytes()
            plan.owners[key] = owner(st)
            plan.modes[key] = stat.S_IMODE(st.st_mode)
            count += 1
        dirnames.sort()
    return count
