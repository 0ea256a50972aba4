"""A small cluster in network namespaces of its own, for ``verify``.

Topology (all addresses from the lab site, 198.18.0.0/15, nothing routed out):

    netns <name>        bridges <name>-p (provisioning) and <name>-u (public), no IPs
      SMS-services      instance, eth0 on -p, eth1 on -u, IP forwarding on
      c1, c2, ...       compute-node instances on -p, default route via SMS-services
    netns <name>-mgmt   the SMS-mgmt stand-in (Warewulf file sync) on -p
    netns <name>-pub    the "internet" host on -u

Apptainer reads its CNI networks from a private copy of apptainer.conf
(``APPTAINER_CONFIG_FILE``), so nothing is written to /etc. Everything is torn
down on exit, on error and on Ctrl-C; a lab left by a crashed run (same name)
is removed before a new one starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.image.accounts import image_accounts, owner_of
from sms_services.inputs.fragment import Fragment
from sms_services.inputs.site import Site, render_site
from sms_services.lab.farm import Farm, farm_nodes
from sms_services.lab.wwserver import overlay_build
from sms_services.probes.registry import NEEDS
from sms_services.probes.system import SUPERVISORCTL
from sms_services.runtime.instance import (
    APPTAINER_CONF,
    caps_of,
    exec_command,
    instance_list,
    instance_pids,
    kill_instance,
    mac_for,
    start_instance,
    stop_instance,
    write_network,
)
from sms_services.runtime.init import image_folders, seed_of, seed_overlay
from sms_services.runtime.overlay import create_overlay, read_overlay_file
from sms_services.runtime.target import SmsTarget


def lab_name(release: str) -> str:
    """Short (interface names are at most 15 characters) and unique per release."""
    return "smslab" + re.sub(r"[^0-9a-z]", "", release.lower())


def _run(cmd: list[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise UserError(f"lab: '{' '.join(cmd)}' failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc


@dataclass
class Node:
    name: str
    ip: str
    instance: str
    overlay: Path


@dataclass
class Lab(SmsTarget):
    release: str
    sms_sif: Path
    compute_sif: Path
    site: Site
    sms_fragments: tuple[Fragment, ...]
    compute_fragments: tuple[Fragment, ...]
    apptainer: Apptainer
    wwclient_protocol: str
    say: Callable[[str], None] = lambda s: None
    warewulf: str = ""  # the release's Warewulf ("3", "4.6"): the stand-in answers as it would
    name: str = ""
    signer: str = ""  # who vouches for the SMS-services image (signing.check)
    work: Path = field(default_factory=Path)
    nodes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _node_info: dict[str, Node] = field(default_factory=dict)
    _instances: list[str] = field(default_factory=list)
    _mgmt: subprocess.Popen | None = None
    _mgmt_users: int = 0
    # An existing overlay to start SMS-services on (a rehearsal's copy of a live
    # one); None: a scratch overlay seeded from the site file.
    sms_overlay: Path | None = None
    host: str = ""  # the network namespace ("infrastructure host") SMS-services runs in
    provides: frozenset[str] = frozenset(NEEDS)  # a lab can run every probe
    # None: every node of the site is an instance of its own. K: the first K are (they run
    # the probes' and tests' real jobs); the rest are slurmd processes of one node farm.
    job_nodes: int | None = None
    farm: Farm | None = None
    munge_threads: int = 4  # the farm's munged (one for every farm node)
    _bridge_mac: str = ""  # the provisioning bridge's own MAC while SMS-services uses host networking

    # --- addresses the lab adds to the site's ------------------------------------
    @property
    def public_host_ip(self) -> str:
        return str(ipaddress.ip_network(str(self.site.values["public_network"])).network_address + 100)

    @property
    def mgmt_ip(self) -> str:
        return str(self.site.values.get("wwclient_server") or
                   ipaddress.ip_network(str(self.site.values["provision_network"])).network_address + 3)

    @property
    def sms_instance(self) -> str:
        return f"{self.name}-sms"

    def node_instance(self, node: str) -> str:
        # "-node-": a site may name a node "sms", which is SMS-services' own instance.
        return f"{self.name}-node-{node}"

    @property
    def node_exec(self) -> str:
        """`smsctl --node-exec` for this lab: a command run on a node through its instance."""
        return f"{self.apptainer.binary} exec --no-privs --pwd / instance://{self.node_instance('{node}')} /bin/sh -c"

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> Lab:
        if os.geteuid() != 0:
            raise UserError("verify needs root (network namespaces and instances with networks)")
        self.name = self.name or lab_name(self.release)
        # Instances start from / (--contain dislikes other working directories).
        self.sms_sif, self.compute_sif = self.sms_sif.resolve(), self.compute_sif.resolve()
        teardown(self.name, self.apptainer, say=self.say)  # what a crashed run left
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        try:
            t = time.monotonic()
            self._network()
            self._hosts()
            self.timings["lab_up_s"] = round(time.monotonic() - t, 2)
            self._start_sms()
            self._start_nodes()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Ctrl-C during teardown must not leave half a lab behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            t = time.monotonic()
            teardown(self.name, self.apptainer, procs=self._procs, say=self.say)
            self.timings.setdefault("teardown_s", round(time.monotonic() - t, 2))  # (it removes self.work too)
        finally:
            signal.signal(signal.SIGINT, old)

    # --- network ----------------------------------------------------------------------
    def _network(self) -> None:
        n = self.name
        ns = ["ip", "-n", n]
        _run(["ip", "netns", "add", n])
        _run([*ns, "link", "set", "lo", "up"])
        for bridge in (f"{n}-p", f"{n}-u"):
            _run([*ns, "link", "add", bridge, "type", "bridge"])
            _run([*ns, "link", "set", bridge, "up"])
        cni = self.work / "cni"
        cni.mkdir()

        # SMS-services routes between the networks: forwarding on in its namespace only.
        write_network(cni, f"{n}-prov", f"{n}-p", forward=True)
        write_network(cni, f"{n}-pub", f"{n}-u")
        write_network(cni, f"{n}-node", f"{n}-p", routes=[{"dst": "0.0.0.0/0", "gw": self.sms_ip}])
        # Name service of the lab: its own hosts file, and no nameserver, so a lookup
        # fails at once instead of timing out against the host's unreachable DNS.
        hosts = ["127.0.0.1 localhost", f"{self.sms_ip} {self.site.values['sms_hostname']}",
                 f"{self.mgmt_ip} sms-mgmt"]
        hosts += [f"{n['address']} {n['name']}" for n in self.site.values.get("nodes", [])]
        (self.work / "hosts").write_text("\n".join(hosts) + "\n")
        (self.work / "resolv.conf").write_text("# the lab has no DNS: /etc/hosts only\noptions timeout:1 attempts:1\n")
        conf = APPTAINER_CONF.read_text() if APPTAINER_CONF.exists() else ""
        conf = re.sub(r"(?m)^\s*#?\s*cni configuration path\s*=.*$", "", conf)
        (self.work / "apptainer.conf").write_text(conf + f"\ncni configuration path = {cni}\n")

    def _host_ns(self, suffix: str, bridge: str, ip: str, prefix: int) -> str:
        ns = f"{self.name}-{suffix}"
        veth = f"{self.name}{suffix[0]}0"
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", self.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", self.name, "link", "set", veth, "master", bridge, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        return ns

    def track(self, proc: subprocess.Popen) -> None:
        """A process of the lab's (started in a session of its own): the teardown ends its group."""
        self._procs.append(proc)

    def _spawn(self, ns: str, args: list[str], log: str) -> subprocess.Popen:
        fh = open(self.work / log, "w")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        return proc

    def _hosts(self) -> None:
        pub = self._host_ns("pub", f"{self.name}-u", self.public_host_ip, self.public_prefix)
        self._spawn(pub, ["-m", "sms_services.lab.publichost", "--bind", self.public_host_ip, "--port", "8080"],
                    "publichost.log")
        self._host_ns("mgmt", f"{self.name}-p", self.mgmt_ip, self.prefix)
        self._seed_mgmt()
        self.start_mgmt()

    # --- SMS-mgmt stand-in -------------------------------------------------------
    def image_accounts(self, sif: Path) -> tuple[str, str, str]:
        return image_accounts(self.apptainer, sif)

    def _set_accounts(self, passwd: str, group: str, shadow: str) -> None:
        self.passwd, self.group, self.shadow = passwd, group, shadow
        self.munge_ids = owner_of(passwd, "munge")

    def adopt_accounts(self, passwd: str, group: str, shadow: str) -> dict[str, str]:
        """SMS-mgmt serves these system accounts (plus the cluster's users) from now on, as
        an admin updates Warewulf's copies after an upgrade; the files SMS-services should hold."""
        self._set_accounts(passwd, group, shadow)
        self._write_mgmt_accounts(self._mgmt_accounts)
        tree = self.work / "mgmt/etc"
        os.chown(tree / "munge/munge.key", *self.munge_ids)
        self.mgmt_build()
        return {f"/etc/{n}": (tree / n).read_text() for n in ("passwd", "group", "shadow")}

    def _seed_mgmt(self) -> None:
        """What SMS-mgmt's Warewulf serves: accounts (the image's plus cluster users),
        slurm.conf and the munge key, as an OpenHPC SMS syncs them to its nodes."""
        # A live overlay brings its cluster's key: the lab's nodes must share it.
        self.munge_key = (read_overlay_file(self.sms_overlay, "/etc/munge/munge.key") if self.sms_overlay
                          else secrets.token_bytes(1024))
        self._set_accounts(*self.image_accounts(self.sms_sif))
        tree = self.work / "mgmt"
        (tree / "etc/munge").mkdir(parents=True)
        (tree / "etc/slurm").mkdir(parents=True)
        self.site_files = render_site(self.site, self.sms_fragments, self.release)
        self._write_mgmt_accounts(["alice:x:2001:2001:Alice:/home/alice:/bin/bash"])
        (tree / "etc/slurm/slurm.conf").write_text(self.site_files.get("/etc/slurm/slurm.conf", ""))
        key = tree / "etc/munge/munge.key"
        key.write_bytes(self.munge_key)
        os.chown(key, *self.munge_ids)
        key.chmod(0o400)
        self.mgmt_build()

    def mgmt_build(self) -> None:
        """The admin's last step after changing SMS-mgmt's files: Warewulf 4 serves a prebuilt
        image and rebuilds it only when nodes.conf changes, so `wwctl overlay build`.  (The
        Warewulf 3 stand-in serves the files as they are, as after `wwsh file sync`.)"""
        if self.wwclient_protocol != "ww3":
            overlay_build(self.work / "mgmt", self.work / "mgmt-provision")

    def _write_mgmt_accounts(self, users: list[str]) -> None:
        tree = self.work / "mgmt/etc"
        names = [u.split(":")[0] for u in users]
        (tree / "passwd").write_text(self.passwd + "".join(u + "\n" for u in users))
        (tree / "group").write_text(self.group + "".join(f"{n}:x:{u.split(':')[3]}:\n"
                                                         for n, u in zip(names, users, strict=True)))
        (tree / "shadow").write_text(self.shadow + "".join(f"{n}:!:19000:0:99999:7:::\n" for n in names))
        (tree / "shadow").chmod(0o640)
        self._mgmt_accounts = users

    def mgmt_update(self) -> str:
        """Add a user on SMS-mgmt (as an admin would) and return its name."""
        self._mgmt_users += 1
        name = f"probe{self._mgmt_users}x{secrets.token_hex(2)}"
        uid = 3000 + self._mgmt_users
        self._write_mgmt_accounts([*self._mgmt_accounts, f"{name}:x:{uid}:{uid}:probe:/nonexistent:/bin/false"])
        self.mgmt_build()
        return name

    def start_mgmt(self) -> None:
        ww3 = self.wwclient_protocol == "ww3"
        wwid = str(self.site.values.get("wwclient_wwid", ""))
        self._mgmt = self._spawn(f"{self.name}-mgmt", [
            "-m", "sms_services.lab.wwserver", "--protocol", self.wwclient_protocol, "--dir",
            str(self.work / "mgmt"), "--port", "80" if ww3 else "9873", "--bind", self.mgmt_ip,
            # Warewulf 3 has no secure mode (file.pl checks no port); Warewulf 4's is on
            *([] if ww3 else ["--secure", "--image-dir", str(self.work / "mgmt-provision")]),
            *(["--warewulf", self.warewulf] if self.warewulf else []),
            *(["--wwid", wwid] if wwid else [])], "mgmt.log")

    def stop_mgmt(self) -> None:
        if self._mgmt and self._mgmt.poll() is None:
            self._mgmt.terminate()
            self._mgmt.wait(10)

    # --- instances ------------------------------------------------------------------
    def _start_instance(self, sif: Path, instance: str, hostname: str, overlay: Path, caps: list[str],
                        nets: list[tuple[str, str, str | None]], extra: list[str], netns: str = "") -> None:
        start_instance(self.apptainer, sif, instance, hostname=hostname, overlay=overlay, caps=caps, nets=nets,
                       extra=["--bind", f"{self.work}/hosts:/etc/hosts",
                              "--bind", f"{self.work}/resolv.conf:/etc/resolv.conf", *extra],
                       netns=netns or self.name, env={"APPTAINER_CONFIG_FILE": str(self.work / "apptainer.conf")},
                       what="lab")
        self._instances.append(instance)

    def _start_sms(self) -> None:
        if self.sms_overlay is None:
            # Seeded exactly as `smsctl init` seeds a production overlay.
            seed = seed_of(self.site, self.sms_fragments, self.release, self.passwd, self.munge_key)
            self.sms_overlay = self.work / "sms-overlay.img"
            seed_overlay(self.sms_overlay, seed, image_folders(self.apptainer, self.sms_sif, seed.folders),
                         size_mib=int(os.environ.get("SMS_LAB_OVERLAY_MIB", "256")))
        self.timings["sms_instance_start_s"] = self.start_sms(self.sms_sif)

    def start_sms(self, sif: Path, *, host: str = "") -> float:
        """Start SMS-services from ``sif`` on the lab's overlay, on ``host`` (a namespace from
        ``add_host``; default the lab's own), with the same addresses; seconds it took."""
        mac = mac_for(self.sms_ip)
        assert self.sms_overlay is not None
        t = time.monotonic()
        self._start_instance(sif.resolve(), self.sms_instance, str(self.site.values["sms_hostname"]),
                             self.sms_overlay, caps_of(self.sms_fragments),
                             [(f"{self.name}-prov", f"{self.sms_ip}/{self.prefix}", mac),
                              (f"{self.name}-pub", f"{self.sms_public_ip}/{self.public_prefix}", None)], [],
                             netns=host)
        self.sms_sif, self.host = sif.resolve(), host
        self.sms_started_at = time.monotonic()
        return round(self.sms_started_at - t, 2)

    def start_sms_host_network(self, sif: Path) -> float:
        """SMS-services without its own network namespace: its daemons in the lab's namespace,
        on the provisioning bridge itself (which takes SMS-services' address), as an image run
        with host networking would. For the load bench's container-overhead comparison; the
        public side is left out. ``stop_sms`` stops it; ``end_host_network`` gives the address back."""
        assert self.sms_overlay is not None
        bridge = f"{self.name}-p"
        # The bridge answers with SMS-services' own MAC, so no node's ARP entry goes stale.
        self._bridge_mac = _run(["ip", "-n", self.name, "-br", "link", "show", bridge]).stdout.split()[2]
        _run(["ip", "-n", self.name, "link", "set", bridge, "address", mac_for(self.sms_ip)])
        _run(["ip", "-n", self.name, "addr", "add", f"{self.sms_ip}/{self.prefix}", "dev", bridge])
        t = time.monotonic()
        self._start_instance(sif.resolve(), self.sms_instance, str(self.site.values["sms_hostname"]),
                             self.sms_overlay, caps_of(self.sms_fragments), [], [])
        self.sms_started_at = time.monotonic()
        return round(self.sms_started_at - t, 2)

    def end_host_network(self) -> None:
        bridge = f"{self.name}-p"
        _run(["ip", "-n", self.name, "addr", "del", f"{self.sms_ip}/{self.prefix}", "dev", bridge], check=False)
        if self._bridge_mac:
            _run(["ip", "-n", self.name, "link", "set", bridge, "address", self._bridge_mac], check=False)

    def add_host(self, suffix: str = "b") -> str:
        """A second infrastructure host: a namespace with its own bridges, cabled to the
        lab's (as a second server on the same switches), seeing the same overlay file
        (as shared storage would). Returns the namespace to give ``start_sms``."""
        ns = f"{self.name}-host{suffix}"
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for net in ("p", "u"):
            # Same bridge names as the lab's: the lab's CNI configs work unchanged there.
            bridge, uplink = f"{self.name}-{net}", f"{self.name}{suffix}{net}"
            _run(["ip", "-n", ns, "link", "add", bridge, "type", "bridge"])
            _run(["ip", "-n", self.name, "link", "add", uplink, "type", "veth", "peer", "name", f"up{net}",
                  "netns", ns])
            _run(["ip", "-n", self.name, "link", "set", uplink, "master", bridge, "up"])
            _run(["ip", "-n", ns, "link", "set", f"up{net}", "master", bridge, "up"])
            _run(["ip", "-n", ns, "link", "set", bridge, "up"])
        return ns

    def _node_overlay(self, overlay: Path) -> None:
        env = render_site(self.site, self.compute_fragments, self.release)["/etc/sms-services/site.env"]
        create_overlay(overlay, {"/etc/munge/munge.key": self.munge_key, "/etc/sms-services/site.env": env},
                       size_mib=64, owners={"/etc/munge/munge.key": self.munge_ids},
                       modes={"/etc/munge/munge.key": 0o400})

    def _start_nodes(self) -> None:
        nodes = list(self.site.values.get("nodes", []))
        full, farmed = (nodes, []) if self.job_nodes is None else farm_nodes(nodes, self.job_nodes)
        t = time.monotonic()
        for node in full:
            name, ip = str(node["name"]), str(node["address"])
            overlay = self.work / f"{name}-overlay.img"
            self._node_overlay(overlay)
            instance = self.node_instance(name)
            self._start_instance(self.compute_sif, instance, name, overlay, caps_of(self.compute_fragments),
                                 [(f"{self.name}-node", f"{ip}/{self.prefix}", None)],
                                 ["--bind", "/sys/fs/cgroup"])
            self._node_info[name] = Node(name, ip, instance, overlay)
            self.nodes.append(name)
        self.timings["job_nodes_start_s"] = round(time.monotonic() - t, 2)
        if farmed:
            self._start_farm(farmed)

    def _start_farm(self, farmed: list) -> None:
        t = time.monotonic()
        self.farm = Farm(self.name, f"{self.name}-p", self.prefix, farmed, self.work)
        self.farm.network()
        self.timings["farm_network_s"] = round(time.monotonic() - t, 2)
        overlay = self.work / "farm-overlay.img"
        self._node_overlay(overlay)
        self.farm.start(self.apptainer, self.compute_sif, overlay, self.work / "hosts", self.work / "resolv.conf",
                        self.sms_ip, self.munge_threads, caps_of(self.compute_fragments))
        assert self.farm.proc is not None
        self._procs.append(self.farm.proc)  # ended (and with it every farm slurmd) at teardown
        self.timings["farm_start_s"] = round(time.monotonic() - t, 2)

    @property
    def farm_node_names(self) -> list[str]:
        return [n.name for n in self.farm.nodes] if self.farm else []

    # --- running commands (the probes' view of the cluster) -----------------------
    def exec_command(self, node: str | None, command: list[str]) -> list[str]:
        """The `apptainer exec` that runs ``command`` on ``node`` (None: on SMS-services)."""
        instance, caps = ((self.sms_instance, caps_of(self.sms_fragments)) if node is None
                          else (self._node_info[node].instance, caps_of(self.compute_fragments)))
        return exec_command(self.apptainer, instance, caps, command)

    def on_public(self, command: list[str], timeout: float = 30) -> tuple[int, str, str]:
        p = subprocess.run(["ip", "netns", "exec", f"{self.name}-pub", *command], capture_output=True,
                           text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def supervisor(self, *args: str) -> tuple[int, str, str]:
        return self.on_sms([*SUPERVISORCTL, *args])

    def running_instances(self) -> list[str]:
        return _mine(self.name, _instances(self.apptainer))

    def stop_sms(self) -> float:
        """Stop the SMS-services instance fast (see ``instance.stop_instance``); seconds it took."""
        seconds, stopper = stop_instance(self.apptainer, self.sms_instance, self.sms_overlay)
        self._procs.append(stopper)  # reaped at teardown if still finishing
        self._forget(self.sms_instance)
        return seconds

    def kill_sms(self) -> None:
        """Power loss: SIGKILL to every process of the SMS-services instance at once."""
        kill_instance(self.apptainer, self.sms_instance, self.sms_overlay)
        self._forget(self.sms_instance)

    def sms_pids(self) -> list[int]:
        return instance_pids(self.apptainer, self.sms_instance)

    def _forget(self, instance: str) -> None:
        if instance in self._instances:
            self._instances.remove(instance)


def _instances(apptainer: Apptainer) -> list[str]:
    try:
        return list(instance_list(apptainer))
    except UserError:
        return []  # a teardown goes on with the namespaces; its leftovers check lists again


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines()
            if line.strip()]


