"""A production SMS-services instance: started from a record, so it can be replaced.

``smsctl start`` starts a signed image on the site's bridges and writes what it
did to ``$SMS_STATE_DIR/instances/<name>.json`` (default /var/lib/sms-services):
image, overlay, site file, bridges, binds, and how to reach a compute node. A
cutover (``smsctl cutover --to NEW``) reads that record to start the new image
exactly like the old one, and rewrites it only once the new image runs.

Probes run as in the lab, with two differences an admin expects on a live
cluster: a compute node is reached with a command of the site's choosing (ssh
by default, the way pdsh does it), and probes that need the lab's own hosts (a
public host to relay through, an SMS-mgmt we may change) or free nodes (test
jobs) are left out unless asked for.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.files import atomic_write
from sms_services.image.accounts import Accounts, image_accounts, merge
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site
from sms_services.probes.registry import IDLE_NODES
from sms_services.runtime.instance import (
    caps_of,
    cni_dir,
    exec_command,
    instance_list,
    instance_pids,
    mac_for,
    start_instance,
    stop_instance,
    write_network,
)
from sms_services.runtime.lease import acquire, renewer_gone, spawn_renewer
from sms_services.runtime.lease import release as release_lease
from sms_services.runtime.lease import read as read_lease
from sms_services.runtime.overlay import read_overlay_file
from sms_services.runtime.overlay_care import require_clean
from sms_services.runtime.target import SmsTarget

DEFAULT_STATE = Path("/var/lib/sms-services")
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_NODE_EXEC = "ssh -o BatchMode=yes -o ConnectTimeout=5 {node}"


def state_dir() -> Path:
    return Path(os.environ.get("SMS_STATE_DIR", DEFAULT_STATE))


def images_dir() -> Path:
    """Where the checked copies of started images are kept (runtime/pin.py)."""
    return state_dir().resolve() / "images"


@dataclass
class Record:
    """How an instance was started: everything a cutover needs to start another image the same way."""

    name: str
    sif: str  # the private read-only copy that was checked and started (runtime/pin.py)
    release: str
    overlay: str
    site: str
    provision_bridge: str
    public_bridge: str
    node_exec: str = DEFAULT_NODE_EXEC
    binds: list[str] = field(default_factory=list)
    signer: str = ""
    started: str = ""
    pid_file: str = ""  # Apptainer writes the instance's pid there at every start (a unit's PIDFile)
    lease_token: str = ""  # the overlay's lease (runtime/lease.py) this instance holds
    history: list[dict[str, str]] = field(default_factory=list)  # earlier images, newest last
    source: str = ""  # the path the admin gave, which ``sif`` was copied from

    @staticmethod
    def path_of(name: str) -> Path:
        # The name becomes a file name under root's state folder and an Apptainer instance name.
        if not INSTANCE_NAME.fullmatch(name):
            raise UserError(f"instance name {name!r}: use letters, digits, '.', '_' and '-' only, "
                            "starting with a letter or digit")
        return state_dir() / "instances" / f"{name}.json"

    @classmethod
    def load(cls, name: str) -> Record:
        path = cls.path_of(name)
        if not path.is_file():
            raise UserError(f"{path}: no record of an instance named {name!r}; start it with "
                            f"smsctl start --name {name} ... (or give --name)")
        try:
            data: Any = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: not a record smsctl start wrote ({err}); start the instance again "
                            "with smsctl start") from None

    def save(self) -> None:
        path = self.path_of(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(asdict(self), indent=2) + "\n")


class Deployment(SmsTarget):
    """A recorded production instance, with what probes and a cutover need of it."""

    host = ""  # a deployment is replaced on the host it runs on

    def __init__(self, project: Project, apptainer: Apptainer, record: Record, *, jobs: bool = False) -> None:
        self.project, self.apptainer, self.record = project, apptainer, record
        self.sms_sif = Path(record.sif)
        # Image started -> the path it was copied from, for the record (the caller adds new ones).
        self.sources: dict[Path, str] = {Path(record.sif): record.source}
        self.sms_overlay = Path(record.overlay)
        self.release = record.release
        self.sms_fragments = project.sms_fragments(record.release)
        self.site = load_site(Path(record.site), self.sms_fragments, list(project.fragments.values()))
        self.nodes = [str(n["name"]) for n in self.site.values.get("nodes", [])]
        # Test jobs only when asked: on a live cluster the nodes are busy.
        self.provides = frozenset({IDLE_NODES}) if jobs else frozenset()
        self.sms_started_at = 0.0
        self.work = Path(tempfile.mkdtemp(prefix=f"sms-cutover-{record.name}-"))
        self._accounts: Accounts | None = None

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running commands --------------------------------------------------------------
    def exec_command(self, node: str | None, command: list[str]) -> list[str]:
        """On SMS-services: apptainer exec. On a node: the record's node command, given the
        command as one shell string (as ssh passes it to the remote shell)."""
        if node is None:
            return exec_command(self.apptainer, self.record.name, caps_of(self.sms_fragments), command)
        return [*shlex.split(self.record.node_exec.replace("{node}", node)), shlex.join(command)]

    def slurmd_versions(self) -> list[str]:
        """The slurmd versions the controller has seen on the nodes (``scontrol show node``)."""
        rc, out, err = self.on_node(self.nodes[0], ["scontrol", "-o", "show", "node"])
        if rc != 0:
            raise UserError(f"cutover: cannot read the nodes' slurmd versions from {self.nodes[0]} "
                            f"({(err or out).strip()[:200]}); check --node-exec")
        return sorted({f.split("=", 1)[1] for f in out.split() if f.startswith("Version=") and f != "Version=(null)"})

    # --- the instance ---------------------------------------------------------------------
    def running(self) -> bool:
        return bool(instance_pids(self.apptainer, self.record.name))

    def stop_sms(self) -> float:
        seconds, _ = stop_instance(self.apptainer, self.record.name, self.sms_overlay)
        return seconds  # (the `instance stop` left finishing needs nobody to wait for it)

    def start_sms(self, sif: Path, *, host: str = "") -> float:
        """Start ``sif`` as the recorded instance: same name, addresses, MAC, overlay, binds."""
        rec = self.record
        site = self.site.values
        cni = cni_dir()
        prov, pub = f"{rec.name}-prov", f"{rec.name}-pub"
        write_network(cni, prov, rec.provision_bridge, forward=True)
        write_network(cni, pub, rec.public_bridge)
        prefix = _prefix(site["provision_network"])
        t = time.monotonic()
        start_instance(self.apptainer, sif, rec.name, hostname=str(site["sms_hostname"]), overlay=self.sms_overlay,
                       caps=caps_of(self.sms_fragments),
                       nets=[(prov, f"{self.sms_ip}/{prefix}", mac_for(self.sms_ip)),
                             (pub, f"{self.sms_public_ip}/{_prefix(site['public_network'])}", None)],
                       extra=[a for b in rec.binds for a in ("--bind", b)]
                       + (["--pid-file", rec.pid_file] if rec.pid_file else []), what="start")
        self.sms_started_at = time.monotonic()
        if rec.lease_token:  # production starts hold the overlay's lease; renew it while this instance lives
            lease = read_lease(self.sms_overlay)
            if lease is None or lease.token != rec.lease_token:
                stop_instance(self.apptainer, rec.name, self.sms_overlay)
                raise UserError(f"{self.sms_overlay}: this instance no longer holds the overlay's lease "
                                f"({lease.describe() if lease else 'no lease'}); stopped it again")
            try:
                spawn_renewer(self.sms_overlay, lease, instance_list(self.apptainer, rec.name).get(rec.name, 0),
                              rec.name, self.apptainer.binary)
            except BaseException:
                stop_instance(self.apptainer, rec.name, self.sms_overlay)  # never a writer without a lease
                raise
        if Path(rec.sif) != sif or rec.release != self.release:
            rec.history.append({"sif": rec.sif, "source": rec.source, "release": rec.release, "until": _now()})
        rec.sif, rec.release, rec.started = str(sif), self.release, _now()
        rec.source = self.sources.get(sif, "")
        self.sms_sif = sif
        rec.save()
        return round(self.sms_started_at - t, 2)

    # --- accounts, for a cutover across releases --------------------------------------
    @property
    def passwd(self) -> str:
        return self._image_accounts()[0]

    @property
    def group(self) -> str:
        return self._image_accounts()[1]

    @property
    def shadow(self) -> str:
        return self._image_accounts()[2]

    def _image_accounts(self) -> Accounts:
        if self._accounts is None:
            self._accounts = image_accounts(self.apptainer, self.sms_sif)
        return self._accounts

    def image_accounts(self, sif: Path) -> Accounts:
        return image_accounts(self.apptainer, sif)

    def image_name(self, sif: Path) -> str:
        return Path(self.sources.get(sif) or sif).name

    def adopt_accounts(self, passwd: str, group: str, shadow: str) -> dict[str, str]:
        """The new image's system accounts plus the cluster's users now in the overlay.
        SMS-mgmt must serve the same numbers from now on, or its next sync undoes them."""
        current = []
        for path in ("/etc/passwd", "/etc/group", "/etc/shadow"):
            try:
                current.append(read_overlay_file(self.sms_overlay, path).decode())
            except UserError:
                current.append("")
        self._accounts = (passwd, group, shadow)
        return merge((passwd, group, shadow), (current[0], current[1], current[2]))


def is_bridge(name: str) -> bool:
    """A Linux bridge of this network namespace (netlink: /sys may show another namespace's)."""
    try:
        out = subprocess.run(["ip", "-details", "-json", "link", "show", "dev", name], capture_output=True,
                             text=True, timeout=10).stdout
        return any(link.get("linkinfo", {}).get("info_kind") == "bridge" for link in json.loads(out or "[]"))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False


def _prefix(network: object) -> int:
    return ipaddress.ip_network(str(network)).prefixlen


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def start(project: Project, apptainer: Apptainer, sif: Path, *, name: str, overlay: Path, site: Path,
          provision_bridge: str, public_bridge: str, node_exec: str = DEFAULT_NODE_EXEC,
          binds: list[str] | None = None, signer: str = "", source: Path | None = None,
          take_over: bool = False, pid_file: Path | None = None,
          say: Callable[[str], None] = lambda s: None) -> Deployment:
    """Start ``sif`` on ``overlay`` and record how (the caller has checked its signature:
    ``sif`` is the checked copy, ``source`` the path it came from)."""
    if not overlay.is_file():
        raise UserError(f"{overlay}: no such overlay; make it first (smsctl init SIF --site SITE --overlay "
                        f"{overlay} --munge-key KEY), or restore a backup")
    for bridge in (provision_bridge, public_bridge):
        if not is_bridge(bridge):
            raise UserError(f"bridge {bridge!r}: no such Linux bridge on this host; create it "
                            "(ip link add NAME type bridge) or name the right one")
    release = apptainer.labels(sif).get("sms-services.release", "")
    if release not in project.matrix.releases:
        raise UserError(f"{sif}: not an SMS-services image (no known sms-services.release label)")
    if instance_pids(apptainer, name):
        raise UserError(f"instance {name} is already running; smsctl cutover --name {name} --to {source or sif} replaces it")
    if pid_file:
        pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # The lease first: e2fsck's verdict on an overlay another host has mounted means nothing.
    lease = acquire(overlay, name, take_over=take_over, say=say)
    dep: Deployment | None = None
    try:
        require_clean(overlay, name=name)
        record = Record(name=name, sif=str(sif), release=release, overlay=str(overlay), site=str(site.resolve()),
                        provision_bridge=provision_bridge, public_bridge=public_bridge, node_exec=node_exec,
                        binds=list(binds or []), signer=signer, source=str(source or sif),
                        lease_token=lease.token, pid_file=str(pid_file.absolute()) if pid_file else "")
        if Record.path_of(name).is_file():  # a restart (a reboot, the unit): the record's history goes on
            old = Record.load(name)
            record.history = old.history
            if old.sif != record.sif:
                record.history.append({"sif": old.sif, "source": old.source, "release": old.release,
                                       "until": _now()})
        dep = Deployment(project, apptainer, record)
        dep.start_sms(sif)
    except BaseException:
        if dep is not None:
            dep.close()
        release_lease(overlay, lease.token)
        raise
    return dep


def records() -> list[Record]:
    """Every recorded instance of this host."""
    folder = state_dir() / "instances"
    return [Record.load(p.stem) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def stop(project: Project, apptainer: Apptainer, name: str) -> float:
    with Deployment(project, apptainer, Record.load(name)) as dep:
        if not dep.running():
            # A crash left its lease: free the overlay for another host, as a clean stop would;
            # but not while its renewer still watches a live instance process (a false "not
            # running" here would let Pacemaker start a second writer elsewhere).
            if dep.record.lease_token and not renewer_gone(dep.sms_overlay, dep.record.lease_token):
                raise UserError(f"instance {name}: Apptainer does not list it, but its lease renewer still "
                                "watches a live instance process; the lease stays: look at `apptainer instance "
                                f"list` and the processes of {name}, then stop again")
            freed = bool(dep.record.lease_token) and release_lease(dep.sms_overlay, dep.record.lease_token)
            raise UserError(f"instance {name} is not running" + ("; its lease on the overlay is released" if freed
                                                                 else ""))
        seconds = dep.stop_sms()
        if dep.record.lease_token:
            release_lease(dep.sms_overlay, dep.record.lease_token)  # a clean stop: another host may start it now
        return seconds

