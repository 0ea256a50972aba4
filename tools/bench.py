"""Benchmark: build times, SIF size, verify timings, cutover gaps, power loss, rehearsal, backup and
e2fsck, as JSON.

Cold uses an empty layer cache (everything bootstrapped and downloaded), warm
repeats the build with nothing changed, incremental changes one fragment's run
script in a copy of the project. Numbers are measured, never asserted: the
JSON file is the record (results/bench.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sms_services.apptainer import Apptainer
from sms_services.errors import UserError
from sms_services.image.build import Builder
from sms_services.inputs.project import Project, find_root


def _timed_build(project: Project, apptainer: Apptainer, release: str, cache: Path, out: Path) -> dict:
    t = time.monotonic()
    res = Builder(project, apptainer, cache=cache).build(project.matrix.get(release).variant(), out=out)
    return {"seconds": round(time.monotonic() - t, 1), "size_bytes": res.size, "layers": res.layers}


def _timed_verify(project: Project, apptainer: Apptainer, release: str) -> dict:
    """One full verify of the release's built SIF: the lab and instance timings it records."""
    from sms_services.lab.verify import verify

    outcome = verify(project, apptainer, release)
    t = outcome.meta["timings"]
    return {"ok": outcome.ok, "lab_up_s": t.get("lab_up_s"), "sms_instance_start_s": t.get("sms_instance_start_s"),
            "start_to_all_green_s": t.get("start_to_green_s"), "verify_total_s": t.get("verify_total_s"),
            "sms_instance_stop_s": t.get("sms_instance_stop_s"), "teardown_s": t.get("teardown_s")}


def _timed_upgrade(project: Project, apptainer: Apptainer, release: str, cutovers: int = 10) -> dict:
    """Cutover service gaps (same image; every probe after each), a rehearsal, backups.

    (No job is kept running across them: slurm-nodes-idle would fail every cutover.
    The integration tests prove jobs survive.)"""
    import statistics

    from sms_services.lab.rehearse import rehearse
    from sms_services.lab.verify import open_lab, probe_services
    from sms_services.runtime.backup import backup
    from sms_services.runtime.cutover import cutover
    from sms_services.trust.signing import Trust

    work = Path(tempfile.mkdtemp(prefix="sms-bench-upgrade-"))
    try:
        with open_lab(project, apptainer, release, name="smsbench") as lab:
            if not probe_services(lab).ok:
                raise UserError(f"bench: release {release} is not green in the lab; run smsctl verify {release}")
            reports = [cutover(lab, project, lab.sms_sif, trust=Trust.candidate()) for _ in range(cutovers)]
            gaps = [r.gap_s for r in reports if r.gap_s is not None]
            t = time.monotonic()
            copies = [backup(lab.sms_overlay, work / "backups", keep=3) for _ in range(3)]
            backup_s = (time.monotonic() - t) / len(copies)
            power_loss_s, fsck_in_it_s = _power_loss_to_green(lab)
            t = time.monotonic()
            rehearsal = rehearse(project, apptainer, lab.sms_sif, lab.sms_overlay, old_sif=lab.sms_sif,
                                 trust=Trust.candidate(), name="smsbenchr")
            rehearse_s = time.monotonic() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "cutovers": len(reports), "all_green": all(r.ok for r in reports),
        "never_answered_again": len(reports) - len(gaps),
        "service_gap_median_s": round(statistics.median(gaps), 2) if gaps else None,
        "service_gap_max_s": max(gaps) if gaps else None,
        "service_gaps_s": gaps,
        "stop_median_s": round(statistics.median(r.stop_s for r in reports), 2),
        "start_median_s": round(statistics.median(r.start_s for r in reports), 2),
        "green_after_start_median_s": round(statistics.median(r.green_s for r in reports), 2),
        "power_loss_to_all_green_s": power_loss_s, "power_loss_e2fsck_s": fsck_in_it_s,
        "rehearsal_s": round(rehearse_s, 1), "rehearsal_go": rehearsal.go, "rehearsal_reasons": rehearsal.reasons,
        "backup_s": round(backup_s, 3), "backup_writes_held_s": max(b.frozen_s for b in copies),
        "backup_stored_mib": round(copies[-1].stored_bytes / 2**20, 2),
        "overlay_used_mib": round(copies[-1].used_bytes / 2**20, 2),
        "overlay_size_mib": round(copies[-1].overlay_bytes / 2**20, 1),
    }


