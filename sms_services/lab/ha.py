"""An HA pair in the lab: two infrastructure hosts running corosync + Pacemaker (LAB ONLY).

    netns <lab>-hosta   bridges <lab>-p/-u cabled to the lab's (add_host), eth cl0 198.19.60.1
    netns <lab>-hostb   the same, cl0 198.19.60.2 (the corosync link: one veth between them)

Each host is a process tree under ``lab/hahost.py`` (its own mount and UTS
namespace; see there), running ``corosync -f`` and ``pacemakerd -f`` as
``../shared/notes/ha.md`` measured. Both see the lab's overlay file (shared
storage), each has its own smsctl state and config folders, and both record the
same SMS-services instance. Fencing is on: the lab fence agent
(``lab/fence/fence_smslab``) powers a host off by killing its process tree, the
stand-in for fence_ipmilan. The Pacemaker configuration is what ``smsctl ha
config --apply`` makes of an ha.yaml, as on two real hosts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sms_services.errors import UserError
from sms_services.lab.cluster import Lab
from sms_services.runtime import procfs
from sms_services.trust.keys import create_keypair
from sms_services.trust.signing import sign

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
AGENT = ROOT / "ha/ocf/sms-services/instance"
FENCE_AGENT = HERE / "fence/fence_smslab"
HOSTS = ("hosta", "hostb")
LINK = {"hosta": "198.19.60.1", "hostb": "198.19.60.2"}  # the corosync link (RFC 2544 space, own netns)
RESOURCE = "sms-services"


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise UserError(f"ha lab: '{' '.join(cmd)}' failed: {(proc.stderr or proc.stdout).strip()[:300]}")


def corosync_conf(cluster: str, token_ms: int) -> str:
    """knet without crypto (lab only: one veth between two namespaces of one machine);
    two_node quorum, so the survivor of a pair keeps quorum once the other is fenced."""
    nodes = "".join(f"    node {{\n        ring0_addr: {LINK[h]}\n        name: {h}\n        nodeid: {i}\n    }}\n"
                    for i, h in enumerate(HOSTS, 1))
    return (f"totem {{\n    version: 2\n    cluster_name: {cluster}\n    transport: knet\n"
            f"    token: {token_ms}\n    crypto_cipher: none\n    crypto_hash: none\n}}\n"
            f"nodelist {{\n{nodes}}}\n"
            "quorum {\n    provider: corosync_votequorum\n    two_node: 1\n}\n"
            # hires: milliseconds, so the HA bench can read when the token timed out (its own part)
            "logging {\n    to_stderr: yes\n    to_syslog: no\n    timestamp: hires\n}\n")


@dataclass
class HaPair:
    lab: Lab
    instance: str = "smsha"
    token_ms: int = 3000  # corosync 3's default token timeout
    work: Path = field(default_factory=Path)
    netns: dict[str, str] = field(default_factory=dict)
    root_pid: dict[str, int] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    # --- paths both hosts share (each sees its own content at the same path) --------------
    @property
    def power(self) -> Path:
        return self.work / "power"  # HOST.pid: the fence agent's "BMC addresses"

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    @property
    def config_dir(self) -> Path:
        return self.work / "config"

    @property
    def smsctl(self) -> Path:
        return self.work / "smsctl"

    @property
    def node_exec(self) -> str:
        # The compute nodes are instances of the machine, not of a host: Apptainer finds
        # them by the machine's host name, so the command leaves the host's UTS namespace
        # for the lab's (this process's, which lives as long as the lab).
        return f"nsenter --uts=/proc/{os.getpid()}/ns/uts {self.lab.node_exec}"

    def env(self) -> dict[str, str]:
        return {"SMS_STATE_DIR": str(self.state_dir), "SMS_CONFIG_DIR": str(self.config_dir),
                "APPTAINER_CONFIG_FILE": str(self.lab.work / "apptainer.conf")}

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> HaPair:
        self.work = self.lab.work / "ha"
        try:
            self._prepare()
            for host in HOSTS:
                self._boot(host)
            self.wait_online()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Power both hosts off (their instances too); the lab's teardown removes the rest.
        An instance started by a command run on a host (``run``: nsenter, outside the
        host's process tree) is stopped by smsctl first, or it would outlive the host."""
        for host in HOSTS:  # each step on its own: the power-off below must always run
            if host in self.root_pid and self.alive(host):
                try:
                    self.smsctl_on(host, "stop", "--name", self.instance, timeout=120)
                except (OSError, subprocess.SubprocessError, UserError):
                    pass
        for host in HOSTS:
            if host in self.root_pid:
                try:
                    self.power_off(host)
                except (OSError, subprocess.SubprocessError, UserError):
                    pass
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _prepare(self) -> None:
        for d in (self.power, self.state_dir, self.config_dir):
            d.mkdir(parents=True)
        self.smsctl.write_text("#!/bin/sh\n# smsctl of this checkout (the lab's hosts have no venv of their own)\n"
                               f"PYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} "
                               "-m sms_services.cli.main \"$@\"\n")
        self.smsctl.chmod(0o755)
        for host in HOSTS:
            self.netns[host] = self.lab.add_host(host[-1] + "h")
            for d in ("state", "config/trusted"):
                (self.work / host / d).mkdir(parents=True)
        a, b = self.netns["hosta"], self.netns["hostb"]
        _run(["ip", "-n", a, "link", "add", "cl0", "type", "veth", "peer", "name", "cl0", "netns", b])
        for host in HOSTS:
            _run(["ip", "-n", self.netns[host], "addr", "add", f"{LINK[host]}/24", "dev", "cl0"])
            _run(["ip", "-n", self.netns[host], "link", "set", "cl0", "up"])

    def boot(self, host: str) -> None:
        """Power ``host`` on again (after a fence): its disks (state, config) kept, its
        memory (corosync's and Pacemaker's tmpfs) empty; it rejoins the cluster."""
        if self.alive(host):
            raise UserError(f"ha lab: {host} is still on")
        (self.work / host / "ready").unlink(missing_ok=True)
        self._boot(host)
        self.wait_online()

    def link(self, host: str, up: bool) -> None:
        """Cable ``host``'s corosync link in or out (both hosts stay on: a network split)."""
        _run(["ip", "-n", self.netns[host], "link", "set", "cl0", "up" if up else "down"])

    def _boot(self, host: str) -> None:
        hw = self.work / host
        spec = {"name": host, "work": str(hw), "agent": str(AGENT), "fence_agent": str(FENCE_AGENT),
                "corosync_conf": corosync_conf(self.lab.name, self.token_ms),
                "binds": {str(self.state_dir): str(hw / "state"), str(self.config_dir): str(hw / "config")}}
        (hw / "spec.json").write_text(json.dumps(spec))
        out = open(hw / "host.out", "w")
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns[host]}", "unshare", "-m", "-u",
                                 "--propagation", "private", sys.executable, "-m", "sms_services.lab.hahost",
                                 str(hw / "spec.json")], stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self._procs.append(proc)
        self.root_pid[host] = proc.pid
        # With its start time: the fence agent must never kill whatever reuses the pid later.
        (self.power / f"{host}.pid").write_text(f"{proc.pid} {procfs.start_time(proc.pid) or 0}")
        deadline = time.monotonic() + 60
        while not (hw / "ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"ha lab: host {host} did not come up: {(hw / 'host.out').read_text()[-600:]}")
            time.sleep(0.1)

    # --- running things on a host --------------------------------------------------------
    def run(self, host: str, cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        """``cmd`` on ``host`` (its network, mount and UTS namespaces), as its admin would run it."""
        return subprocess.run(["nsenter", "-t", str(self.root_pid[host]), "-m", "-n", "-u", *cmd],
                              capture_output=True, text=True, timeout=timeout, cwd="/", input=stdin,
                              env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})})

    def smsctl_on(self, host: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run(host, [str(self.smsctl), *args], timeout=timeout, env=self.env())

    def alive(self, host: str) -> bool:
        return self.fence("status", host).returncode == 0

    def fence(self, action: str, host: str) -> subprocess.CompletedProcess:
        """The lab fence agent, as fenced runs it (options on stdin)."""
        return subprocess.run([str(FENCE_AGENT)], input=f"action={action}\nplug={host}\nhosts_dir={self.power}\n",
                              capture_output=True, text=True, timeout=60)

    def power_off(self, host: str) -> None:
        """Every process of ``host`` SIGKILLed at once (frozen first): a host's death."""
        self.fence("off", host)

    def pids_named(self, host: str, comm: str) -> list[int]:
        """Processes of ``host`` (its whole tree, instances included) whose name is ``comm``."""
        return [pid for pid in procfs.descendants(self.root_pid[host]) if procfs.comm(pid) == comm]

    # --- the cluster ----------------------------------------------------------------------
    def wait_online(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.run("hosta", ["crm_mon", "-1", "--output-as=xml"], timeout=30).stdout
            online = re.findall(r'<node name="(\w+)"[^>]*online="true"', out)
            if sorted(online) == sorted(HOSTS) and 'dc="true"' in out:
                return
            time.sleep(1)
        raise UserError(f"ha lab: both hosts not online in Pacemaker after {timeout:.0f} s: {out[-600:]}")

    def record(self, sif: Path) -> None:
        """Record the instance on both hosts as an admin does: smsctl start, then stop (the
        image copied and checked into each host's state, the overlay's lease freed)."""
        for host in HOSTS:
            r = self.smsctl_on(host, "start", str(sif), "--name", self.instance,
                               "--overlay", str(self.lab.sms_overlay), "--site", str(self.lab.site.path),
                               "--provision-bridge", f"{self.lab.name}-p", "--public-bridge", f"{self.lab.name}-u",
                               "--bind", f"{self.lab.work}/hosts:/etc/hosts",
                               "--bind", f"{self.lab.work}/resolv.conf:/etc/resolv.conf",
                               "--node-exec", self.node_exec)
            if r.returncode != 0:
                raise UserError(f"ha lab: smsctl start on {host}: {r.stderr.strip()[-400:]}")
            r = self.smsctl_on(host, "stop", "--name", self.instance)
            if r.returncode != 0:
                raise UserError(f"ha lab: smsctl stop on {host}: {r.stderr.strip()[-400:]}")

    def ha_yaml(self) -> Path:
        path = self.work / "ha.yaml"
        path.write_text(yaml.safe_dump({
            "instance": self.instance, "resource": RESOURCE, "smsctl": str(self.smsctl),
            "state_dir": str(self.state_dir), "config_dir": str(self.config_dir),
            "apptainer_config": str(self.lab.work / "apptainer.conf"),
            "bridges": [f"{self.lab.name}-p", f"{self.lab.name}-u"],
            "nodes": [{"name": h, "fence": {"agent": FENCE_AGENT.name, "hosts_dir": str(self.power)}}
                      for h in HOSTS]}))
        return path

    def configure(self) -> None:
        r = self.smsctl_on("hosta", "ha", "config", "--apply", str(self.ha_yaml()), timeout=120)
        if r.returncode != 0:
            raise UserError(f"ha lab: smsctl ha config --apply: {r.stderr.strip()[-400:]}")

    def located(self) -> str:
        """The host where Pacemaker has started the resource ('' if none, or still starting),
        asked of any live host."""
        for host in HOSTS:
            if not self.alive(host):
                continue
            out = self.run(host, ["crm_mon", "-1", "--output-as=xml"], timeout=30).stdout
            found = re.search(rf'<resource id="{RESOURCE}" [^>]*role="Started"[^>]*>\s*<node name="(\w+)"', out)
            return found.group(1) if found else ""
        return ""

    def wait_located(self, timeout: float = 120, *, not_on: str = "") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host = self.located()
            if host and host != not_on:
                return host
            time.sleep(0.5)
        raise UserError(f"ha lab: {RESOURCE} not running{' off ' + not_on if not_on else ''} after "
                        f"{timeout:.0f} s: {self.status()[-1500:]}")

    def status(self) -> str:
        for host in HOSTS:
            if self.alive(host):
                return self.run(host, ["crm_mon", "-1", "--include=failcounts,fencing"], timeout=30).stdout
        return "no host alive"

    def probe_green(self, host: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """smsctl probe on ``host`` until every probe passes (the services come up in order)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.smsctl_on(host, "probe", "--name", self.instance, "--timeout", "5")
            if r.returncode == 0 or time.monotonic() > deadline:
                return r
            time.sleep(1)

    def other(self, host: str) -> str:
        return next(h for h in HOSTS if h != host)

    def on_sms(self, host: str, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """``cmd`` inside the SMS-services instance running on ``host``."""
        return self.run(host, [self.lab.apptainer.binary, "exec", "--no-privs", "--pwd", "/",
                               f"instance://{self.instance}", *cmd], timeout=timeout,
                        env={"APPTAINER_CONFIG_FILE": str(self.lab.work / "apptainer.conf")})


@contextmanager
def signed_pair(lab: Lab, scratch: Path, instance: str = "smsha") -> Iterator[HaPair]:
    """The pair up, the instance recorded on both hosts with a release-signed image (a key
    made for this run in ``scratch``, trusted by both hosts), the lab's own SMS-services
    stopped (the pair runs it from now on, on the same overlay). Powered off on exit."""
    key, sif = scratch / "release", scratch / "sms.sif"
    create_keypair(key)
    shutil.copyfile(lab.sms_sif, sif)
    sign(lab.apptainer, sif, key, replaces=None)  # (the build signature: this run's own build)
    lab.stop_sms()
    with HaPair(lab, instance=instance) as ha:
        for host in HOSTS:
            shutil.copyfile(f"{key}.pub", ha.work / host / "config/trusted/release.pub")
        ha.record(sif)
        yield ha


def start_cluster(ha: HaPair) -> str:
    """``smsctl ha config --apply``, then SMS-services started by Pacemaker and every probe
    green; the host it runs on."""
    ha.configure()
    host = ha.wait_located(timeout=180)
    r = ha.probe_green(host)
    if r.returncode != 0:
        raise UserError(f"ha lab: probes failed on {host} after the first start: {(r.stdout + r.stderr)[-600:]}")
    return host
