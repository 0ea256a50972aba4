"""The command line's promises: one line on bad input, JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smsctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sms_services.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd,
                          # This checkout's package, also when cwd is a scratch copy of the inputs.
                          env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(cwd), "PYTHONPATH": str(ROOT)})


def test_unknown_release_one_line() -> None:
    for cmd in (["render", "--release", "7.7"], ["build", "7.7"]):
        p = smsctl(*cmd)
        assert p.returncode == 2
        assert p.stderr.count("\n") == 1 and "unknown release '7.7'" in p.stderr
        assert "Traceback" not in p.stderr


def test_releases_json_lists_every_release() -> None:
    p = smsctl("releases", "--json")
    data = json.loads(p.stdout)
    rel = {r["release"]: r for r in data["releases"]}
    assert data["default"] in rel
    v = rel["3.5"]["variants"][0]
    assert v["variant"] == "debian" and "24.11" in v["serves_slurmd"]
    assert rel["2.0"]["debian_suite"] is None


def test_render_prints_the_definition() -> None:
    p = smsctl("render", "--release", "3.5", "--commit", "abc")
    assert p.returncode == 0
    assert p.stdout.startswith("# sms-services definition: OpenHPC 3.5")
    assert "Bootstrap: debootstrap\nOSVersion: trixie" in p.stdout
    el = smsctl("render", "--release", "3.5", "--variant", "el", "--commit", "abc")
    assert "Bootstrap: yum" in el.stdout and "ohpc-release-3-1.el9" in el.stdout


def test_malformed_fragment_is_one_line(scratch: Path) -> None:
    (scratch / "defs/chrony/fragment.yaml").write_text("summary: [unclosed\n")
    p = smsctl("render", cwd=scratch)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "defs/chrony/fragment.yaml: line" in p.stderr and "malformed YAML" in p.stderr


def test_lint_reports_definition_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "x.def"
    bad.write_text("Bootstrap: dockr\nFrom: x\n\n%files\na /tmp/a\n\n%post\ntrue\n\n%post\ntrue\n")
    p = smsctl("lint", str(bad))
    assert p.returncode == 1
    assert "unknown bootstrap agent 'dockr'" in p.stderr
    assert "%files copies into /tmp/a" in p.stderr and "'%post' appears twice" in p.stderr


def test_check_is_clean() -> None:
    p = smsctl("check")
    assert p.returncode == 0, p.stderr


def test_site_vars_and_schema_check() -> None:
    r = smsctl("site", "vars", "--release", "4.1", "--json")
    assert r.returncode == 0, r.stderr
    names = {v["name"] for v in json.loads(r.stdout)}
    assert "slurmdbd_password" in names and "provision_ip" in names
    r = smsctl("schema", "--check")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_site_check_names_a_bad_site_in_one_line(tmp_path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("provision_ip: 198.18.0.2\nbogus_key: 1\n")
    r = smsctl("site", "check", str(bad))
    assert r.returncode != 0 and "bogus_key" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
