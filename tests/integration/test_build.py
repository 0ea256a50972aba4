"""Real builds of the Debian-based releases: labels, manifest, binaries, no secrets.

The os and packages layers come from the shared cache (~/.cache/sms-services),
so after the first build each extra image costs only its final layer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sms_services import slurm
from sms_services.errors import UserError
from sms_services.image.build import Builder
from sms_services.inputs.project import Project

pytestmark = [pytest.mark.integration, pytest.mark.build]
ROOT = Path(__file__).resolve().parents[2]
# One release per Debian suite the project uses (bookworm 22.05, trixie 24.11).
RELEASES = ["3.0", "3.5"]


@pytest.fixture(scope="session")
def built(apptainer, tmp_path_factory) -> dict[str, object]:
    project = Project(ROOT)
    out = tmp_path_factory.mktemp("sif")
    results = {}
    for rid in RELEASES:
        variant = project.matrix.get(rid).variant()
        results[rid] = Builder(project, apptainer).build(variant, out=out / rid)
    return results


@pytest.mark.parametrize("rid", RELEASES)
def test_labels_say_what_is_inside(built, rid: str, project: Project) -> None:
    res = built[rid]
    labels = res.labels
    variant = project.matrix.get(rid).variant()
    assert labels["sms-services.release"] == rid
    assert slurm.major(labels["sms-services.slurm.installed"]) == variant.base.slurm
    listed = dict(item.split("@") for item in labels["sms-services.fragments"].split())
    assert set(listed) == set(variant.release.fragments)
    for name in variant.release.fragments:
        assert labels[f"sms-services.fragment.{name}"] == project.fragments[name].digest
    assert len(labels["sms-services.git-commit"]) >= 40
    assert labels["sms-services.build-date"].startswith("20")
    assert res.size == Path(res.sif).stat().st_size and len(res.sha256) == 64


@pytest.mark.parametrize("rid", RELEASES)
def test_manifest_lists_every_package_with_its_version(built, rid: str, project: Project) -> None:
    out = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "manifest", built[rid].sif],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    manifest = dict(line.split("=", 1) for line in out.splitlines())
    assert int(built[rid].labels["sms-services.manifest.packages"]) == len(manifest)
    variant = project.matrix.get(rid).variant()
    from sms_services.image.render import packages_for
    for frag in project.ordered(variant):
        for pkg in packages_for(frag, variant):
            assert pkg in manifest, f"{pkg} (fragment {frag.name}) missing from the manifest"


def _binaries(rid: str) -> list[tuple[str, str]]:
    project = Project(ROOT)
    variant = project.matrix.get(rid).variant()
    return [(f.name, b) for f in project.ordered(variant) for b in f.binaries]


@pytest.mark.parametrize("rid,frag,binary", [(r, f, b) for r in RELEASES for f, b in _binaries(r)])
def test_service_binary_runs_inside(built, apptainer, rid: str, frag: str, binary: str) -> None:
    res = apptainer.exec(built[rid].sif, ["sh", "-c", 'command -v "$0" && test -x "$(command -v "$0")"',
                                          binary])
    assert res.returncode == 0, f"{binary} of fragment {frag} missing in {rid}: {res.stderr}"


@pytest.mark.parametrize("rid", RELEASES)
def test_no_secret_and_no_site_value_in_image(built, apptainer, rid: str, project: Project) -> None:
    variant = project.matrix.get(rid).variant()
    secrets = [s for f in project.ordered(variant) for s in f.secrets]
    site_files = [t for f in project.ordered(variant) for t in f.templates.values()]
    res = apptainer.exec(built[rid].sif, ["sh", "-c", 'for p; do [ -e "$p" ] && echo "$p"; done; true',
                                          "sh", *secrets, *site_files, "/etc/sms-services/site.env"])
    assert res.stdout.split() == []


@pytest.mark.parametrize("rid", RELEASES)
def test_openhpc_slurm_uid_and_supervisor_programs(built, apptainer, rid: str) -> None:
    res = apptainer.exec(built[rid].sif, ["sh", "-c", "id -u slurm; id -g slurm; ls /etc/sms-services/supervisor.d"])
    lines = res.stdout.split()
    assert lines[:2] == ["202", "202"]
    programs = [n.split("-", 1)[1].removesuffix(".conf") for n in lines[2:]]
    assert programs.index("munge") < programs.index("slurmctld")


def test_changed_fragment_rebuilds_only_the_final_layer(built, apptainer, tmp_path: Path) -> None:
    scratch = tmp_path / "project"
    shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(".venv", ".nox", "build", ".git", "results"))
    run = scratch / "defs/chrony/run.sh"
    run.write_text(run.read_text() + "# site tweak\n")
    project = Project(scratch)
    res = Builder(project, apptainer).build(project.matrix.get("3.5").variant(), out=tmp_path / "out")
    assert res.layers == {"os": "cached", "packages": "cached", "final": "built"}
    assert res.labels["sms-services.fragment.chrony"] == project.fragments["chrony"].digest


def test_a_leaked_secret_fails_the_build_and_leaves_no_sif(built, apptainer, tmp_path: Path) -> None:
    scratch = tmp_path / "project"
    shutil.copytree(ROOT, scratch, ignore=shutil.ignore_patterns(".venv", ".nox", "build", ".git", "results"))
    (scratch / "defs/munge/build.sh").write_text("# forgot to remove the generated key\ntrue\n")
    project = Project(scratch)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"secret /etc/munge/munge.key \(declared by fragment munge\)"):
        Builder(project, apptainer).build(project.matrix.get("3.0").variant(), out=out)
    assert list(out.glob("*.sif")) == [] and list(out.glob(".*partial*")) == []


def test_no_space_is_one_line_and_no_file(apptainer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("sms_services.image.build.MIN_FREE_GIB", 10**9)
    project = Project(ROOT)
    with pytest.raises(UserError, match="GiB free, a build needs"):
        Builder(project, apptainer).build(project.matrix.get("3.5").variant(), out=tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.sif"))


def test_cli_build_json(apptainer, built, tmp_path: Path) -> None:
    import json
    proc = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "build", "3.5", "--json",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"sif", "size", "sha256", "seconds"}
    assert Path(data["sif"]).stat().st_size == data["size"]
