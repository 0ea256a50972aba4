"""The HA bench: failover, planned move and cutover on one lab HA pair, measured (LAB ONLY).

One lab, one pair (``lab/ha.py``: corosync + Pacemaker, fencing on), ``runs`` times each
(nothing is asserted; every number goes to the result):

* host death: every process of the host running SMS-services SIGKILLed; from that moment
  to (a) corosync on the survivor noticing (its token timed out, then the new membership),
  (b) the dead host fenced, (c) SMS-services started on the survivor (all three read from
  the survivor's corosync and Pacemaker logs, millisecond timestamps), (d) every probe
  green (``smsctl probe`` on the survivor, polled); and the controller gap as compute node
  c1 sees it (``scontrol ping`` there, ``ControllerWatch``). The dead host is then booted
  again and rejoins before the next run;
* planned move: ``crm_resource --move`` to the other host (then ``--clear``), gap from c1;
* cutover of the same image with Pacemaker (``smsctl cutover --pacemaker-resource``) and
  without it (the resource stopped, the instance started by ``smsctl start``, a plain
  ``smsctl cutover``), alternated, gap from c1 (what smsctl cutover itself measures).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.lab.cluster import Lab
from sms_services.lab.ha import HOSTS, RESOURCE, HaPair, signed_pair, start_cluster
from sms_services.lab.verify import open_lab, probe_services
from sms_services.runtime.cutover import ControllerWatch, outages

Say = Callable[[str], None]
Save = Callable[[dict], None]
LAB_NAME = "smshab"

# --- reading the hosts' logs ------------------------------------------------------------
MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                      "Nov", "Dec"), 1)}
STAMP = re.compile(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")


def log_time(line: str, year: int) -> float | None:
    """The epoch seconds of a corosync/Pacemaker log line's timestamp ("Dec 02 13:05:01.123",
    the machine's time zone; the year is not in the line), or None when it has none."""
    m = STAMP.search(line)
    if not m:
        return None
    month, day, hh, mm, ss, frac = m.groups()
    local = time.struct_time((year, MONTHS[month], int(day), int(hh), int(mm), int(ss), 0, 0, -1))
    return time.mktime(local) + (float(f"0.{frac}") if frac else 0.0)


def first_after(lines: list[str], pattern: str, since: float, year: int) -> float | None:
    """Seconds from ``since`` to the first line matching ``pattern`` stamped at or after it."""
    rx = re.compile(pattern, re.IGNORECASE)
    for line in lines:
        if rx.search(line):
            t = log_time(line, year)
            if t is not None and t >= since:
                return round(t - since, 2)
    return None


def death_events(dead: str, survivor: str) -> dict[str, tuple[str, str]]:
    """What marks each part of a failover in the survivor's logs: name -> (log, pattern)."""
    dead_id = HOSTS.index(dead) + 1
    return {
        "knet_link_down_s": ("corosync", rf"link: host: {dead_id} link: \d+ is down"),
        "token_timeout_s": ("corosync", r"A processor failed, forming new configuration"),
        "membership_s": ("corosync", r"A new membership .* was formed"),
        "fencing_requested_s": ("pacemaker", rf"(Requesting fencing|wants to fence).*\b{dead}\b"),
        "fenced_s": ("pacemaker", rf"(Operation '(reboot|off)'.*targeting {dead}\b.*(: OK|returned 0)"
                                  rf"|Peer {dead} was terminated .*: OK)"),
        # pacemaker-execd's lines (the survivor runs the agent): the controller's "Result of
        # start operation" is not in this log at the lab's log level.
        "start_initiated_s": ("pacemaker", rf"executing - rsc:{RESOURCE} action:start\b"),
        "started_s": ("pacemaker", rf"\b{RESOURCE} start \(call \d+, PID \d+\) exited with status 0\b"),
    }


def summary(runs: list[dict], keys: list[str]) -> dict[str, dict]:
    """Median and max of each key over the runs that have a number for it."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        out[key] = ({"n": len(values), "median": round(statistics.median(values), 2), "max": round(max(values), 2),
                     "min": round(min(values), 2)} if values else {"n": 0, "median": None, "max": None, "min": None})
    return out


# --- one measurement each ---------------------------------------------------------------
class Tail:
    """A log read from where it ended when the measurement began."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        try:
            with open(self.path, errors="replace") as fh:
                fh.seek(self.offset)
                return fh.read().splitlines()
        except OSError:
            return []


def _watch_node(lab: Lab) -> str:
    return "c1" if "c1" in lab.nodes else lab.nodes[0]


def _gap(watch: ControllerWatch, since: float) -> float | None:
    time.sleep(0.5)  # a few samples after the last answer
    found = outages(watch.samples(), since)
    return None if found is None else max((o.seconds for o in found), default=0.0)


