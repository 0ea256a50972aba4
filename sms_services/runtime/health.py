"""The health of a recorded instance, for a monitoring system (``smsctl probe``).

Runs the probes a live cluster can take (the same set a cutover runs: no test
jobs, no lab hosts) through the record's node command, and reads what an admin
graphs: overlay space, image release, signer and build date, uptime.

The verdict follows the monitoring-plugin convention Nagios, Icinga and
Naemon share (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), with the failed services
named first on the one summary line, since that line is what a pager shows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.files import atomic_write
from sms_services.inputs.project import Project
from sms_services.probes.registry import Result, failed_services, run_all
from sms_services.runtime.deploy import Deployment, Record, state_dir
from sms_services.runtime.instance import instance_pids
from sms_services.runtime.overlay import usage

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class Health:
    name: str
    release: str = ""
    signer: str = ""
    build_date: str = ""
    started: str = ""  # ISO time from the record
    running: bool = False
    results: list[Result] = field(default_factory=list)
    overlay_used: int | None = None
    overlay_size: int | None = None
    warn_free: float = 10.0  # percent
    crit_free: float = 5.0
    problem: str = ""  # why the check itself could not run (UNKNOWN)
    checked_at: float = field(default_factory=time.time)

    @property
    def free_percent(self) -> float | None:
        if not self.overlay_size or self.overlay_used is None:
            return None
        return 100.0 * (self.overlay_size - self.overlay_used) / self.overlay_size

    @property
    def status(self) -> int:
        if self.problem:
            return UNKNOWN
        free = self.free_percent
        if not self.running or any(not r.ok for r in self.results) or (free is not None and free < self.crit_free):
            return CRITICAL
        if free is None or free < self.warn_free:
            return WARNING  # an unreadable overlay is news, not yet an outage
        return OK

    @property
    def start_time(self) -> float | None:
        try:
            return datetime.fromisoformat(self.started).timestamp()
        except ValueError:
            return None

    def summary(self) -> str:
        """The plugin's first line: verdict, what is wrong (failed services first), perfdata."""
        head = f"SMS-SERVICES {STATUS[self.status]} - {self.name}"
        if self.problem:
            return f"{head}: {self.problem}"
        parts: list[str] = []
        if not self.running:
            parts.append("instance not running")
        failed = failed_services(self.results)
        if failed:
            bad = [r for r in self.results if not r.ok]
            parts.append(f"{', '.join(failed)} failed: " + "; ".join(f"{r.probe}: {r.detail}" for r in bad))
        free = self.free_percent
        if free is None:
            parts.append("overlay space unreadable")
        elif free < self.warn_free:
            parts.append(f"overlay {free:.1f}% free (below {self.crit_free if free < self.crit_free else self.warn_free:g}%;"
                         " smsctl overlay grow)")
        if not parts:
            parts.append(f"{len(self.results)} probes OK, release {self.release}, overlay {free:.0f}% free")
        return f"{head}: {'; '.join(parts)} | {self.perfdata()}"

    def perfdata(self) -> str:
        data = [f"'{r.service}/{r.probe.replace(chr(39), '')}'={r.seconds:.3f}s" for r in self.results]
        if self.overlay_used is not None and self.overlay_size:
            size = self.overlay_size
            data.append(f"overlay_used={self.overlay_used}B;{int(size * (1 - self.warn_free / 100))};"
                        f"{int(size * (1 - self.crit_free / 100))};0;{size}")
        return " ".join(data)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": STATUS[self.status], "exit_code": self.status,
                "summary": self.summary(), "release": self.release, "signer": self.signer,
                "build_date": self.build_date, "started": self.started, "running": self.running,
                "overlay_used": self.overlay_used, "overlay_size": self.overlay_size,
                "failed_services": failed_services(self.results),
                "probes": [r.to_dict() for r in self.results], "checked_at": self.checked_at}


