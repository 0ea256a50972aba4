"""An Apptainer instance seen from the host: start it on bridges, stop it fast, kill it.

Shared by the lab (``lab.py``) and a production deployment (``deploy.py``), so
both start SMS-services the same way: only the capabilities its fragments
declare, ``--net`` on CNI bridge networks with static addresses, the overlay,
``--contain`` with a private /run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.files import atomic_write
from sms_services.inputs.fragment import Fragment
from sms_services.runtime.overlay import loop_device
from sms_services.runtime.procfs import comm, descendants, parent, start_time

APPTAINER_CONF = Path("/etc/apptainer/apptainer.conf")
# A network: (CNI network name, address/prefix, MAC or None).
Net = tuple[str, str, "str | None"]


def caps_of(fragments: tuple[Fragment, ...] | list[Fragment]) -> list[str]:
    """Least privilege: exactly the capabilities the image's fragments declare."""
    return sorted({c for f in fragments for c in f.capabilities})


def mac_for(ip: str) -> str:
    """A fixed, locally administered MAC from an IPv4 address: the same on every host, so
    neighbours' ARP caches stay right when the instance moves or is replaced."""
    return "02:00:" + ":".join(f"{int(x):02x}" for x in ip.split("."))


def cni_dir(config_file: Path | None = None) -> Path:
    """Where Apptainer reads CNI networks (``cni configuration path`` of apptainer.conf)."""
    conf = config_file or Path(os.environ.get("APPTAINER_CONFIG_FILE", APPTAINER_CONF))
    text = conf.read_text() if conf.exists() else ""
    found = re.findall(r"(?m)^\s*cni configuration path\s*=\s*(\S+)", text)
    return Path(found[-1]) if found else Path("/etc/apptainer/network")


def write_network(directory: Path, net: str, bridge: str, *, forward: bool = False,
                  routes: list[dict] | None = None) -> Path:
    """A CNI network on an existing Linux bridge: static addresses, no gateway, no NAT
    (Apptainer's shipped bridge masquerades to the host's uplink; SMS-services does its
    own NAT). ``forward`` turns IP forwarding on in the instance's namespace only."""
    ipam: dict = {"type": "static"}
    if routes:
        ipam["routes"] = routes
    plugins: list[dict] = [{"type": "bridge", "bridge": bridge, "isGateway": False, "ipMasq": False, "ipam": ipam}]
    if forward:
        plugins.append({"type": "tuning", "sysctl": {"net.ipv4.ip_forward": "1"}})
    path = directory / f"{net}.conflist"
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"cniVersion": "1.0.0", "name": net, "plugins": plugins}, indent=1))
    return path


def start_instance(apptainer: Apptainer, sif: Path, instance: str, *, hostname: str, overlay: Path,
                   caps: list[str], nets: list[Net], extra: list[str] | tuple[str, ...] = (), netns: str = "",
                   env: dict[str, str] | None = None, what: str = "") -> None:
    """``apptainer instance start`` with least privilege; one clear line when it fails."""
    args = []
    for net, ip, mac in nets:
        args += ["--network-args", f"{net}:IP={ip}" + (f";MAC={mac}" if mac else "")]
    # nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup
    # hierarchy slurmd needs; only the network namespace is wanted here.
    prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    cmd = [*prefix, apptainer.binary, "instance", "start", "--no-privs",
           *(["--add-caps", ",".join(caps)] if caps else []),
           # No networks: the instance shares the network namespace it starts in ("host networking").
           *(["--net", "--network", ",".join(n for n, _, _ in nets)] if nets else []), *args, "--hostname", hostname,
           "--overlay", str(overlay), "--contain", "--scratch", "/run", *extra, str(sif), instance]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/",
                          env=dict(os.environ, **(env or {})))
    if proc.returncode != 0:
        raise UserError(f"{what or 'instance'}: {instance} did not start: {last_line(proc.stderr)}")


def exec_command(apptainer: Apptainer, instance: str, caps: list[str], command: list[str]) -> list[str]:
    """The ``apptainer exec`` that runs ``command`` in a running instance. Its
    capabilities are not inherited by exec: they are asked for again."""
    return [apptainer.binary, "exec", "--no-privs", *(["--add-caps", ",".join(caps)] if caps else []),
            "--pwd", "/", f"instance://{instance}", *command]


EXEC_TIMED_OUT = "timed out after"  # how on_sms/on_node's own bound is told from a command's exit 124


