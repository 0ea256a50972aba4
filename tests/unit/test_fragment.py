from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.inputs.fragment import content_digest, load_fragment, load_fragments, order


def test_every_fragment_loads(project) -> None:
    names = set(project.fragments)
    assert {"base", "munge", "slurmctld", "rsyslog", "chrony", "postfix", "nat", "cron",
            "wwclient", "mariadb", "slurmdbd"} <= names
    assert "/etc/munge/munge.key" in project.fragments["munge"].secrets


def test_order_puts_dependencies_first(project) -> None:
    names = ["wwclient", "slurmctld", "slurm-common", "munge", "base"]
    ordered = [f.name for f in order(names, project.fragments, "test")]
    assert ordered[0] == "base"
    assert ordered.index("munge") < ordered.index("slurmctld")
    assert ordered == [f.name for f in order(list(reversed(names)), project.fragments, "test")]


def test_missing_run_script(scratch: Path) -> None:
    (scratch / "defs/munge/run.sh").unlink()
    with pytest.raises(UserError, match=r"defs/munge/run.sh: missing run script"):
        load_fragment(scratch / "defs/munge")


def test_dependency_cycle_is_named(scratch: Path) -> None:
    meta = scratch / "defs/munge/fragment.yaml"
    meta.write_text(meta.read_text() + "requires: [slurmctld]\n")
    frags = load_fragments(scratch / "defs")
    with pytest.raises(UserError, match=r"dependency cycle \(munge -> slurmctld -> munge\)"):
        order(["base", "munge", "slurm-common", "slurmctld"], frags, "test")


def test_dependency_not_in_release(project) -> None:
    with pytest.raises(UserError, match=r"'requires' names 'munge', which is not in release X"):
        order(["base", "slurmctld"], project.fragments, "release X")


@pytest.mark.parametrize("snippet,expect", [
    ("ports: [{port: 70000}]\n", "field 'ports[0].port' must be 1-65535"),
    ("ports: [{port: 25, proto: sctp}]\n", "field 'ports[0].proto'"),
    ("capabilities: [NET_ADMIN]\n", "field 'capabilities[0]'"),
    ("colour: blue\n", "field 'colour' is not a known field"),
    ("state: [var/lib/x]\n", "field 'state[0]' must be an absolute path"),
    ("mode: sometimes\n", "field 'mode'"),
])
def test_bad_metadata_names_file_and_field(scratch: Path, snippet: str, expect: str) -> None:
    meta = scratch / "defs/chrony/fragment.yaml"
    text = "\n".join(ln for ln in meta.read_text().splitlines()
                     if not ln.startswith(snippet.split(":")[0] + ":") and not ln.startswith("  - {port"))
    meta.write_text(text + "\n" + snippet)
    with pytest.raises(UserError) as e:
        load_fragment(scratch / "defs/chrony")
    assert str(meta) in str(e.value) and expect in str(e.value)


def test_malformed_yaml_names_the_line(scratch: Path) -> None:
    meta = scratch / "defs/cron/fragment.yaml"
    meta.write_text("summary: x\npackages: {debian: [cron\n")
    with pytest.raises(UserError, match=r"fragment.yaml: line \d+ column \d+: malformed YAML"):
        load_fragment(scratch / "defs/cron")


def test_digest_follows_content_not_tests(scratch: Path) -> None:
    folder = scratch / "defs/cron"
    before = content_digest(folder)
    (folder / "test_cron.py").write_text("# tests never enter the image\n")
    assert content_digest(folder) == before
    (folder / "run.sh").write_text((folder / "run.sh").read_text() + "# changed\n")
    assert content_digest(folder) != before


def test_file_modes_are_declared_by_the_fragments(project) -> None:
    modes = {fm.path: (fm.owner, fm.mode) for f in project.fragments.values() for fm in f.file_modes}
    assert modes["/etc/munge/munge.key"] == ("munge", 0o400)
    assert modes["/etc/slurm/slurmdbd.conf"] == ("root", 0o600)


@pytest.mark.parametrize("snippet,expect", [
    ("file_modes:\n  /etc/munge/munge.key: {owner: munge, mode: 0400}\n", "file_modes./etc/munge/munge.key.mode"),
    ("file_modes:\n  etc/x: {mode: \"0400\"}\n", "must be an absolute path"),
    ("breaks:\n  - {name: x, doc: d, break: b, repair: r, fails: []}\n", "must name the probes"),
    ("probes:\n  - {kind: process, name: cron, when: cron_on}\n", "when' 'cron_on' must be a boolean site "
     "variable this fragment declares"),
])
def test_bad_file_modes_and_breaks_name_the_field(scratch: Path, snippet: str, expect: str) -> None:
    meta = scratch / "defs/cron/fragment.yaml"
    text = meta.read_text()
    text = text.split("\nbreaks:")[0] + "\n" if "breaks:" in snippet else text
    text = text.split("\nprobes:")[0] + "\n" if snippet.startswith("probes:") else text
    meta.write_text(text + snippet)
    with pytest.raises(UserError, match=expect.replace(".", r"\.")):
        load_fragments(scratch / "defs")