def host_death(ha: HaPair, say: Say) -> dict:
    dead = ha.wait_located()
    survivor = ha.other(dead)
    tails = {"corosync": Tail(ha.work / survivor / "corosync.out"),
             "pacemaker": Tail(ha.work / survivor / "pacemaker.log")}
    watch = ControllerWatch(ha.lab, _watch_node(ha.lab))
    out: dict = {"dead": dead, "survivor": survivor}
    try:
        watch.wait_up()
        since, t0 = time.time(), time.monotonic()
        out["killed_at"] = since  # epoch: the logs kept by --keep-logs can be read again from it
        ha.power_off(dead)  # every process of the host, frozen then SIGKILLed
        out["power_off_s"] = round(time.monotonic() - t0, 2)
        fenced = started = 0.0
        while time.monotonic() < t0 + 180 and not started:  # as test_ha's host-death test polls
            if not fenced:
                hist = ha.run(survivor, ["stonith_admin", "--history", dead, "--output-as=xml"], timeout=30).stdout
                fenced = time.monotonic() - t0 if 'status="success"' in hist else 0.0
            if ha.located() == survivor:
                started = time.monotonic() - t0
            time.sleep(0.25)
        out["polled_fenced_s"], out["polled_started_s"] = round(fenced, 2) or None, round(started, 2) or None
        r = ha.probe_green(survivor, timeout=120)
        out["probes_green_s"] = round(time.monotonic() - t0, 2) if r.returncode == 0 else None
        out["controller_gap_c1_s"] = _gap(watch, since)
    finally:
        watch.stop()
    year = time.localtime(since).tm_year
    for key, (log, pattern) in death_events(dead, survivor).items():
        out[key] = first_after(tails[log].lines(), pattern, since, year)
    say(f"host death of {dead}: token timeout {out['token_timeout_s']} s, membership {out['membership_s']} s, "
        f"fenced {out['fenced_s']} s, started {out['started_s']} s, every probe green {out['probes_green_s']} s; "
        f"gap from c1 {out['controller_gap_c1_s']} s")
    t = time.monotonic()
    ha.boot(dead)  # powered on again: rejoins before the next run
    out["rejoin_s"] = round(time.monotonic() - t, 1)
    say(f"{dead} booted and back in the cluster after {out['rejoin_s']} s")
    return out


def planned_move(ha: HaPair, say: Say) -> dict:
    src = ha.wait_located()
    dst = ha.other(src)
    watch = ControllerWatch(ha.lab, _watch_node(ha.lab))
    out: dict = {"from": src, "to": dst}
    try:
        watch.wait_up()
        since, t0 = time.time(), time.monotonic()
        r = ha.run(src, ["crm_resource", "--move", "--resource", RESOURCE, "--node", dst])
        if r.returncode != 0:
            raise UserError(f"ha bench: crm_resource --move failed: {r.stderr.strip()[-300:]}")
        ha.wait_located(timeout=120, not_on=src)
        out["started_s"] = round(time.monotonic() - t0, 2)
        r = ha.probe_green(dst, timeout=120)
        out["probes_green_s"] = round(time.monotonic() - t0, 2) if r.returncode == 0 else None
        out["controller_gap_c1_s"] = _gap(watch, since)
    finally:
        watch.stop()
        ha.run(dst, ["crm_resource", "--clear", "--resource", RESOURCE])  # no lasting preference
    say(f"planned move {src} -> {dst}: started {out['started_s']} s, every probe green {out['probes_green_s']} s, "
        f"gap from c1 {out['controller_gap_c1_s']} s")
    return out


def _record(ha: HaPair, host: str) -> dict:
    return json.loads((ha.work / host / "state/instances" / f"{ha.instance}.json").read_text())


