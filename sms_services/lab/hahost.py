"""One lab infrastructure host of an HA pair: its "init" (LAB ONLY).

Started by ``lab/ha.py`` as ``nsenter --net=HOST-NETNS unshare -m -u
--propagation private python -m sms_services.lab.hahost SPEC``: a network, mount
and UTS namespace of its own (``../shared/notes/ha.md``). This process then

- becomes a child subreaper, so every process the host starts (corosync,
  pacemakerd and its daemons, smsctl's lease renewer, Apptainer's daemonised
  instance starter) stays in its process tree: that tree IS the host, and the lab
  fence agent (``lab/fence/fence_smslab``) powers the host off by killing it;
- names itself (UTS), so Apptainer's instance list and the lease's host id are the
  host's own;
- mounts what a host has to itself over the shared machine: tmpfs on corosync's,
  Pacemaker's and CNI's state folders, /dev/shm (libqb's IPC) and /run; its own
  smsctl state and config folders (bind mounts over one path both hosts use, so the
  cluster's resource parameters are the same on both); the project's resource agent
  and the lab fence agent installed by an overlay over resource.d and /usr/sbin,
  leaving the machine's own folders untouched;
- runs ``corosync -f`` and then ``pacemakerd -f`` in the foreground, and reaps.

Nothing here runs outside the lab: a real host has its own disks and systemd.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PRIVATE_TMPFS = ("/etc/corosync", "/var/lib/corosync", "/var/lib/pacemaker", "/var/lib/cni", "/dev/shm", "/run")
OCF_DIR = "/usr/lib/ocf/resource.d"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _overlay(target: str, upper_files: dict[str, Path], work: Path) -> None:
    """``target`` plus ``upper_files`` (relative name -> source), by an overlay mount."""
    name = target.strip("/").replace("/", "-")
    upper, scratch = work / f"{name}.upper", work / f"{name}.work"
    for d in (upper, scratch):
        d.mkdir(parents=True, exist_ok=True)
    for rel, src in upper_files.items():
        dst = upper / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755)
    _mount("-t", "overlay", "overlay", "-o", f"lowerdir={target},upperdir={upper},workdir={scratch}", target)


def setup(spec: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    socket.sethostname(spec["name"])
    work = Path(spec["work"])
    for path in PRIVATE_TMPFS:
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    os.chmod("/dev/shm", 0o1777)
    for mountpoint, source in spec["binds"].items():  # the host's own smsctl state and config
        _mount("--bind", source, mountpoint)
    _overlay(OCF_DIR, {f"sms-services/{Path(spec['agent']).name}": Path(spec["agent"])}, work)
    _overlay("/usr/sbin", {Path(spec["fence_agent"]).name: Path(spec["fence_agent"])}, work)
    for d in ("/var/lib/pacemaker/cib", "/var/lib/pacemaker/pengine", "/var/lib/pacemaker/blackbox",
              "/var/lib/pacemaker/cores", "/run/crm", "/var/lib/corosync"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "hacluster", "haclient")
    os.makedirs("/run/lock", exist_ok=True)
    Path("/etc/corosync/corosync.conf").write_text(spec["corosync_conf"])
    for log in ("pacemaker.log", "corosync.log"):
        (work / log).touch()
        shutil.chown(work / log, "hacluster", "haclient")


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    setup(spec)
    work = Path(spec["work"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    with open(work / "corosync.out", "w") as out:
        subprocess.Popen(["corosync", "-f"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # pacemakerd gives up if corosync is not there yet
        if subprocess.run(["corosync-cfgtool", "-s"], capture_output=True, env=env).returncode == 0:
            break
        time.sleep(0.2)
    with open(work / "pacemakerd.out", "w") as out:
        subprocess.Popen(["pacemakerd", "-f"], stdout=out, stderr=subprocess.STDOUT, cwd="/",
                         env={**env, "PCMK_logfile": str(work / "pacemaker.log"), "PCMK_node_name": spec["name"],
                              "PCMK_debug": "no"})
    (work / "ready").write_text(str(os.getpid()))
    while True:  # the host's init: reap whatever ends below us
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
