"""A monolithic OpenHPC SMS in the lab: the "old SMS" a migration starts from (lab only).

A real one, reduced to what the move touches: a host of its own on the
provisioning network (a network namespace cabled to the lab's bridge, as
SMS-mgmt's is) holding the controller's name and address, and running munged
and slurmctld from its own files laid out as a root filesystem: ``ROOT/etc/slurm``
(its own slurm.conf, with what the rendered one lacks), ``ROOT/etc/munge``, its
StateSaveLocation, logs, accounts. That folder is what ``smsctl init --from-sms
ROOT`` reads, as it would read the old SMS's root mounted read-only or an
unpacked copy.

The daemons are the release's own binaries (those in the SMS-services image,
each started with ``apptainer exec`` and ROOT's folders bound over the image's,
without the image's supervisor or its other services): an OpenHPC SMS runs the
same slurmctld and munged from its packages, so nothing home-made writes the
Slurm state the migration imports.

The move is the README's: the old SMS stops slurmctld (which saves its state as
it stops) and munged, then gives up its address; SMS-services starts with that
address and name, and the nodes, whose slurmd asks that address
(``--conf-server``), carry on. Torn down with the lab (its namespace and
processes are named after it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.errors import UserError
from sms_services.image.accounts import ids, owner_of
from sms_services.inputs.slurmconf import settings
from sms_services.lab.cluster import Lab
from sms_services.probes.system import SUPERVISORCTL

# ROOT's folders bound into each daemon's container (image path -> owner account, mode);
# the StateSaveLocation is added from slurm.conf.
FOLDERS = {"/etc/slurm": ("root", 0o755), "/etc/munge": ("munge", 0o700), "/var/log/slurm": ("slurm", 0o755),
           "/var/lib/munge": ("munge", 0o700), "/var/log/munge": ("munge", 0o700), "/run/munge": ("munge", 0o755)}
SOCKET = "run/munge/munge.socket.2"


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise UserError(f"lab: 'ip {' '.join(args)}' failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout


def renumber(passwd: str, group: str, name: str) -> tuple[str, str]:
    """``name``'s user and group given the highest free id below 1000, as EL's useradd -r does."""
    taken = set(ids(passwd).values()) | set(ids(group).values())
    new = max(n for n in range(100, 1000) if n not in taken)

    def fix(text: str, fields: tuple[int, ...]) -> str:
        lines = []
        for line in text.splitlines():
            parts = line.split(":")
            if parts[0] == name:
                for i in fields:
                    parts[i] = str(new)
            lines.append(":".join(parts))
        return "\n".join(lines) + "\n"

    return fix(passwd, (2, 3)), fix(group, (2,))


@dataclass
class Monolith:
    """The old SMS of lab ``lab``: its ROOT folder, its namespace, its two daemons."""

    lab: Lab
    root: Path
    state: str = "/var/spool/slurmctld"  # its StateSaveLocation (lay_out reads it from its slurm.conf)
    suffix: str = "old"  # namespace <lab>-old; veth <lab>o0 (SMS-mgmt's is <lab>m0)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return f"{self.lab.name}-{self.suffix}"

    @property
    def hostname(self) -> str:
        return str(self.lab.site.values["sms_hostname"])

    # --- its files ----------------------------------------------------------------------
    def lay_out(self, slurm_files: dict[str, str], users: list[str]) -> None:
        """ROOT as the old SMS has it: ``slurm_files`` (name -> text) in etc/slurm, the
        cluster's munge key (the nodes hold it), its accounts, an empty StateSaveLocation.

        Its accounts are the image's (whose daemons it runs) plus the cluster's ``users``,
        with munge numbered as an EL host numbers it (a dynamic system id, not Debian's):
        the daemons run under ROOT's own passwd and group, and the import must move the
        key to the image's munge by name. slurm keeps its number: SlurmUser must have one
        number on the controller and every node (slurmd refuses its RPCs otherwise), 202
        in OpenHPC and in these images."""
        self.state = settings(slurm_files["slurm.conf"]).get("statesavelocation", self.state)
        passwd, group = renumber(self.lab.passwd, self.lab.group, "munge")
        shadow = self.lab.shadow
        names = [u.split(":")[0] for u in users]
        etc = self.root / "etc"
        for path, (owner, mode) in {**FOLDERS, self.state: ("slurm", 0o755)}.items():
            folder = self.root / path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, *owner_of(passwd, owner))
            folder.chmod(mode)
        (etc / "passwd").write_text(passwd + "".join(u + "\n" for u in users))
        (etc / "group").write_text(group + "".join(f"{n}:x:{u.split(':')[3]}:\n" for n, u in zip(names, users,
                                                                                                  strict=True)))
        (etc / "shadow").write_text(shadow + "".join(f"{n}:!:19000:0:99999:7:::\n" for n in names))
        (etc / "shadow").chmod(0o640)
        for name, text in slurm_files.items():
            (etc / "slurm" / name).write_text(text)
        key = etc / "munge/munge.key"
        key.write_bytes(self.lab.munge_key)
        os.chown(key, *owner_of(passwd, "munge"))
        key.chmod(0o400)

    # --- the host and its daemons -----------------------------------------------------
    def start(self, timeout: float = 60) -> float:
        """Bring the old SMS up with the controller's address, start munged then slurmctld,
        restart the nodes' slurmd (configless: they fetch this SMS's slurm.conf, as nodes
        booted against it have it) and wait until every node is idle; seconds it took."""
        t = time.monotonic()
        self._host()
        self._daemon("munged", ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged",
                                "--foreground"])
        self._wait(lambda: (self.root / SOCKET).is_socket(), 10, "munged made no socket")
        self._daemon("slurmctld", ["slurmctld", "-D"])
        for node in self.lab.nodes:
            rc, out, err = self.lab.on_node(node, [*SUPERVISORCTL, "restart", "slurmd"])
            if rc != 0:
                raise UserError(f"lab: restarting slurmd on {node} failed: {(err or out).strip()[:200]}")
        self._wait(self._nodes_idle, timeout, "the nodes did not come up idle under the old SMS")
        return round(time.monotonic() - t, 2)

    def _host(self) -> None:
        """The namespace, cabled to the provisioning bridge, holding the controller's address.
        It announces the address when its link comes up (arp_notify), as a booting server does,
        so the nodes' neighbour caches forget the address's previous holder."""
        ip, prefix, bridge, veth = self.lab.sms_ip, self.lab.prefix, f"{self.lab.name}-p", f"{self.lab.name}o0"
        if self.ns not in _ip("netns", "list").split():
            _ip("netns", "add", self.ns)
            _ip("netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.conf.default.arp_notify=1")
            _ip("-n", self.lab.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
            _ip("-n", self.lab.name, "link", "set", veth, "master", bridge, "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")

    def _binds(self) -> list[str]:
        out = ["--bind", f"{self.lab.work}/hosts:/etc/hosts", "--bind", f"{self.lab.work}/resolv.conf:/etc/resolv.conf"]
        for name in ("passwd", "group"):  # its own accounts, not the image's
            out += ["--bind", f"{self.root}/etc/{name}:/etc/{name}"]
        for path in [*FOLDERS, self.state]:
            out += ["--bind", f"{self.root / path.lstrip('/')}:{path}"]
        return out

    def command(self, args: list[str]) -> list[str]:
        """``args`` run on the old SMS: in its namespace, with its name and its files."""
        app = self.lab.apptainer
        return ["nsenter", f"--net=/run/netns/{self.ns}", app.binary, "exec", *app.cap_flags, "--contain",
                "--no-home", "--writable-tmpfs", "--hostname", self.hostname, *self._binds(), str(self.lab.sms_sif),
                *args]

    def _daemon(self, name: str, args: list[str]) -> None:
        log = open(self.lab.work / f"old-sms-{name}.log", "w")
        proc = subprocess.Popen(self.command(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd="/", env=dict(os.environ, APPTAINER_CONFIG_FILE=str(self.lab.work / "apptainer.conf")))
        log.close()
        self._procs[name] = proc
        self.lab.track(proc)  # ended by the lab's teardown whatever happens

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    tail = (self.lab.work / f"old-sms-{name}.log").read_text()[-300:].strip()
                    raise UserError(f"lab: the old SMS's {name} exited ({proc.returncode}): {tail}")
            if time.monotonic() > deadline:
                raise UserError(f"lab: {what} within {timeout:.0f} s")
            time.sleep(0.3)

    def _nodes_idle(self) -> bool:
        rc, out, _ = self.lab.on_node(self.lab.nodes[0], ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=10)
        states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        return rc == 0 and all(states.get(n) == "idle" for n in self.lab.nodes)

    def stop(self, name: str, timeout: float = 30) -> float:
        """``systemctl stop NAME``: SIGTERM (slurmctld saves its state, then exits); the
        monotonic time it was gone."""
        proc = self._procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Apptainer's starter forwards it to the daemon
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Still listed: running() must go on naming it (the lab's teardown kills it).
            raise UserError(f"lab: the old SMS's {name} did not stop within {timeout:.0f} s") from None
        del self._procs[name]
        return time.monotonic()

    def release_address(self) -> None:
        """The old SMS gives its address up (for SMS-services to take)."""
        if self.ns not in _ip("netns", "list").split():
            return  # never came up
        _ip("-n", self.ns, "addr", "flush", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "down")

    def has_state(self) -> bool:
        return (self.root / self.state.lstrip("/") / "job_state").is_file()

    def running(self) -> list[str]:
        return [n for n, p in self._procs.items() if p.poll() is None]
