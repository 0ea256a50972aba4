"""Many compute nodes, cheaply: a node farm of real ``slurmd`` processes in one container.

A lab node is normally an Apptainer instance of its own (supervisord, munged, slurmd,
an overlay, a CNI setup): about a second and tens of MiB each, so hundreds of them do
not fit the admin's machine. The farm runs every other node as one more ``slurmd``
in a single ``apptainer exec`` of the compute image:

    netns <lab>          bridge <lab>-p; one veth per farm node (fv<i>) on it
    netns <lab>-f<i>     eth0 with the node's address from the site, nothing else
    the farm container   one munged (every slurmd shares it), then per node
                         nsenter --net=<lab>-f<i> unshare -m: a private tmpfs over
                         the slurmd spool folder and /run (pid file), and
                         slurmd -D -N <name> --conf-server <controller>

So each node has its own address, port 6818, spool, pid file and log, and is a real
slurmd that registers, answers pings and runs (trivial) jobs; it shares the
container's file system and munged with the others. The container has a PID
namespace of its own: when its first process ends, the kernel ends every slurmd.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.runtime.procfs import comm, descendants

# The script the container runs as its PID 1. Its arguments: the controller's address,
# munged's thread count, the lab's name; the node list (name per line) on /farm/nodes.
FARM_SH = r"""#!/bin/sh
set -u
server=$1 threads=$2 lab=$3
# PID 1 of the namespace: a TERM must end it (and so every slurmd) at once.
trap 'kill -TERM -1 2>/dev/null; exit 0' TERM INT HUP
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
install -d -m 0755 /var/spool/slurmd /var/log/slurm
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
setpriv --reuid=munge --regid=munge --init-groups munged --foreground --num-threads "$threads" \
    >/farm/logs/munged.log 2>&1 &