class RunsCommands:
    """``on_sms``/``on_node`` for the probes, given ``exec_command`` (lab and deployment)."""

    def exec_command(self, node: str | None, command: list[str]) -> list[str]:
        raise NotImplementedError

    def _exec(self, node: str | None, command: list[str], stdin: str | None,
              timeout: float) -> tuple[int, str, str]:
        try:
            p = subprocess.run(self.exec_command(node, command), input=stdin, capture_output=True, text=True,
                               timeout=timeout, cwd="/")
        except subprocess.TimeoutExpired:
            return 124, "", f"{EXEC_TIMED_OUT} {timeout:.0f} s: {' '.join(command)}"
        return p.returncode, p.stdout, p.stderr

    def on_sms(self, command: list[str], stdin: str | None = None, timeout: float = 30) -> tuple[int, str, str]:
        return self._exec(None, command, stdin, timeout)

    def on_node(self, node: str, command: list[str], stdin: str | None = None,
                timeout: float = 30) -> tuple[int, str, str]:
        return self._exec(node, command, stdin, timeout)


def instance_list(apptainer: Apptainer, name: str = "") -> dict[str, int]:
    """Running instances (matching ``name``, if given) -> their pid."""
    res = apptainer.run(["instance", "list", "--json", *([name] if name else [])], timeout=30)
    # Never "none" for "could not tell": a false "not running" would let a stop free the
    # overlay's lease, or Pacemaker start a second writer, while the instance writes on.
    try:
        if res.returncode != 0:
            raise ValueError(last_line(res.stderr) or f"exit code {res.returncode}")
        return {i["instance"]: int(i["pid"]) for i in json.loads(res.stdout or "{}").get("instances", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"apptainer instance list failed ({err}); cannot tell which instances run") from None


def instance_pids(apptainer: Apptainer, instance: str) -> list[int]:
    """Every process of ``instance``, its Apptainer starter first."""
    top = instance_list(apptainer, instance).get(instance)
    if top is None:
        return []
    found = [top, *descendants(top)]
    starter = parent(top)
    return [starter, *found] if comm(starter) == "starter" else found


# `instance stop -t 10`, its SIGKILL, the kernel's release of the overlay's loop device.
STOP_WAIT_S = 20


def stop_instance(apptainer: Apptainer, instance: str, overlay: Path | None) -> tuple[float, subprocess.Popen]:
    """Stop ``instance``; seconds it took, and the ``instance stop`` still finishing.

    Done when the container's processes are gone and its overlay is released.
    Apptainer's starter lingers for 1.5 s more, and `apptainer instance stop`
    returns only after it: waiting for them would add that to every cutover's gap.
    A daemon that outlives the 10 s meets SIGKILL when `instance stop` gives up
    waiting; its overlay is released a moment after that, not at once, and a start
    in between finds the overlay "in use by another process": so the wait goes on
    past the stopper's end, bounded.
    """
    t = time.monotonic()
    pids = [p for p in instance_pids(apptainer, instance) if comm(p) != "starter"]
    stopper = subprocess.Popen([apptainer.binary, "instance", "stop", "-t", "10", instance],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = t + STOP_WAIT_S
    left = _gone(pids, overlay, until=lambda: time.monotonic() > deadline)
    if left:
        raise UserError(f"instance {instance}: {left} after `apptainer instance stop` "
                        f"(exit {stopper.poll()}, {round(time.monotonic() - t)} s); see `apptainer instance list`")
    return round(time.monotonic() - t, 2), stopper


def kill_instance(apptainer: Apptainer, instance: str, overlay: Path | None) -> None:
    """Power loss: SIGKILL to every process of the instance at once."""
    victims = instance_pids(apptainer, instance)
    if not victims:
        raise UserError(f"instance {instance} is not running")
    for pid in victims:  # the starter too: nothing may exit cleanly
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    _gone(victims, overlay, until=lambda: time.monotonic() > deadline)


def _gone(pids: list[int], overlay: Path | None, until: Callable[[], bool]) -> str:
    """Wait until ``pids`` have exited and the overlay is released (or ``until``): what is
    left then ('' for nothing). A pid the kernel gave to a new process counts as exited."""
    born = {p: start_time(p) for p in pids}

    def left() -> str:
        running = [p for p in pids if born[p] and start_time(p) == born[p]]
        if running:
            return f"process(es) {', '.join(map(str, running[:5]))} still running"
        if overlay and loop_device(overlay):
            return f"its overlay {overlay} still in use"
        return ""

    while (what := left()) and not until():
        time.sleep(0.02)
    return what
