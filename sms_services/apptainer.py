"""The ``apptainer`` command line, called directly.

Why not a wrapper library: spython (the usual Python wrapper) builds with
``sudo`` and its own output parsing, cannot pass ``--fakeroot``/``--bind`` to
builds, knows nothing of ``--drop-caps``, ``--add-caps``, ``--net`` or
instances with networks, and hides the exit status we need for one-line errors.
The CLI is Apptainer's stable interface; this module adds only what every call
needs: finding the binary, the capability workaround, and clear errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sms_services.errors import UserError

INSTALL_HINT = (
    "install Apptainer >= 1.3 or SingularityCE >= 4.1 (on Debian 12: scripts/install-host.sh; "
    "elsewhere: https://apptainer.org/docs/admin/main/installation.html)"
)
MINIMUM = {"apptainer": (1, 3), "singularity": (4, 1)}

# Linux capability numbers (linux/capability.h), to read /proc/self/status masks.
CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE"
).split()


def bounding_caps(status: str | None = None) -> set[str]:
    """Capabilities this process may ever hold (CapBnd), as CAP_* names."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    m = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M)
    mask = int(m.group(1), 16) if m else (1 << len(CAPS)) - 1
    return {f"CAP_{name}" for i, name in enumerate(CAPS) if mask >> i & 1}


def missing_caps(status: str | None = None) -> list[str]:
    """Capabilities Apptainer would ask for as root but this host cannot grant.

    Some hosts (containers, hardened sandboxes) run root without e.g.
    CAP_SYS_RESOURCE; Apptainer's default "root gets every capability" then
    fails at start. A production host has them all and this list is empty.
    """
    have = bounding_caps(status)
    return sorted(f"CAP_{n}" for n in CAPS if f"CAP_{n}" not in have)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Apptainer:
    """One Apptainer (or SingularityCE) installation."""

    def __init__(self, binary: str, flavour: str, version: tuple[int, ...]) -> None:
        self.binary = binary
        self.flavour = flavour
        self.version = version
        self._labels: dict[tuple[str, int, int], dict[str, str]] = {}

    @classmethod
    def find(cls) -> Apptainer:
        """The first usable runtime on PATH, or one clear line saying what to install."""
        override = os.environ.get("SMS_APPTAINER")
        names = [override] if override else ["apptainer", "singularity"]
        seen = []
        for name in names:
            path = shutil.which(name)
            if not path:
                continue
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as err:
                seen.append(f"{path}: {err}")
                continue
            m = re.search(r"(apptainer|singularity-ce|singularity)\s+version\s+(\d+)\.(\d+)(?:\.(\d+))?",
                          out.stdout + out.stderr)
            if out.returncode != 0 or not m:
                seen.append(f"{path} does not run ({(out.stderr or out.stdout).strip()[:80]})")
                continue
            flavour = "apptainer" if m.group(1) == "apptainer" else "singularity"
            version = tuple(int(x or 0) for x in m.group(2, 3, 4))
            if version[:2] < MINIMUM[flavour]:
                seen.append(f"{path} is {flavour} {'.'.join(map(str, version))}, too old")
                continue
            return cls(path, flavour, version)
        detail = f" ({'; '.join(seen)})" if seen else ""
        raise UserError(f"no usable Apptainer found{detail}: {INSTALL_HINT}", exit_code=3)

    @cached_property
    def cap_flags(self) -> list[str]:
        """Flags for exec/instance start as root so that missing capabilities do not abort it."""
        if os.geteuid() != 0:
            return []
        missing = missing_caps()
        return ["--drop-caps", ",".join(missing)] if missing else []

    @cached_property
    def build_flags(self) -> list[str]:
        """Root without the full capability set cannot run %post; --fakeroot can (host.md)."""
        mode = os.environ.get("SMS_BUILD_FAKEROOT", "auto")
        if mode == "1" or (mode == "auto" and (os.geteuid() != 0 or missing_caps())):
            return ["--fakeroot"]
        return []

    def run(self, args: list[str], *, timeout: float | None = None, cwd: Path | None = None,
            log: Path | None = None) -> Result:
        """Run ``apptainer ARGS``; with ``log`` the output streams to that file."""
        cmd = [self.binary, *args]
        try:
            if log is not None:
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(f"$ {' '.join(cmd)}\n")
                    fh.flush()
                    proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                          timeout=timeout, cwd=cwd)
                return Result(proc.returncode, "", "")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise UserError(f"'{' '.join(cmd[:3])} ...' did not finish within {timeout:.0f} s") from None
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def exec(self, image: str | Path, command: list[str], *, timeout: float = 120,
             extra: list[str] | None = None) -> Result:
        return self.run(["exec", *self.cap_flags, *(extra or []), str(image), *command], timeout=timeout)

    def labels(self, image: Path) -> dict[str, str]:
        """The image's labels; asked once per version of the file (cutover, rehearse and
        publish each want them, for the same images, several times)."""
        st = Path(image).stat()
        key = (str(Path(image).resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._labels:
            self._labels[key] = self._inspect_labels(image)
        return dict(self._labels[key])

    def _inspect_labels(self, image: Path) -> dict[str, str]:
        res = self.run(["inspect", "--json", "--labels", str(image)], timeout=60)
        if res.returncode != 0:
            raise UserError(f"{image}: apptainer inspect failed ({last_line(res.stderr)})")
        data = json.loads(res.stdout)
        return data.get("data", {}).get("attributes", {}).get("labels", {}) or {}


def last_line(text: str) -> str:
    """The line of Apptainer's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "FATAL" in ln or "ERROR" in ln:
            return re.sub(r"^(FATAL|ERROR):\s*", "", ln)
    return lines[-1] if lines else "no output"