i=0
while [ ! -S /run/munge/munge.socket.2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
# One node: its own network namespace and a mount namespace in which the spool folder
# and /run are private (slurmd kills whatever process its pid file names), with munged's
# socket folder carried over.
node='mount --make-rprivate / &&
mount --bind /run/munge /farm/munge-run &&
mount -t tmpfs -o size=8m,mode=0755 farm-run /run &&
mkdir /run/munge && mount --move /farm/munge-run /run/munge &&
mount -t tmpfs -o size=16m,mode=0755 farm-spool /var/spool/slurmd &&
exec slurmd -D -N "$0" --conf-server "$1"'
mkdir -p /farm/munge-run
while read -r name; do
    nsenter --net="/farm/netns/$lab-n-$name" unshare -m sh -c "$node" "$name" "$server" \
        >"/farm/logs/$name.log" 2>&1 &
done </farm/nodes
echo started >/farm/logs/started
wait
"""


@dataclass(frozen=True)
class FarmNode:
    name: str
    ip: str


def _ip_batch(args: list[str], lines: list[str], timeout: float = 120) -> None:
    """Many ``ip`` commands in one process (``ip -batch``): 450 nodes in a second, not a minute."""
    if not lines:
        return
    proc = subprocess.run(["ip", *args, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(f"lab: ip -batch failed: {(proc.stderr or proc.stdout).strip()[:300]}")


@dataclass
class Farm:
    """The farm of lab ``lab``: ``nodes`` on bridge ``bridge`` of the lab's namespace."""

    lab: str
    bridge: str
    prefix: int
    nodes: list[FarmNode]
    work: Path
    proc: subprocess.Popen | None = None

    def netns(self, node: FarmNode) -> str:
        # "-n-": a site may name a node "pub" or "mgmt", which are the lab's own namespaces.
        return f"{self.lab}-n-{node.name}"

    def network(self) -> None:
        """A namespace and a veth on the provisioning bridge per node (batched: seconds for hundreds)."""
        _ip_batch([], [f"netns add {self.netns(n)}" for n in self.nodes])
        lab_lines = []
        for i, n in enumerate(self.nodes):
            lab_lines += [f"link add fv{i} type veth peer name eth0 netns {self.netns(n)}",
                          f"link set fv{i} master {self.bridge} up"]
        _ip_batch(["-n", self.lab], lab_lines)
        for n in self.nodes:
            _ip_batch(["-n", self.netns(n)], ["link set lo up", f"addr add {n.ip}/{self.prefix} dev eth0",
                                              "link set eth0 up"])

    def start(self, apptainer: Apptainer, sif: Path, overlay: Path, hosts: Path, resolv: Path,
              conf_server: str, munge_threads: int, caps: list[str]) -> None:
        """The container and every node's slurmd; returns once each slurmd was started."""
        farm = self.work / "farm"
        (farm / "logs").mkdir(parents=True)
        (farm / "farm.sh").write_text(FARM_SH)
        (farm / "nodes").write_text("".join(n.name + "\n" for n in self.nodes))
        log = open(farm / "apptainer.log", "w")
        cmd = ["nsenter", f"--net=/run/netns/{self.lab}", apptainer.binary, "exec", "--no-privs",
               # a node's own capabilities, and CAP_SYS_ADMIN for its namespaces and mounts
               "--add-caps", ",".join(sorted({*caps, "CAP_SYS_ADMIN"})),
               "--pid", "--contain", "--overlay", str(overlay), "--hostname", "farm",
               "--bind", f"{farm}:/farm", "--bind", "/run/netns:/farm/netns", "--bind", "/sys/fs/cgroup",
               "--bind", f"{hosts}:/etc/hosts", "--bind", f"{resolv}:/etc/resolv.conf",
               str(sif), "sh", "/farm/farm.sh", conf_server, str(munge_threads), self.lab]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        deadline = time.monotonic() + 120
        while not (farm / "logs/started").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"lab: the node farm did not start: {(farm / 'apptainer.log').read_text()[-300:]}")
            time.sleep(0.2)

    def slurmd_pids(self) -> list[int]:
        """The farm's slurmd processes (children of the container's init)."""
        if self.proc is None:
            return []
        return [pid for pid in descendants(self.proc.pid) if comm(pid) == "slurmd"]

    def memory(self) -> dict[str, float]:
        """Resident (RSS) and proportional (PSS) memory of the whole farm and per node, in MiB."""
        pids = descendants(self.proc.pid) if self.proc else []
        rss = pss = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            except OSError:
                continue
        n = max(len(self.nodes), 1)
        return {"processes": len(pids), "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1),
                "rss_per_node_mib": round(rss / 1024 / n, 2), "pss_per_node_mib": round(pss / 1024 / n, 2)}

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass


def farm_nodes(site_nodes: list[dict], job_nodes: int) -> tuple[list[dict], list[FarmNode]]:
    """The site's first ``job_nodes`` nodes stay full instances; the rest go to the farm."""
    full = site_nodes[:job_nodes]
    return full, [FarmNode(str(n["name"]), str(n["address"])) for n in site_nodes[job_nodes:]]


def scale_nodes(base: list[dict], network: str, total: int) -> list[dict]:
    """``total`` nodes: the ``base`` ones (the lab's c1, c2) then f001... from the network's second /24 on."""
    net = ipaddress.ip_network(network)
    nodes = [dict(n) for n in base[:total]]
    width = max(3, len(str(total)))
    first = net.network_address + 256
    for i in range(total - len(nodes)):
        ip = first + i
        if ip not in net or ip == net.broadcast_address:
            raise UserError(f"{network}: too small for {total} nodes (give a larger provision_network)")
        nodes.append({"name": f"f{i + 1:0{width}d}", "address": str(ip), "cpus": 1, "memory": 1000})
    return nodes


def scale_site_text(base_text: str, nodes: list[dict], network: str) -> str:
    """The lab's site file with ``nodes`` and a provisioning network wide enough for them."""
    import yaml

    data = yaml.safe_load(base_text)
    data["provision_network"] = network
    data["nodes"] = nodes
    return yaml.safe_dump(data, sort_keys=False)
