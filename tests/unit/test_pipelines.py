"""The generated CI pipelines: in step with releases.yaml, and valid for GitLab and GitHub.

Schema validation is offline: check-jsonschema's *builtin* schemas
(``vendor.gitlab-ci``, ``vendor.github-workflows``) are JSON files inside the
package, read with importlib.resources; both have only local ``#/...`` $refs, so
the reference registry never calls its retriever (which would download). The
tests prove it: every socket connect and every retrieval fails them.
"""

from __future__ import annotations

import json
import shutil
import socket
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from check_jsonschema.cli.main_command import main as cjs_main
from check_jsonschema.schema_loader import resolver
from click.testing import CliRunner

from sms_services.cli.main import main as smsctl
from sms_services.image.pipelines import (
    GENERATED,
    check_pipelines,
    render_pipelines,
    write_pipelines,
)
from sms_services.inputs.project import Project

ROOT = Path(__file__).resolve().parent.parent.parent
GITLAB = ["--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", "--regex-variant", "nonunicode"]
GITHUB = ["--builtin-schema", "vendor.github-workflows"]
NEW_RELEASE = '  "4.2":  {slurm: "25.05", warewulf: "4.6", el: EL_10, debian: sid}\n'


# ------------------------------------------------------------------ drift

def test_checked_in_pipelines_match_releases_yaml(project: Project) -> None:
    rendered = render_pipelines(project)
    for rel, text in rendered.items():
        path = ROOT / rel
        assert path.is_file(), f"{rel} missing; run smsctl pipelines --write"
        assert path.read_text() == text, f"{rel} differs from releases.yaml; run smsctl pipelines --write"
    assert check_pipelines(project) == []


def test_every_release_has_both_pipelines(project: Project) -> None:
    rendered = render_pipelines(project)
    parent = yaml.safe_load(rendered[Path("ci/gitlab-ci.yml")])
    for rid, rel in project.matrix.releases.items():
        gitlab = yaml.safe_load(rendered[Path(f"ci/gitlab/{rid}.yml")])
        github = yaml.safe_load(rendered[Path(f"ci/github/{rid}.yml")])
        assert parent[f"release-{rid}"]["trigger"] == {"include": f"ci/gitlab/{rid}.yml", "strategy": "depend"}
        if rel.debian is None:
            assert [k for k in gitlab if k.endswith(rid)] == [f"check-{rid}"]
            assert list(github["jobs"]) == ["check"]
            continue
        assert gitlab[f"build-{rid}"]["script"] == [f"nox -s build-{rid}"]
        assert gitlab[f"verify-{rid}"]["artifacts"]["reports"] == {"junit": f"results/{rid}/junit.xml"}
        assert gitlab[f"sign-{rid}"]["script"][-1] == f"nox -s sign -- {rid}"
        assert gitlab[f"publish-{rid}"]["script"] == [f"nox -s publish -- {rid}"]
        assert list(github["jobs"]) == ["build", "verify", "sign", "publish"]
        for job in ("sign", "publish"):
            assert github["jobs"][job]["if"] == "github.ref == 'refs/heads/main'"
    assert all(t.startswith(GENERATED + "\n") for t in rendered.values())


def test_rendering_is_deterministic(project: Project) -> None:
    assert render_pipelines(project) == render_pipelines(Project(ROOT))


@pytest.fixture
def with_ci(scratch: Path) -> Path:
    shutil.copytree(ROOT / "ci", scratch / "ci")
    return scratch


