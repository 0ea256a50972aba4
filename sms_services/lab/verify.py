"""verify: start a release's SIF in a lab cluster and prove every service answers.

The order of events is what an admin needs before an upgrade: the lab comes up,
every probe of every fragment passes from a compute node's point of view, then
SMS-mgmt is stopped and everything but the file sync must still pass with the
synced files intact (SMS-services must not depend on SMS-mgmt being up).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.files import sha256_file
from sms_services.image.build import Builder
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site
from sms_services.lab.cluster import Lab
from sms_services.probes import Result, failed_services, run_all, to_json
from sms_services.probes.registry import KINDS, SMS_MGMT_CONTROL
from sms_services.probes.report import junit
from sms_services.trust.signing import Trust, check, content_digest

SYNCED = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/slurm/slurm.conf", "/etc/munge/munge.key"]


@dataclass
class Outcome:
    results: list[Result]
    meta: dict

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [f"{r.service} ({r.probe}, {r.phase})" for r in self.results if not r.ok]

    @property
    def failed_services(self) -> list[str]:
        return failed_services(self.results)


def prepare_images(project: Project, apptainer: Apptainer, release: str, sif: Path | None,
                   say: Callable[[str], None]) -> tuple[Path, Path]:
    variant = project.matrix.get(release).variant("debian")
    builder = Builder(project, apptainer, say=say)
    if sif is None:
        # The builder keeps an up-to-date image as it is and rebuilds a stale one:
        # verifying an image older than the fragments would prove the wrong thing.
        sif = Path(builder.build(variant).sif)
    elif not sif.is_file():
        raise UserError(f"{sif}: no such SIF")
    compute = Path(builder.build(variant, role="compute").sif)
    return sif, compute


def probe_services(lab: Lab, *, only: set[str] | None = None, skip: set[str] = frozenset(),
                   ready_timeout: float = 90, probe_timeout: float = 20, phase: str = "up",
                   say_result: Callable[[Result], None] = lambda r: None) -> Outcome:
    """Run the probes of the lab's SMS-services fragments (``only``: of these services)."""
    frags = [f for f in lab.sms_fragments if only is None or f.name in only]
    if only and not frags:
        raise UserError(f"no fragment named {', '.join(sorted(only))} in release {lab.release}")
    results = run_all(lab, frags, ready_timeout=ready_timeout, probe_timeout=probe_timeout, skip=skip,
                      phase=phase, say=say_result)
    return Outcome(results, {"release": lab.release, "sif": str(lab.sms_sif)})


@contextmanager
def open_lab(project: Project, apptainer: Apptainer, release: str, *, sif: Path | None = None,
             site_path: Path | None = None, name: str = "", trust: Trust | None = None,
             overlay: Path | None = None, compute_sif: Path | None = None, job_nodes: int | None = None,
             say: Callable[[str], None] = lambda s: None) -> Iterator[Lab]:
    """A running lab cluster for ``release``, torn down when the block ends (however it ends).

    Nothing starts that its trust refuses: unsigned, untrusted or tampered images
    end here in one line (see signing.py). ``compute_sif``: the caller has prepared
    the compute image already (``prepare_images``).
    """
    rel = project.matrix.get(release)
    variant = rel.variant("debian")
    trust = trust or Trust.candidate()
    # A given image is checked before anything is built: a refusal costs no build.
    signer = check(apptainer, sif, trust, warn=say) if sif is not None else None
    if sif is None or compute_sif is None:
        sms_sif, compute_sif = prepare_images(project, apptainer, release, sif, say)
    else:
        sms_sif = sif
    if sif is None:
        signer = check(apptainer, sms_sif, trust, warn=say)
    check(apptainer, compute_sif, Trust.candidate(), warn=say)
    sms_frags = project.ordered(variant)
    site = load_site(site_path or project.root / "overlays/lab/site.yaml", sms_frags,
                     list(project.fragments.values()))
    lab = Lab(release, sms_sif, compute_sif, site, sms_frags, project.ordered(variant, "compute"), apptainer,
              rel.wwclient_protocol, say=say, warewulf=rel.warewulf, name=name,
              signer=str(signer) if signer else "UNSIGNED",
              sms_overlay=overlay, job_nodes=job_nodes)
    with lab:
        yield lab


