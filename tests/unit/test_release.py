from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.inputs.release import Release, load_matrix


def test_matrix_covers_openhpc_2_3_4(project) -> None:
    ids = set(project.matrix.releases)
    assert {"2.0", "2.7", "3.0", "3.5", "4.0"} <= ids
    assert project.matrix.get("3.5").debian.name == "trixie"
    assert project.matrix.get("3.0").debian.name == "bookworm"
    # 20.02 nodes cannot be served by any Debian Slurm (22.05 serves two majors back).
    assert project.matrix.get("2.0").debian is None
    assert project.matrix.get("2.0").variant().kind == "el"


def test_every_debian_variant_serves_its_nodes(project) -> None:
    for rel in project.matrix.releases.values():
        for v in rel.variants():
            assert rel.slurm in v.serves(), (rel.id, v.kind)


def test_ohpc_repo_and_protocol(project) -> None:
    el = project.matrix.get("3.5").variant("el")
    assert el.ohpc_repo == "http://repos.openhpc.community/OpenHPC/3/EL_9"
    assert el.ohpc_release_rpm.endswith("ohpc-release-3-1.el9.x86_64.rpm")
    assert project.matrix.get("2.7").wwclient_protocol == "ww3"
    assert project.matrix.get("3.5").wwclient_protocol == "ww4-provision"
    assert project.matrix.get("3.2").warewulf == "4.5"
    assert project.matrix.get("3.2").wwclient_protocol == "ww4-provision"
    # /overlay-runtime/ is not "the 4.4 protocol": wwclient 4.4 already asks /provision/
    assert Release("x", "23.11", "4.4", (), None, None).wwclient_protocol == "ww4-provision"


def test_unknown_release_is_one_clear_line(project) -> None:
    with pytest.raises(UserError) as e:
        project.matrix.get("9.9")
    msg = str(e.value)
    assert "unknown release '9.9'" in msg and "smsctl releases" in msg and "\n" not in msg


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "releases.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,expect", [
    ("schema: 1\ndefault: '1'\nreleases: [\n", "malformed YAML"),
    ("schema: 1\ndefault: '3.5'\nbases: {}\n", "field 'releases' is missing"),
    ("schema: 2\n", "field 'schema' must be 1"),
    ("schema: 1\ndefault: '3.5'\nbases: {b: {family: debian, suite: x, mirror: 'http://m', slurm: '22.05'}}\n"
     "releases: {'3.5': {slurm: '24.11', warewulf: '4.6', debian: b}}\n", "cannot serve Slurm 24.11"),
    ("schema: 1\ndefault: '3.5'\nbases: {}\nreleases: {'3.5': {slurm: '24.11', warewulf: '4.6', el: X}}\n",
     "names base 'X'"),
    ("schema: 1\ndefault: '3.5'\nbases: {}\nreleases: {'3.5': {warewulf: '4.6'}}\n",
     "field 'releases.3.5.slurm' is missing"),
    ("schema: 1\ndefault: '3.5'\nbases: {}\nreleases: {'3.5': {slurm: '24.11', warewulf: '5', el: X}}\n",
     "field 'releases.3.5.warewulf'"),
])
def test_bad_matrix_names_file_and_field(tmp_path: Path, text: str, expect: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_matrix(path)
    assert str(path) in str(e.value) and expect in str(e.value)