def _pids_in(namespaces: list[str]) -> list[int]:
    """Every process whose network namespace is one of ``namespaces`` (names under /run/netns)."""
    inodes = set()
    for ns in namespaces:
        try:
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        except OSError:
            pass
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.stat(entry / "ns/net").st_ino in inodes:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _mine(name: str, items: list[str]) -> list[str]:
    return [i for i in items if i == name or i.startswith(name + "-")]


def leftovers(name: str, apptainer: Apptainer) -> list[str]:
    """Whatever lab ``name`` still holds: instances, namespaces, work folders, loop devices."""
    found = [f"instance {i}" for i in _mine(name, _instances(apptainer))]
    found += [f"network namespace {ns}" for ns in _mine(name, _namespaces())]
    tmp = Path(tempfile.gettempdir())
    found += [f"work folder {d}" for d in tmp.glob(f"{name}-*")]
    loops = _run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"], check=False).stdout
    found += [f"loop device {line.split()[0]}" for line in loops.splitlines()
              if f"{tmp}/{name}-" in line]
    return found


def lab_is_gone(name: str, apptainer: Apptainer) -> bool:
    return not leftovers(name, apptainer)


def teardown(name: str, apptainer: Apptainer, *, procs: list[subprocess.Popen] | None = None,
             say: Callable[[str], None] = lambda s: None) -> None:
    """Remove every trace of lab ``name``: instances, helper processes, namespaces."""
    mine = _mine(name, _instances(apptainer))
    # In parallel: each stop waits for its supervisor, and they do not depend on each other.
    stops = [subprocess.Popen([apptainer.binary, "instance", "stop", "-t", "10", inst],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for inst in mine]
    for proc in stops:
        proc.wait(60)
    for proc in procs or []:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    namespaces = _mine(name, _namespaces())
    # Processes of a crashed run outlive `ip netns del`: end them first. One pass over
    # /proc for all namespaces (a farm has hundreds; `ip netns pids` each took minutes).
    for pid in _pids_in(namespaces):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if namespaces:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in namespaces),
                       capture_output=True, text=True, timeout=300)
    # Work folders (overlays, CNI configs) of this run and of crashed ones; the
    # instances are gone, so no loop device holds their overlays any more.
    for work in Path(tempfile.gettempdir()).glob(f"{name}-*"):
        shutil.rmtree(work, ignore_errors=True)
    if mine:
        say(f"removed {len(mine)} instance(s) of lab {name}")