def mgmt_down_phase(lab: Lab, syncing: str, say_result: Callable[[Result], None]) -> list[Result]:
    """SMS-mgmt stopped: every other probe passes and synced files stay as they were."""
    def digests() -> str:
        return lab.on_sms(["sha256sum", *SYNCED])[1]

    before = digests()
    lab.stop_mgmt()
    lab.supervisor("signal", "HUP", syncing)
    time.sleep(2)  # one failed sync attempt against the stopped SMS-mgmt
    results = run_all(lab, lab.sms_fragments, ready_timeout=20, provides=lab.provides - {SMS_MGMT_CONTROL},
                      phase="mgmt-down",
                      say=say_result)
    after = digests()
    intact = bool(before) and before == after
    res = Result(syncing, "files-intact", intact, 0, 0, 1,
                 "synced files unchanged while SMS-mgmt is down" if intact
                 else "synced files changed or vanished while SMS-mgmt was down", "mgmt-down")
    say_result(res)
    return results + [res]


def failed_service_logs(lab: Lab, results: list[Result], lines: int = 25) -> dict[str, str]:
    """The end of each failed service's log, so a red verify says why without a rerun."""
    logs = {}
    for service in failed_services(results):
        rc, out, _ = lab.on_sms(["tail", "-n", str(lines), f"/var/log/sms-services/{service}.log"])
        logs[service] = out if rc == 0 else "(no log)"
    return logs


def verify(project: Project, apptainer: Apptainer, release: str, *, sif: Path | None = None,
           site_path: Path | None = None, json_path: Path | None = None, junit_path: Path | None = None,
           say: Callable[[str], None] = lambda s: None,
           say_result: Callable[[Result], None] = lambda r: None,
           hook: Callable[[Lab], None] | None = None, trust: Trust | None = None) -> Outcome:
    start = time.monotonic()
    results: list[Result] = []
    with open_lab(project, apptainer, release, sif=sif, site_path=site_path, trust=trust, say=say) as lab:
        say(f"lab {lab.name} up in {lab.timings['lab_up_s']} s; probing from {', '.join(lab.nodes)}")
        if hook is not None:
            hook(lab)  # tests break a service here
        results = probe_services(lab, say_result=say_result).results
        lab.timings["start_to_green_s"] = round(time.monotonic() - lab.sms_started_at, 2)
        # The service whose probe changes SMS-mgmt syncs from it: with SMS-mgmt down, it must
        # keep the files it has and everything else must still answer.
        syncing = [f.name for f in lab.sms_fragments for p in f.probes
                   if p.kind in KINDS and SMS_MGMT_CONTROL in KINDS[p.kind].needs]
        if syncing and all(r.ok for r in results):
            results += mgmt_down_phase(lab, syncing[0], say_result)
        logs = failed_service_logs(lab, results)
        lab.timings["sms_instance_stop_s"] = lab.stop_sms()
    meta = {"release": release, "variant": "debian", "sif": str(lab.sms_sif), "compute_sif": str(lab.compute_sif),
            "sif_sha256": sha256_file(lab.sms_sif), "sif_content_sha256": content_digest(apptainer, lab.sms_sif),
            "signer": lab.signer,
            "timings": {**lab.timings, "verify_total_s": round(time.monotonic() - start, 2)},
            "logs": logs}
    outcome = Outcome(results, meta)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(to_json(results, meta) + "\n")
    if junit_path:
        junit(results, f"verify-{release}", junit_path, time.monotonic() - start)
    return outcome
