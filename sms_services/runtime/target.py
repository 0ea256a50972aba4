"""SMS-services as something to probe and to replace: what the lab and a deployment share.

Two things run SMS-services: the lab (``lab.cluster.Lab``, for verify and
rehearsals) and a recorded production instance (``runtime.deploy.Deployment``).
Probes and a cutover see both through :class:`SmsTarget`: the addresses from the
site, commands on SMS-services and on a node, the owners and modes of the
site's secret files (declared by the fragments), what extra hosts the target
provides for probes, and how to stop and start the image.
"""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path
from typing import NamedTuple

from sms_services.apptainer import Apptainer
from sms_services.image.accounts import Accounts
from sms_services.inputs.fragment import Fragment
from sms_services.inputs.site import Site
from sms_services.probes.registry import ProbeFailed
from sms_services.runtime.init import file_modes
from sms_services.runtime.instance import EXEC_TIMED_OUT, RunsCommands


# slurmctld's exit waits 2-3 s (until the whole second time(NULL) + 3: AGENT_SHUTDOWN_WAIT in
# src/slurmctld/agent.c, Slurm 24.11) for its RPCs to the nodes still in flight: sdiag counts them.
AGENT_THREADS = re.compile(r"^Agent thread count:\s*(\d+)", re.M)
SETTLE_BOUND_S = 20.0


class Settled(NamedTuple):
    seconds: float  # waited for slurmctld's RPCs to the nodes
    agents: int  # its agent threads still active at the end: 0 none, -1 sdiag did not answer in time


class SmsTarget(RunsCommands):
    """Where SMS-services runs; subclasses say how to run commands and (re)start it."""

    apptainer: Apptainer
    site: Site
    release: str
    sms_fragments: tuple[Fragment, ...]
    sms_sif: Path
    sms_overlay: Path | None
    nodes: list[str]
    host: str = ""  # the infrastructure host (lab: a network namespace) it runs on
    work: Path  # scratch space (a cutover's watch logs)
    sms_started_at: float = 0.0
    provides: frozenset[str] = frozenset()  # probe needs this target can meet (probes.registry.NEEDS)
    passwd: str  # the accounts in effect now, by which the overlay's files are owned
    group: str
    shadow: str

    # --- addresses, from the site file ------------------------------------------
    @property
    def sms_ip(self) -> str:
        return str(self.site.values["provision_ip"])

    @property
    def sms_public_ip(self) -> str:
        return str(self.site.values["public_ip"])

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(str(self.site.values["provision_network"])).prefixlen

    @property
    def public_prefix(self) -> int:
        return ipaddress.ip_network(str(self.site.values["public_network"])).prefixlen

    @property
    def mail_domain(self) -> str:
        return str(self.site.values.get("mail_domain", "cluster.local"))

    public_host_ip = ""  # only the lab has a public host of its own

    # --- what only a lab has ------------------------------------------------------
    def on_public(self, command: list[str], timeout: float = 30) -> tuple[int, str, str]:
        raise ProbeFailed("no public host to probe from here")

    def mgmt_update(self) -> str:
        raise ProbeFailed("SMS-mgmt is not this run's to change")

    # --- the site's secret files --------------------------------------------------
    def site_file_modes(self) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """Owners (uid, gid from the accounts in effect) and modes of the files the
        fragments declare under ``file_modes`` (the munge key 0400 munge, ...)."""
        return file_modes(self.sms_fragments, self.passwd)

    # --- replacing the image ------------------------------------------------------
    def settle(self, bound: float = SETTLE_BOUND_S) -> Settled:
        """Wait, at most ``bound`` seconds, until slurmctld has no RPC to the nodes in flight.

        A stop then skips slurmctld's exit wait for them (2.3-2.6 s seen in 450-node cutovers,
        a registration round to every node still running 20 s after a start). A busy
        controller (sdiag not answered within 2 s) is asked again; one that refuses sdiag
        has nothing to wait for.
        """
        t0 = time.monotonic()
        while True:
            # Bounded inside the instance too: an sdiag left behind would hold the overlay.
            rc, out, err = self.on_sms(["timeout", "-k", "1", "2", "sdiag"],
                                       timeout=max(1.0, min(5.0, bound - (time.monotonic() - t0))))
            found = AGENT_THREADS.search(out) if rc == 0 else None
            # 124 from timeout(1): sdiag was slow, the controller busy. From on_sms's own bound:
            # the exec itself hung, and there is nothing to wait for.
            busy = rc == 124 and not err.startswith(EXEC_TIMED_OUT)
            agents = int(found.group(1)) if found else -1 if busy else 0
            waited = time.monotonic() - t0
            if not agents or waited >= bound:
                return Settled(round(waited, 2), agents)
            time.sleep(0.2)

    def stop_sms(self) -> float:
        raise NotImplementedError

    def start_sms(self, sif: Path, *, host: str = "") -> float:
        raise NotImplementedError

    def image_accounts(self, sif: Path) -> Accounts:
        raise NotImplementedError

    def image_name(self, sif: Path) -> str:
        """How an image is named to the admin (a deployment: the file its checked copy came from)."""
        return sif.name

    def adopt_accounts(self, passwd: str, group: str, shadow: str) -> dict[str, str]:
        raise NotImplementedError