def _cutover(ha: HaPair, host: str, report: Path, *extra: str) -> dict:
    t = time.monotonic()
    r = ha.smsctl_on(host, "cutover", "--name", ha.instance, "--to", _record(ha, host)["source"],
                     "--json", str(report), *extra)
    wall = round(time.monotonic() - t, 2)
    if r.returncode != 0 or not report.exists():
        raise UserError(f"ha bench: smsctl cutover on {host} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    rep = json.loads(report.read_text())
    return {"host": host, "gap_s": rep.get("gap_s"), "stop_s": rep.get("stop_s"), "start_s": rep.get("start_s"),
            "green_s": rep.get("green_s"), "ok": rep.get("ok"), "command_s": wall}


def _target_role(ha: HaPair, host: str, role: str) -> None:
    r = ha.run(host, ["crm_resource", "--resource", RESOURCE, "--meta", "--set-parameter", "target-role",
                      "--parameter-value", role])
    if r.returncode != 0:
        raise UserError(f"ha bench: target-role {role}: {r.stderr.strip()[-300:]}")


def cutover_pacemaker(ha: HaPair, n: int, say: Say) -> dict:
    host = ha.wait_located()
    out = _cutover(ha, host, ha.work / f"cutover-pacemaker-{n}.json", "--pacemaker-resource", RESOURCE)
    time.sleep(2)  # the refresh the cutover asked for: Pacemaker probes the instance again
    ha.wait_located()
    say(f"cutover under Pacemaker on {host}: gap {out['gap_s']} s (stop {out['stop_s']} s, "
        f"command {out['command_s']} s)")
    return out


def cutover_plain(ha: HaPair, n: int, say: Say) -> dict:
    """The same cutover with Pacemaker out of the way: the resource stopped, the instance
    started by smsctl itself; afterwards stopped again and handed back to Pacemaker."""
    host = ha.wait_located()
    _target_role(ha, host, "Stopped")
    try:
        deadline = time.monotonic() + 120
        while ha.located() or ha.smsctl_on(host, "ha", "monitor", "--name", ha.instance).returncode != 7:
            if time.monotonic() > deadline:
                raise UserError(f"ha bench: {RESOURCE} did not stop: {ha.status()[-800:]}")
            time.sleep(1)
        r = ha.smsctl_on(host, "start", "--name", ha.instance)
        if r.returncode != 0:
            raise UserError(f"ha bench: smsctl start on {host}: {r.stderr.strip()[-400:]}")
        try:
            if ha.probe_green(host).returncode != 0:
                raise UserError(f"ha bench: probes failed on {host} after smsctl start")
            out = _cutover(ha, host, ha.work / f"cutover-plain-{n}.json")
        finally:
            ha.smsctl_on(host, "stop", "--name", ha.instance, timeout=180)
    finally:
        _target_role(ha, host, "Started")
    back = ha.wait_located(timeout=180)
    ha.probe_green(back)
    say(f"cutover without Pacemaker on {host}: gap {out['gap_s']} s (stop {out['stop_s']} s, "
        f"command {out['command_s']} s)")
    return out


# --- the bench --------------------------------------------------------------------------
DEATH_KEYS = ["knet_link_down_s", "token_timeout_s", "membership_s", "fencing_requested_s", "fenced_s",
              "start_initiated_s", "started_s", "probes_green_s", "controller_gap_c1_s",
              "polled_fenced_s", "polled_started_s", "rejoin_s"]
MOVE_KEYS = ["started_s", "probes_green_s", "controller_gap_c1_s"]
CUTOVER_KEYS = ["gap_s", "stop_s", "start_s", "green_s", "command_s"]


def _phase(result: dict, name: str, runs: int, keys: list[str], measure: Callable[[int], dict],
           save: Save, say: Say) -> None:
    phase = result.setdefault(name, {"runs": []})
    for i in range(runs):
        say(f"{name} {i + 1}/{runs}")
        phase["runs"].append(measure(i))
        phase["summary"] = summary(phase["runs"], keys)
        save(result)


def run_ha_bench(project: Project, apptainer: Apptainer, release: str, *, runs: int = 3, sif: Path | None = None,
                 compute_sif: Path | None = None, keep_logs: Path | None = None, say: Say = lambda s: None,
                 save: Save = lambda r: None) -> dict:
    if runs < 1:
        raise UserError(f"--runs {runs}: at least 1")
    if not shutil.which("pacemakerd") or not shutil.which("corosync"):
        raise UserError("pacemaker/corosync missing: scripts/install-host.sh installs them")
    result: dict = {"release": release, "runs": runs}
    t = time.monotonic()
    with open_lab(project, apptainer, release, sif=sif, compute_sif=compute_sif, name=LAB_NAME, say=say) as lab:
        outcome = probe_services(lab, ready_timeout=90)
        if not outcome.ok:
            raise UserError(f"ha bench: the lab's probes failed before the pair: {', '.join(outcome.failed)}")
        (lab.work / "hakeys").mkdir()
        with signed_pair(lab, lab.work / "hakeys", instance=LAB_NAME) as ha:
            try:
                _measure(ha, result, runs, t, say, save)
            finally:
                if keep_logs is not None:
                    _keep_logs(ha, keep_logs)
    result["teardown_s"] = lab.timings.get("teardown_s")
    return result


def _keep_logs(ha: HaPair, dest: Path) -> None:
    """The hosts' corosync and Pacemaker logs, which the lab's teardown removes."""
    dest.mkdir(parents=True, exist_ok=True)
    for host in HOSTS:
        for log in ("corosync.out", "pacemaker.log"):
            if (ha.work / host / log).exists():
                shutil.copyfile(ha.work / host / log, dest / f"{host}-{log}")


def _measure(ha: HaPair, result: dict, runs: int, t: float, say: Say, save: Save) -> None:
    first = start_cluster(ha)
    result.update(sif=str(ha.lab.sms_sif), compute_sif=str(ha.lab.compute_sif), token_ms=ha.token_ms,
                  pair_up_s=round(time.monotonic() - t, 1))
    say(f"pair up, SMS-services on {first}, every probe green ({result['pair_up_s']} s)")
    save(result)
    _phase(result, "host_death", runs, DEATH_KEYS, lambda i: host_death(ha, say), save, say)
    _phase(result, "planned_move", runs, MOVE_KEYS, lambda i: planned_move(ha, say), save, say)
    # Last: an instance a cutover starts is smsctl's child (outside the host's process
    # tree), which a host death would miss. Alternated, so drift hits both alike.
    for i in range(runs):
        for name, fn in (("cutover_pacemaker", cutover_pacemaker), ("cutover_plain", cutover_plain)):
            say(f"{name} {i + 1}/{runs}")
            phase = result.setdefault(name, {"runs": []})
            phase["runs"].append(fn(ha, i, say))
            phase["summary"] = summary(phase["runs"], CUTOVER_KEYS)
            save(result)