def check(project: Project, apptainer: Apptainer, name: str, *, probe_timeout: float = 10,
          warn_free: float = 10.0, crit_free: float = 5.0) -> Health:
    """Never raises for what it finds: a broken instance is a verdict, not an error."""
    health = Health(name, warn_free=warn_free, crit_free=crit_free)
    try:
        record = Record.load(name)
    except UserError as err:
        health.problem = str(err)
        return health
    health.release, health.signer, health.started = record.release, record.signer, record.started
    try:
        health.build_date = apptainer.labels(Path(record.sif)).get("sms-services.build-date", "")
    except (UserError, OSError):
        health.build_date = ""  # the image file may be gone while the instance runs on
    try:
        health.overlay_used, health.overlay_size = usage(Path(record.overlay))
    except (UserError, OSError, KeyError, ValueError):
        pass
    try:
        health.running = bool(instance_pids(apptainer, name))
    except UserError as err:  # cannot tell: UNKNOWN, never a guess
        health.problem = str(err)
        return health
    if not health.running:
        return health
    try:
        with Deployment(project, apptainer, record) as dep:
            # ready_timeout as short as the rest: the instance has been up; a probe that
            # needs more than a few tries is exactly what the monitoring must hear about.
            health.results = run_all(dep, dep.sms_fragments, ready_timeout=probe_timeout,
                                     probe_timeout=probe_timeout)
    except UserError as err:  # the site file named in the record went bad
        health.problem = str(err)
    return health


def last_success_path(name: str) -> Path:
    return state_dir() / "health" / f"{name}.json"


def remember_successes(health: Health) -> dict[str, float]:
    """When each probe last passed, kept between runs (a textfile is rewritten whole)."""
    path = last_success_path(health.name)
    try:
        seen = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        seen = {}  # a lost or damaged file only loses history, never the verdict
    for r in health.results:
        if r.ok:
            seen[f"{r.service}/{r.probe}"] = health.checked_at
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(seen, indent=1, sort_keys=True) + "\n")
    return seen


def prometheus_text(health: Health, last_success: dict[str, float]) -> bytes:
    """node_exporter textfile-collector format, made by prometheus_client (which escapes
    label values; a probe's name carries brackets and '=')."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    inst = {"instance_name": health.name}
    Gauge("sms_services_up", "1 when the instance runs and every probe passes", ["instance_name"],
          registry=reg).labels(**inst).set(1 if health.status in (OK, WARNING) else 0)
    Gauge("sms_services_status", "monitoring-plugin verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
          ["instance_name"], registry=reg).labels(**inst).set(health.status)
    Gauge("sms_services_running", "1 when the Apptainer instance runs", ["instance_name"],
          registry=reg).labels(**inst).set(int(health.running))
    keys = ["instance_name", "service", "probe"]
    up = Gauge("sms_services_probe_up", "1 when the probe passed", keys, registry=reg)
    latency = Gauge("sms_services_probe_latency_seconds", "latency of the probe's last attempt", keys, registry=reg)
    last = Gauge("sms_services_probe_last_success_timestamp_seconds", "when the probe last passed", keys,
                 registry=reg)
    for r in health.results:
        labels = {**inst, "service": r.service, "probe": r.probe}
        up.labels(**labels).set(int(r.ok))
        latency.labels(**labels).set(r.seconds)
        when = last_success.get(f"{r.service}/{r.probe}")
        if when is not None:
            last.labels(**labels).set(when)
    if health.overlay_size:
        space = Gauge("sms_services_overlay_bytes", "the overlay's filesystem", ["instance_name", "kind"],
                      registry=reg)
        space.labels(**inst, kind="size").set(health.overlay_size)
        space.labels(**inst, kind="used").set(health.overlay_used or 0)
        space.labels(**inst, kind="free").set(health.overlay_size - (health.overlay_used or 0))
    Gauge("sms_services_image_info", "the image the instance runs", ["instance_name", "release", "signer",
          "build_date"], registry=reg).labels(**inst, release=health.release, signer=health.signer,
                                              build_date=health.build_date).set(1)
    if health.start_time is not None:
        Gauge("sms_services_start_time_seconds", "when smsctl started the instance", ["instance_name"],
              registry=reg).labels(**inst).set(health.start_time)
        Gauge("sms_services_uptime_seconds", "seconds since smsctl started the instance", ["instance_name"],
              registry=reg).labels(**inst).set(round(health.checked_at - health.start_time, 1))
    return generate_latest(reg)


def write_prometheus(health: Health, path: Path) -> None:
    """Atomically, so node_exporter never reads half a file. Not prometheus_client's
    write_to_textfile: its temporary name is predictable, and root must not write
    through a name someone else could plant (files.atomic_write creates it exclusively)."""
    # No record, no history: and an unchecked --name must not name a file under the state folder.
    text = prometheus_text(health, {} if health.problem else remember_successes(health))
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such folder for --prometheus (node_exporter's "
                        "--collector.textfile.directory)")
    atomic_write(path, text, mode=0o644)
