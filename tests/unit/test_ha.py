"""smsctl ha config (cibadmin XML, golden text, hostile values) and the OCF agent's
meta-data and validate-all refusals (no root, no cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from sms_services.cli.main import main
from sms_services.errors import UserError
from sms_services.image.golden import compare
from sms_services.runtime.ha import load_config, render, to_text

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/golden/ha"
AGENT = ROOT / "ha/ocf/sms-services/instance"
OCF_ROOT = Path("/usr/lib/ocf")
needs_ocf = pytest.mark.skipif(not (OCF_ROOT / "lib/heartbeat/ocf-shellfuncs").exists(),
                               reason="resource-agents not installed (install-host.sh installs it)")


def config_file(tmp_path: Path, **change) -> Path:
    data = yaml.safe_load((GOLDEN / "ha.yaml").read_text())
    data.update(change)
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_renders_as_golden(capsys) -> None:
    assert main(["ha", "config", str(GOLDEN / "ha.yaml")]) == 0
    compare(GOLDEN / "cib.xml", capsys.readouterr().out)


@pytest.mark.skipif(not shutil.which("crm_verify"), reason="pacemaker-cli-utils not installed")
def test_pacemaker_accepts_the_configuration(tmp_path: Path) -> None:
    """Pacemaker's own schema check (crm_verify) of a CIB holding the rendered sections."""
    cib = ET.Element("cib", {"validate-with": "pacemaker-3.9", "epoch": "1", "num_updates": "0",
                             "admin_epoch": "0"})
    conf = ET.SubElement(cib, "configuration")
    for section in ET.fromstring(to_text(render(load_config(GOLDEN / "ha.yaml")))):
        conf.append(section)
    nodes = ET.SubElement(conf, "nodes")
    for i, name in enumerate(("infra1", "infra2"), 1):
        ET.SubElement(nodes, "node", id=str(i), uname=name)
    ET.SubElement(cib, "status")
    (tmp_path / "cib.xml").write_text(ET.tostring(cib, encoding="unicode"))
    proc = subprocess.run(["crm_verify", "--xml-file", str(tmp_path / "cib.xml")], capture_output=True, text=True)
    assert "error" not in proc.stderr.lower(), proc.stderr  # (warnings: no quorum in a file)


def test_hostile_values_stay_attribute_values(tmp_path: Path) -> None:
    """Quotes, '<', '&' and newlines in a host name or a fence parameter change no structure."""
    data = yaml.safe_load((GOLDEN / "ha.yaml").read_text())
    evil = 'x"/><primitive id="evil" class="ocf"/><x a="'
    data["nodes"][0]["name"] = evil + "\ninfra3"
    data["nodes"][1]["fence"]["password"] = "p'\"<&></nvpair>"
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="nodes\\[0\\].name"):
        load_config(path)  # a node name is printable on one line, else refused...
    data["nodes"][0]["name"] = evil
    path.write_text(yaml.safe_dump(data))
    text = to_text(render(load_config(path)))
    root = ET.fromstring(text)
    assert not root.findall(".//primitive[@id='evil']")
    prims = [p.get("id") for p in root.iter("primitive")]
    assert len(prims) == 5 and all('"' not in p and "<" not in p for p in prims), prims
    values = {nv.get("name"): nv.get("value") for nv in root.iter("nvpair")}
    assert values["password"] == "p'\"<&></nvpair>"  # ...a value keeps what it says, escaped
    hosts = sorted(nv.get("value") for nv in root.iter("nvpair") if nv.get("name") == "pcmk_host_list")
    assert hosts == sorted([evil, "infra2"])


@pytest.mark.parametrize("change, field", [
    ({"instance": "a b"}, "instance"),
    ({"smsctl": "relative/smsctl"}, "smsctl"),
    ({"bridges": ["br0", "a-very-long-bridge-name"]}, "bridges[1]"),
    ({"bridges": ["br\n0"]}, "bridges[0]"),
    ({"bridges": []}, "bridges"),
    ({"monitor_interval": 0}, "monitor_interval"),
    ({"ready_timeout": 9}, "ready_timeout"),
    ({"ready_timeout": 1800}, "ready_timeout"),  # never fires: the start timeout comes first
    ({"nodes": [{"name": "only", "fence": {"agent": "fence_ipmilan"}}]}, "nodes"),
    ({"nodes": [{"name": "a b", "fence": {"agent": "fence_x"}}, {"name": "a-b", "fence": {"agent": "fence_x"}}]},
     "nodes"),
    ({"nodes": [{"name": "a", "fence": {"agent": "/bin/sh"}}, {"name": "b", "fence": {"agent": "fence_x"}}]},
     "nodes[0].fence.agent"),
    ({"nodes": [{"name": "a", "fence": {"agent": "fence_x", "bad key": 1}}, {"name": "b", "fence": {"agent": "f"}}]},
     "nodes[0].fence.bad key"),
    ({"colour": "red"}, "colour"),
])
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, change: dict, field: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(config_file(tmp_path, **change))
    assert f"field '{field}'" in str(err.value) and "\n" not in str(err.value), err.value


