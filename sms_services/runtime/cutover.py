"""Replace the running SMS-services image without touching running jobs.

Stop the old instance, start the new image on the same overlay with the same
addresses (on the same or another infrastructure host), prove every service
answers, and put the old image back if it does not. Compute nodes keep their
jobs meanwhile: slurmd only needs the controller back before SlurmdTimeout.

The service gap is measured from a compute node, the way slurmd sees it: a
loop of ``scontrol ping`` there, each bounded to 0.5 s, timestamped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from sms_services import slurm
from sms_services.errors import UserError
from sms_services.image.accounts import Accounts, id_maps, ids
from sms_services.inputs.project import Project
from sms_services.inputs.slurmconf import serves_metrics
from sms_services.inputs.site import render_site
from sms_services.probes import Result, failed_services, run_all
from sms_services.runtime.overlay import copy_overlay, usage, write_overlay_files
from sms_services.runtime.target import SmsTarget
from sms_services.trust.signing import Signer, Trust, check

FREE_NEEDED = 8 * 2**20  # a state save of slurmctld and a restart's logs, with room to spare
PING_LOOP = ('while :; do if timeout 0.5 scontrol ping 2>/dev/null | grep -q "is UP"; then s=UP; else s=DOWN; fi; '
             'echo "$(date +%s.%N) $s"; sleep 0.05; done')


class ControllerWatch:
    """``scontrol ping`` from a compute node in a loop, for the service gap."""

    def __init__(self, target: SmsTarget, node: str) -> None:
        self.log = target.work / f"watch-{node}-{time.monotonic_ns()}.log"
        cmd = target.exec_command(node, ["/bin/sh", "-c", PING_LOOP])
        self._fh = open(self.log, "w")
        self._proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.DEVNULL, cwd="/",
                                      start_new_session=True)

    def samples(self) -> list[tuple[float, bool]]:
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out.append((float(parts[0]), parts[1] == "UP"))
                except ValueError:
                    pass
        return out

    def answered(self, after: int = 0, timeout: float = 30) -> bool:
        """Whether the controller answered in a sample after the first ``after``, waiting
        ``timeout`` s for it."""
        deadline = time.monotonic() + timeout
        while not any(up for _, up in self.samples()[after:]):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def wait_up(self, timeout: float = 30) -> None:
        if not self.answered(timeout=timeout):
            raise UserError("cutover: the controller does not answer a compute node before the cutover; "
                            "fix the running instance first")

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._fh.close()


class Outage(NamedTuple):
    """One stretch the controller did not answer: its last answer before it and its first
    after it (wall clock, as the compute node saw them), and the pings unanswered between."""

    last_answer: float
    next_answer: float
    unanswered: int

    @property
    def seconds(self) -> float:
        return round(self.next_answer - self.last_answer, 2)


def outages(samples: list[tuple[float, bool]], since: float) -> list[Outage] | None:
    """Each outage after ``since``: empty when the controller never stopped answering,
    None when it never came back."""
    found: list[Outage] = []
    last_up = max((t for t, up in samples if up and t < since), default=since)
    down = 0
    for t, up in (s for s in samples if s[0] >= since):
        if up:
            if down:
                found.append(Outage(last_up, t, down))
            last_up, down = t, 0
        else:
            down += 1
    return None if down else found


@dataclass
class CutoverReport:
    old_sif: str
    new_sif: str
    old_release: str
    new_release: str
    host: str
    ok: bool = False
    rolled_back: bool = False
    gap_s: float | None = None  # the longest time the controller did not answer (None: it never did again)
    outages_s: list[float] = field(default_factory=list)
    # The longest outage's edges (wall clock, as the compute node saw them) and how many
    # pings went unanswered in it: how a gap splits into stop, start and the loop's own steps.
    gap_from: float | None = None
    gap_to: float | None = None
    gap_pings_down: int = 0
    settle_s: float = 0.0  # waited, before the stop, for slurmctld's RPCs to the nodes
    agents_left: int = 0  # its agent threads still active when the stop began (-1: sdiag too slow to tell)
    stop_s: float = 0.0
    start_s: float = 0.0
    green_s: float = 0.0  # new instance started -> every probe passed
    signer: str = ""
    site_files_changed: list[str] = field(default_factory=list)
    renumbered: list[str] = field(default_factory=list)  # "munge 101 -> 995": SMS-mgmt must serve these
    results: list[Result] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["results"] = [r.to_dict() for r in self.results]
        return data


def step_reasons(old: dict[str, str], new: dict[str, str], node_slurmd: str | list[str]) -> list[str]:
    """Why Slurm would not accept this step (empty: it would), from the images' labels
    and the slurmd version(s) of the compute nodes."""
    reasons = []
    versions = [node_slurmd] if isinstance(node_slurmd, str) else node_slurmd
    old_ctl, new_ctl = old.get("sms-services.slurm.installed", ""), new.get("sms-services.slurm.installed", "")
    try:
        allowed, why = slurm.upgrade_allowed(old_ctl, new_ctl)
        if not allowed:
            reasons.append(f"slurmctld state and accounting DB: {why}")
        for version in (v for v in versions if v):
            if not slurm.can_serve(new_ctl, version):
                reasons.append(f"compute nodes run slurmd {slurm.major(version)}, which slurmctld "
                               f"{slurm.major(new_ctl)} does not serve (serves "
                               f"{' '.join(slurm.served_majors(new_ctl))})")
    except ValueError as err:
        reasons.append(f"Slurm versions of the images cannot be compared: {err}")
    return reasons


def renumbered(old: Accounts, new: Accounts) -> list[str]:
    """The accounts whose user number differs between two images ("munge 101 -> 995")."""
    a, b = ids(old[0]), ids(new[0])
    return [f"{n} {a[n]} -> {b[n]}" for n in sorted(a.keys() & b.keys()) if a[n] != b[n]]


def _carry_over(target: SmsTarget, new_frags, new_release: str, accounts: Accounts) -> list[str]:
    """A new release on an old overlay: its site files, its account numbers, owners to match."""
    assert target.sms_overlay is not None
    remap = id_maps((target.passwd, target.group, target.shadow), accounts)
    files = render_site(target.site, new_frags, new_release)
    files.update(target.adopt_accounts(*accounts))
    owners, modes = target.site_file_modes()
    owners["/etc/shadow"] = (0, ids(accounts[1]).get("shadow", 0))
    modes["/etc/shadow"] = 0o640
    return write_overlay_files(target.sms_overlay, files, owners=owners, modes=modes, remap=remap)


def cutover(target: SmsTarget, project: Project, new_sif: Path, *, trust: Trust, deadline: float = 120,
            host: str | None = None, node_slurmd: str | list[str] = "", rollback: bool = True,
            signer: Signer | None = None,
            say: Callable[[str], None] = lambda s: None,
            say_result: Callable[[Result], None] = lambda r: None) -> CutoverReport:
    """Move SMS-services (a lab's or a recorded instance's) to ``new_sif``, on ``host``
    (default: where it runs now).

    Refuses, before stopping anything, an image its trust refuses (``signer``: the
    caller has checked it already), a Slurm step Slurm does not allow, or a full
    overlay. Rolls back to the old image when a probe still fails ``deadline``
    seconds after the start: across Slurm majors on the overlay as the old image
    left it, within one on what the new controller wrote.
    """
    apptainer = target.apptainer
    new_sif = new_sif.resolve()
    old_sif, old_host, old_release, old_frags = target.sms_sif, target.host, target.release, target.sms_fragments
    if signer is None:
        signer = check(apptainer, new_sif, trust, warn=say)
    old_labels, new_labels = apptainer.labels(old_sif), apptainer.labels(new_sif)
    new_release = new_labels.get("sms-services.release", "")
    if new_release not in project.matrix.releases:
        raise UserError(f"{new_sif}: not an SMS-services image (no known sms-services.release label)")
    refused = step_reasons(old_labels, new_labels, node_slurmd)
    new_ctl = new_labels.get("sms-services.slurm.installed", "")
    if target.site.values.get("slurm_metrics") and not serves_metrics(new_ctl):
        refused.append(f"the site's slurm_metrics needs slurmctld 25.11 or later, the new image's is "
                       f"{new_ctl or 'unknown'}: turn slurm_metrics off first")
    if refused:
        raise UserError(f"cutover to {target.image_name(new_sif)} refused: {'; '.join(refused)}")
    assert target.sms_overlay is not None
    used, total = usage(target.sms_overlay)
    if total - used < FREE_NEEDED:
        raise UserError(f"cutover refused: overlay {target.sms_overlay} is full ({used / 2**20:.0f} of "
                        f"{total / 2**20:.0f} MiB in use); slurmctld could not save its state: free space "
                        "(old logs, /var/tmp) or grow the overlay first")
    new_frags = project.sms_fragments(new_release)
    report = CutoverReport(str(old_sif), str(new_sif), old_release, new_release,
                           host if host is not None else old_host, signer=str(signer) if signer else "UNSIGNED")
    # Read before the stop: the gap should not include reading the images.
    accounts = target.image_accounts(new_sif) if new_release != old_release else None
    # Across Slurm majors the new controller rewrites its state in a format the old
    # cannot read: a rollback must restart on the state as the old image left it.
    # Within one major it restarts on what the new one wrote, so jobs that finished
    # meanwhile stay finished (a copy would bring them back as running).
    same_major = slurm.major(old_labels["sms-services.slurm.installed"]) == \
        slurm.major(new_labels["sms-services.slurm.installed"])
    # Beside the overlay, not in a scratch folder: the rollback renames it into place,
    # which only works on the same filesystem.
    before = None if same_major else target.sms_overlay.with_name(f".{target.sms_overlay.name}.before-cutover")
    watch = ControllerWatch(target, target.nodes[0])
    try:
        watch.wait_up()
        report.settle_s, report.agents_left = target.settle()
        if report.agents_left > 0:
            say(f"slurmctld still has {report.agents_left} RPC threads to the nodes after {report.settle_s} s: "
                "stopping anyway (its exit waits up to 3 s for them)")
        elif report.agents_left < 0:
            say(f"slurmctld did not answer sdiag within 2 s for {report.settle_s} s: stopping anyway")
        # The gap's start in the node's clock, as its samples: the last one before the stop.
        pre = watch.samples()
        since = pre[-1][0] if pre else time.time()
        say(f"stopping {target.image_name(old_sif)}")
        report.stop_s = target.stop_sms()
        stopped = len(watch.samples())  # counted, not timed: the samples carry the node's clock
        try:
            if before is not None:
                copy_overlay(target.sms_overlay, before)
            if accounts is not None:
                report.renumbered = renumbered((target.passwd, target.group, target.shadow), accounts)
                report.site_files_changed = _carry_over(target, new_frags, new_release, accounts)
            target.release, target.sms_fragments = new_release, new_frags
            say(f"starting {target.image_name(new_sif)}" + (f" on {report.host}" if report.host else ""))
            report.start_s = target.start_sms(new_sif, host=report.host)
        except (UserError, OSError) as err:
            # The new image never ran (no copy space, no start): the old one must not stay down.
            if before is not None and before.exists():  # (complete: copy_overlay renames when done)
                os.replace(before, target.sms_overlay)
            target.release, target.sms_fragments = old_release, old_frags
            target.start_sms(old_sif, host=old_host)
            raise UserError(f"cutover to {target.image_name(new_sif)} failed before it started ({err}); "
                            f"{target.image_name(old_sif)} runs again") from None
        # The controller first: on a small host the probes' commands would take CPU from
        # slurmctld reading its state back. Probes run after its first answer (or the deadline).
        # One deadline for both, from the start (the rollback's promise).
        end = target.sms_started_at + deadline
        watch.answered(after=stopped, timeout=max(0.0, end - time.monotonic()))
        results = run_all(target, new_frags, ready_timeout=max(1.0, end - time.monotonic()), phase="cutover",
                          say=say_result)
        report.green_s = round(time.monotonic() - target.sms_started_at, 2)
        report.results = results
        report.ok = all(r.ok for r in results)
        if not report.ok:
            failed = failed_services(results)
            report.reasons.append(f"after the cutover these services failed their probes: {', '.join(failed)}")
            if rollback:
                say(f"rolling back to {target.image_name(old_sif)}: {', '.join(failed)} failed")
                target.stop_sms()
                if before is not None:
                    os.replace(before, target.sms_overlay)
                target.release, target.sms_fragments = old_release, old_frags
                target.start_sms(old_sif, host=old_host)
                report.results += run_all(target, old_frags, ready_timeout=deadline, phase="rollback",
                                          say=say_result)
                report.rolled_back = True
        time.sleep(0.3)  # a few samples after the last start
        found = outages(watch.samples(), since)
        if found is not None:
            report.outages_s = [o.seconds for o in found]
            report.gap_s = 0.0
            if found:
                worst = max(found, key=lambda o: o.seconds)
                report.gap_s = worst.seconds
                report.gap_from, report.gap_to, report.gap_pings_down = worst
    finally:
        watch.stop()
        if before is not None:
            before.unlink(missing_ok=True)
    return report