def test_release_added_without_regenerating_is_reported(with_ci: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (with_ci / "releases.yaml").open("a") as fh:
        fh.write(NEW_RELEASE)
    fix = "run smsctl pipelines --write"
    problems = check_pipelines(Project(with_ci))
    assert f"ci/gitlab/4.2.yml: missing; {fix}" in problems
    assert f"ci/github/4.2.yml: missing; {fix}" in problems
    assert f"ci/gitlab-ci.yml: differs from releases.yaml; {fix}" in problems
    assert len(problems) == 3

    assert smsctl(["--root", str(with_ci), "pipelines", "--check"]) == 1
    assert capsys.readouterr().err.splitlines() == problems

    assert smsctl(["--root", str(with_ci), "pipelines", "--write"]) == 0
    assert (with_ci / "ci/gitlab/4.2.yml").is_file() and (with_ci / "ci/github/4.2.yml").is_file()
    assert smsctl(["--root", str(with_ci), "pipelines", "--check"]) == 0


def test_dropped_release_is_stale_and_removed(with_ci: Path) -> None:
    matrix = with_ci / "releases.yaml"
    matrix.write_text("".join(line for line in matrix.read_text().splitlines(True)
                             if not line.startswith('  "3.4":')))
    problems = check_pipelines(Project(with_ci))
    assert "ci/gitlab/3.4.yml: stale (release 3.4 is not in releases.yaml); run smsctl pipelines --write" in problems
    assert "ci/github/3.4.yml: stale (release 3.4 is not in releases.yaml); run smsctl pipelines --write" in problems
    written, removed = write_pipelines(Project(with_ci))
    assert written == [Path("ci/gitlab-ci.yml")]
    assert sorted(removed) == [Path("ci/github/3.4.yml"), Path("ci/gitlab/3.4.yml")]
    assert check_pipelines(Project(with_ci)) == []


def test_hand_edit_is_reported(with_ci: Path) -> None:
    path = with_ci / "ci/gitlab/3.5.yml"
    path.write_text(path.read_text().replace("timeout: 2h", "timeout: 3h"))
    assert check_pipelines(Project(with_ci)) == [
        "ci/gitlab/3.5.yml: differs from releases.yaml; run smsctl pipelines --write"]


# ------------------------------------------------------------------ schemas (offline)

@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No sockets, no schema downloads, no download cache: any attempt fails the test."""
    retrieved: list[str] = []

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))

    def recording(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        def retrieve(uri: str):  # type: ignore[no-untyped-def]
            retrieved.append(uri)
            raise AssertionError(f"schema $ref retrieval attempted: {uri}")
        return retrieve

    monkeypatch.setattr(resolver, "create_retrieve_callable", recording)
    return retrieved


def validate(schema_args: list[str], paths: list[Path]) -> tuple[int, str]:
    res = CliRunner().invoke(cjs_main, [*schema_args, *map(str, paths)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.mark.parametrize("name", ["gitlab-ci", "github-workflows"])
def test_builtin_schema_is_vendored_and_self_contained(name: str) -> None:
    text = (files("check_jsonschema.builtin_schemas.vendor") / f"{name}.json").read_text()
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(json.loads(text))
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]


def test_gitlab_pipelines_pass_the_gitlab_ci_schema(offline: list[str]) -> None:
    paths = [ROOT / "ci/gitlab-ci.yml", *sorted((ROOT / "ci/gitlab").glob("*.yml"))]
    assert len(paths) > 2
    code, out = validate(GITLAB, paths)
    assert code == 0, out
    assert offline == []


def test_github_workflows_pass_the_github_workflow_schema(offline: list[str]) -> None:
    paths = sorted((ROOT / "ci/github").glob("*.yml"))
    assert paths
    code, out = validate(GITHUB, paths)
    assert code == 0, out
    assert offline == []


def test_broken_gitlab_pipeline_fails_validation(offline: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text((ROOT / "ci/gitlab/3.5.yml").read_text().replace("stage: build", "stage: 5"))
    code, out = validate(GITLAB, [bad])
    assert code == 1, out
    assert "stage" in out and "5 is not" in out
    assert offline == []


def test_broken_github_workflow_fails_validation(offline: list[str], tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "ci/github/3.5.yml").read_text())
    del doc["jobs"]["build"]["runs-on"]
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = validate(GITHUB, [bad])
    assert code == 1, out
    assert "'runs-on' is a required property" in out
    assert offline == []
