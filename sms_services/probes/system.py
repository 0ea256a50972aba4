"""Processes inside SMS-services: a daemon runs, cron ran its @reboot job, files synced from SMS-mgmt."""

from __future__ import annotations

import time

from sms_services.probes.registry import SMS_MGMT_CONTROL, Cluster, Param, ProbeFailed, kind

SUPERVISORCTL = ["supervisorctl", "-c", "/etc/sms-services/supervisord.conf"]


@kind("process", params={"name": Param("the process name `pgrep -x` looks for", required=True)})
def process(c: Cluster, p: dict) -> str:
    """A process of that name runs inside SMS-services."""
    name = str(p["name"])
    rc, out, _ = c.on_sms(["pgrep", "-x", name])
    if rc != 0:
        raise ProbeFailed(f"{name} is not running")
    return f"{name} running (pid {out.split()[0]})"


@kind("cron-heartbeat")
def cron_heartbeat(c: Cluster, p: dict) -> str:
    """cron runs and ran its @reboot heartbeat job."""
    rc, out, _ = c.on_sms(["sh", "-c", "pgrep -x cron || pgrep -x crond"])
    if rc != 0:
        raise ProbeFailed("no cron daemon running")
    rc, beat, _ = c.on_sms(["cat", "/run/sms-services/cron-heartbeat"])
    if rc != 0:
        raise ProbeFailed("cron is running but its @reboot heartbeat job did not run")
    return f"cron (pid {out.split()[0]}) ran its @reboot job at {beat.strip()}"


@kind("wwclient-sync", needs={SMS_MGMT_CONTROL})
def wwclient_sync(c: Cluster, p: dict) -> str:
    """A user added on SMS-mgmt arrives in SMS-services' /etc/passwd."""
    marker = c.mgmt_update()
    c.on_sms([*SUPERVISORCTL, "signal", "HUP", "wwclient"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if c.on_sms(["getent", "passwd", marker])[0] == 0:
            return f"user {marker} added on SMS-mgmt arrived in /etc/passwd"
        time.sleep(0.3)
    raise ProbeFailed(f"user {marker} added on SMS-mgmt did not arrive within 15 s")