def test_apply_without_a_cluster_is_one_line(tmp_path: Path, capsys) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cibadmin"
    fake.write_text("#!/bin/sh\necho 'Could not connect to the CIB: Transport endpoint is not connected' >&2\n"
                    "exit 102\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "ha", "config", "--apply",
                           str(GOLDEN / "ha.yaml")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cibadmin --modify --scope configuration failed: Could not connect" in proc.stderr


# --- the OCF agent ------------------------------------------------------------------------
def agent(action: str, tmp_path: Path, **params: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCF_ROOT": str(OCF_ROOT), "OCF_RESOURCE_INSTANCE": "sms",
           "HA_LOGFILE": str(tmp_path / "ha.log"), "HA_debug": "0",
           **{f"OCF_RESKEY_{k}": v for k, v in params.items()}}
    return subprocess.run([str(AGENT), action], capture_output=True, text=True, env=env, timeout=30)


@needs_ocf
def test_agent_meta_data_is_valid_ra_api_xml(tmp_path: Path) -> None:
    proc = agent("meta-data", tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = ET.fromstring(proc.stdout)
    assert root.tag == "resource-agent" and root.get("name") == "instance"
    actions = {a.get("name"): a.attrib for a in root.iter("action")}
    assert {"start", "stop", "monitor", "validate-all", "meta-data"} <= set(actions)
    assert int(actions["start"]["timeout"].rstrip("s")) >= 1800  # e2fsck of a large overlay, as the unit
    params = {p.get("name"): p for p in root.iter("parameter")}
    assert {"name", "smsctl", "state_dir", "take_over"} <= set(params) and params["name"].get("required") == "1"
    dtd = Path("/usr/share/resource-agents/ra-api-1.dtd")
    if shutil.which("xmllint") and dtd.exists():  # what ocf-tester checks
        lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=proc.stdout, capture_output=True,
                              text=True, cwd=dtd.parent)
        assert lint.returncode == 0, lint.stderr


def recorded(tmp_path: Path, name: str = "sms-services") -> dict[str, str]:
    state = tmp_path / "state"
    (state / "instances").mkdir(parents=True, exist_ok=True)
    (state / "instances" / f"{name}.json").write_text("{}")
    smsctl = tmp_path / "smsctl"
    smsctl.write_text("#!/bin/sh\nexit 0\n")
    smsctl.chmod(0o755)
    return {"name": name, "smsctl": str(smsctl), "state_dir": str(state)}


@needs_ocf
@pytest.mark.parametrize("change, rc, reason", [
    ({"name": ""}, 6, "'name' is required"),
    ({"name": "-x"}, 6, "start with a letter or digit"),
    ({"name": 'a"b'}, 6, "name: use up to 63"),
    ({"name": "a\nb"}, 6, "name: use up to 63"),
    ({"name": "a" * 64}, 6, "name: use up to 63"),
    ({"take_over": "maybe"}, 6, "take_over 'maybe'"),
    ({"take_over": "Yes"}, 6, "take_over 'Yes'"),  # ocf_is_true would read it as false
    ({"ping_timeout": "0"}, 6, "ping_timeout '0'"),
    ({"ping_timeout": "05"}, 6, "ping_timeout '05'"),
    ({"ready_timeout": "0"}, 6, "ready_timeout '0'"),
    ({"ready_timeout": "5m"}, 6, "ready_timeout '5m'"),
    ({"ready_timeout": "9"}, 6, "ready_timeout '9'"),
    ({"ready_timeout": "1800"}, 6, "ready_timeout '1800'"),
    ({"ready_timeout": "99999999999999999999"}, 6, "ready_timeout '9999"),
    ({"smsctl": "/nonexistent/smsctl"}, 5, "smsctl '/nonexistent/smsctl' not found"),
    ({"name": "other"}, 5, "no instance other recorded on this host"),
])
def test_agent_validate_all_refuses(tmp_path: Path, change: dict, rc: int, reason: str) -> None:
    params = {**recorded(tmp_path), **change}
    proc = agent("validate-all", tmp_path, **params)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert reason in proc.stderr, proc.stderr


@needs_ocf
def test_agent_validate_all_accepts_a_recorded_instance(tmp_path: Path) -> None:
    proc = agent("validate-all", tmp_path, **recorded(tmp_path))
    assert proc.returncode == 0, proc.stderr


@needs_ocf
def test_a_probe_where_nothing_is_recorded_says_not_running(tmp_path: Path) -> None:
    """Pacemaker probes every host: one without the record does not run it (7), not an error."""
    params = {**recorded(tmp_path), "name": "elsewhere", "CRM_meta_interval": "0"}
    assert agent("monitor", tmp_path, **params).returncode == 7
    assert agent("stop", tmp_path, **params).returncode == 0


@needs_ocf
def test_a_start_whose_controller_never_answers_stops_it_and_fails_within_ready_timeout(tmp_path: Path) -> None:
    """Not the whole start timeout (1800 s): the other host gets its turn."""
    params = recorded(tmp_path)
    log, running = tmp_path / "calls", tmp_path / "running"
    Path(params["smsctl"]).write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1 $2" in
"ha monitor") if [ -f {running} ]; then echo "slurmctld does not answer"; exit 1; fi; echo "not running"; exit 7 ;;
"start --name") touch {running}; echo "started"; exit 0 ;;
"stop --name") rm -f {running}; echo "stopped"; exit 0 ;;
esac
exit 2
""")
    proc = agent("start", tmp_path, **params, ready_timeout="10")  # (the agent() call's own limit: 30 s)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not answer within ready_timeout (10 s)" in proc.stderr, proc.stderr
    calls = [c.split(" --")[0] for c in log.read_text().splitlines()]
    assert calls[calls.index("start"):][-2:] == ["stop", "ha monitor"] and not running.exists()


@pytest.mark.parametrize("before, restore", [
    (None, "--resource sms-services --meta --delete-parameter is-managed"),  # unset: unset again
    ("", "--resource sms-services --meta --delete-parameter is-managed"),  # (how Pacemaker 2.1.5 says unset)
    ("true", "--resource sms-services --meta --set-parameter is-managed --parameter-value true"),
    ("false", "--resource sms-services --meta --set-parameter is-managed --parameter-value false"),  # an admin's
])
def test_a_cutover_holds_pacemaker_off_and_gives_the_resource_back_as_it_was(
        tmp_path: Path, before: str | None, restore: str) -> None:
    """is-managed=false around the block, as before and a refresh after it, even when it fails."""
    from sms_services.runtime.ha import unmanaged

    log = tmp_path / "calls"
    fake = tmp_path / "crm_resource"
    get = (f'echo "{before}"; exit 0' if before is not None
           else "echo \"Attribute 'is-managed' not found for 'sms-services'\" >&2; exit 105")
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *--get-parameter*) {get} ;; esac\nexit 0\n')
    fake.chmod(0o755)
    with pytest.raises(RuntimeError):
        with unmanaged("sms-services", crm_resource=str(fake)):
            log.write_text(log.read_text() + "cutover\n")
            raise RuntimeError("rolled back")
    assert log.read_text().splitlines() == [
        "--resource sms-services --meta --get-parameter is-managed",
        "--resource sms-services --meta --set-parameter is-managed --parameter-value false", "cutover",
        restore, "--resource sms-services --refresh"]


def test_an_is_managed_that_is_no_boolean_is_refused_before_anything_changes(tmp_path: Path) -> None:
    from sms_services.runtime.ha import unmanaged

    log = tmp_path / "calls"
    fake = tmp_path / "crm_resource"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho "maybe"\n')
    fake.chmod(0o755)
    with pytest.raises(UserError, match="is-managed is 'maybe'"):
        with unmanaged("sms-services", crm_resource=str(fake)):
            raise AssertionError("not reached")
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.parametrize("change, expect", [
    ({"resource": "1sms"}, "field 'resource'"),
    ({"resource": "fence-infra1"}, "field 'resource'"),
    ({"bridges": ["br0", "br0"]}, "names a bridge twice"),
    ({"bridges": ["br0", "br0-params"]}, "two Pacemaker objects would have the id"),
])
def test_names_that_would_merge_or_break_cib_objects_are_refused(tmp_path: Path, change: dict, expect: str) -> None:
    import yaml

    data = {**yaml.safe_load((GOLDEN / "ha.yaml").read_text()), **change}
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=expect.replace("'", ".")) as err:
        render(load_config(path))
    assert "\n" not in str(err.value)


def test_a_line_break_in_a_fence_value_is_refused(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load((GOLDEN / "ha.yaml").read_text())
    data["nodes"][0]["fence"]["username"] = "admin\nport=infra2"  # a fence agent reads one option a line
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="must be one line of printable characters"):
        load_config(path)