def _power_loss_to_green(lab) -> tuple[float, float]:
    """SIGKILL every process of the instance, then what a restart does (journal replay and
    e2fsck -fn, start) until every probe passes: (seconds in all, of which e2fsck)."""
    from sms_services.lab.verify import probe_services
    from sms_services.runtime.instance import kill_instance
    from sms_services.runtime.overlay_care import require_clean

    kill_instance(lab.apptainer, lab.sms_instance, lab.sms_overlay)
    t = time.monotonic()
    require_clean(lab.sms_overlay)
    fsck_s = time.monotonic() - t
    lab.start_sms(lab.sms_sif)
    if not probe_services(lab, ready_timeout=180).ok:
        raise UserError("bench: the lab did not come back green after the power loss")
    return round(time.monotonic() - t, 2), round(fsck_s, 2)


def _timed_fsck(size_gib: int = 4, used_gib: int = 1) -> dict:
    """e2fsck -fn (after the journal replay) of a sparse overlay of ``size_gib`` holding ``used_gib`` of files."""
    import os
    import subprocess

    from sms_services.runtime.overlay_care import check

    work = Path(tempfile.mkdtemp(prefix="sms-bench-fsck-"))
    try:
        tree = work / "tree" / "upper" / "var" / "spool" / "slurmctld"
        tree.mkdir(parents=True)
        chunk = os.urandom(1 << 20)
        for i in range(used_gib * 1024):  # 1 MiB files: the shape of state, logs and a mail queue
            (tree / f"f{i:05d}").write_bytes(chunk)
        img = work / "overlay.img"
        subprocess.run(["mkfs.ext3", "-q", "-F", "-d", str(work / "tree"), str(img), f"{size_gib}G"], check=True)
        shutil.rmtree(work / "tree")
        t = time.monotonic()
        result = check(img)
        return {"overlay_gib": size_gib, "used_gib": used_gib, "seconds": round(time.monotonic() - t, 2),
                "clean": result.clean}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(release: str, out_file: Path) -> dict:
    root = find_root()
    apptainer = Apptainer.find()
    project = Project(root)
    project.matrix.get(release).variant("debian")
    work = Path(tempfile.mkdtemp(prefix="sms-bench-"))
    try:
        cache = work / "cache"
        cold = _timed_build(project, apptainer, release, cache, work / "out")
        warm = _timed_build(project, apptainer, release, cache, work / "out")
        copy = work / "project"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".venv", ".nox", "build", "results", ".git"))
        run_sh = copy / "defs/chrony/run.sh"
        run_sh.write_text(run_sh.read_text() + "# bench: one fragment changed\n")
        incremental = _timed_build(Project(copy), apptainer, release, cache, work / "out2")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "release": release,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": __import__("os").cpu_count(), "kernel": platform.release(),
                 "apptainer": ".".join(map(str, apptainer.version))},
        "build": {"cold": cold, "warm": warm, "incremental_one_fragment": incremental},
        "sif_size_mib": round(cold["size_bytes"] / 2**20, 1),
        "verify": _timed_verify(project, apptainer, release),
        "upgrade": _timed_upgrade(project, apptainer, release),
        "e2fsck": _timed_fsck(),
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Other benchmarks (verify, cutover) add their own keys to the same file.
    previous = json.loads(out_file.read_text()) if out_file.exists() else {}
    previous.update(report)
    out_file.write_text(json.dumps(previous, indent=2) + "\n")
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--release", default=None)
    ap.add_argument("--out", default="results/bench.json")
    args = ap.parse_args()
    try:
        project = Project(find_root())
        report = run(args.release or project.matrix.default, Path(args.out))
    except UserError as err:
        print(f"bench: {err}", file=sys.stderr)
        return err.exit_code
    b = report["build"]
    print(f"release {report['release']}: cold {b['cold']['seconds']} s, warm {b['warm']['seconds']} s, "
          f"one fragment changed {b['incremental_one_fragment']['seconds']} s, "
          f"SIF {report['sif_size_mib']} MiB; verify {report['verify']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
