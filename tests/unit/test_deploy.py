"""A recorded production instance, without root: its record, node commands, networks, accounts."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.image.accounts import merge
from sms_services.inputs.fragment import Probe
from sms_services.inputs.project import Project
from sms_services.probes.registry import runnable
from sms_services.runtime.deploy import DEFAULT_NODE_EXEC, Deployment, Record, start
from sms_services.runtime.instance import cni_dir, mac_for, write_network

ROOT = Path(__file__).resolve().parents[2]
SRUN, NAT, PING = Probe("slurm-srun", {}), Probe("nat-route", {}), Probe("slurm-ping", {})


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def record(**kw) -> Record:
    values = dict(name="sms", sif="/srv/sms-3.5.sif", release="3.5", overlay="/srv/sms.img",
                  site=str(ROOT / "overlays/lab/site.yaml"), provision_bridge="br-prov", public_bridge="br-pub")
    values.update(kw)
    return Record(**values)


def test_a_record_survives_a_round_trip(state: Path) -> None:
    record(binds=["/etc/hosts"]).save()
    again = Record.load("sms")
    assert again.binds == ["/etc/hosts"] and again.node_exec == DEFAULT_NODE_EXEC
    assert not list((state / "instances").glob("*.tmp"))


def test_a_missing_or_damaged_record_is_one_line(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cutover", "--name", "nope", "--to", "/srv/new.sif"]) == 2
    err = capsys.readouterr().err
    assert "nope.json: no record of an instance named 'nope'" in err and len(err.strip().splitlines()) == 1
    (state / "instances").mkdir(parents=True)
    (state / "instances/bad.json").write_text('{"name": "bad", "colour": "red"}')
    with pytest.raises(UserError, match="bad.json: not a record smsctl start wrote"):
        Record.load("bad")


def test_a_node_gets_its_command_as_one_shell_string(project: Project, state: Path) -> None:
    with Deployment(project, None, record(node_exec="ssh -o BatchMode=yes {node}")) as dep:  # type: ignore[arg-type]
        cmd = dep.exec_command("c1", ["logger", "-t", "probe", "two words; $HOME"])
        assert cmd[:3] == ["ssh", "-o", "BatchMode=yes"] and cmd[3] == "c1"
        assert shlex.split(cmd[4]) == ["logger", "-t", "probe", "two words; $HOME"]
        # What a remote shell makes of it: the same argv, nothing expanded.
        out = subprocess.run(["sh", "-c", 'for a; do echo "[$a]"; done', "sh", *shlex.split(cmd[4])],
                             capture_output=True, text=True).stdout
        assert "[two words; $HOME]" in out
        assert dep.nodes == ["c1", "c2"]
        assert not runnable(SRUN, dep.provides) and not runnable(NAT, dep.provides)
        assert runnable(PING, dep.provides)
    with Deployment(project, None, record(), jobs=True) as dep:  # type: ignore[arg-type]
        assert runnable(SRUN, dep.provides) and not runnable(NAT, dep.provides)


def test_start_names_a_missing_overlay_or_bridge(project: Project, tmp_path: Path, state: Path) -> None:
    common = dict(name="sms", site=ROOT / "overlays/lab/site.yaml", provision_bridge="br-nope-1",
                  public_bridge="br-nope-2")
    with pytest.raises(UserError, match="no such overlay"):
        start(project, None, tmp_path / "x.sif", overlay=tmp_path / "missing.img", **common)  # type: ignore[arg-type]
    (tmp_path / "o.img").write_bytes(b"")
    with pytest.raises(UserError, match="bridge 'br-nope-1': no such Linux bridge"):
        start(project, None, tmp_path / "x.sif", overlay=tmp_path / "o.img", **common)  # type: ignore[arg-type]
    assert not (state / "instances").exists()  # nothing recorded for what did not start


def test_networks_are_bridges_without_nat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "apptainer.conf"
    conf.write_text("# cni configuration path = /nowhere\ncni configuration path = /etc/cni-sms\n")
    monkeypatch.setenv("APPTAINER_CONFIG_FILE", str(conf))
    assert cni_dir() == Path("/etc/cni-sms")
    conf.write_text("")
    assert cni_dir() == Path("/etc/apptainer/network")
    path = write_network(tmp_path / "net", "sms-prov", "br-prov", forward=True)
    plugins = json.loads(path.read_text())["plugins"]
    assert plugins[0] == {"type": "bridge", "bridge": "br-prov", "isGateway": False, "ipMasq": False,
                          "ipam": {"type": "static"}}
    assert plugins[1]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert mac_for("198.18.0.2") == "02:00:c6:12:00:02"


def test_new_system_accounts_keep_the_clusters_users() -> None:
    image = ("root:x:0:0::/root:/bin/sh\nmunge:x:995:995::/:/bin/false\n", "root:x:0:\nmunge:x:995:\n",
             "root:*::::::\nmunge:!::::::\n")
    current = ("root:x:0:0::/root:/bin/sh\nmunge:x:101:101::/:/bin/false\nalice:x:2001:2001::/home/alice:/bin/bash\n",
               "root:x:0:\nmunge:x:101:\nalice:x:2001:\n", "root:*::::::\nmunge:!::::::\nalice:$6$x::::::\n")
    files = merge(image, current)
    assert files["/etc/passwd"].splitlines() == ["root:x:0:0::/root:/bin/sh", "munge:x:995:995::/:/bin/false",
                                                 "alice:x:2001:2001::/home/alice:/bin/bash"]
    assert files["/etc/group"].endswith("alice:x:2001:\n") and "munge:x:995:" in files["/etc/group"]
    assert files["/etc/shadow"].count("alice") == 1


def test_a_stop_waits_for_the_instance_past_the_end_of_apptainer_instance_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`instance stop -t 10` returns once it sent SIGKILL, before the killed daemons are
    gone: a start then would find the overlay in use (seen in a load bench's cutover)."""
    import threading
    import time

    from sms_services.runtime import instance

    daemon = subprocess.Popen(["sleep", "1"])
    threading.Thread(target=daemon.wait, daemon=True).start()  # reaped the moment it ends
    monkeypatch.setattr(instance, "instance_pids", lambda apptainer, name: [daemon.pid])

    class Stopper:  # an `apptainer instance stop` that is done at once
        binary = "true"

    t = time.monotonic()
    seconds, stopper = instance.stop_instance(Stopper(), "sms", None)  # type: ignore[arg-type]
    stopper.wait()
    assert not Path(f"/proc/{daemon.pid}").exists() and time.monotonic() - t >= 0.9 and seconds >= 0.9


def test_a_stop_that_leaves_the_instance_running_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from sms_services.runtime import instance

    daemon = subprocess.Popen(["sleep", "5"])
    monkeypatch.setattr(instance, "instance_pids", lambda apptainer, name: [daemon.pid])
    monkeypatch.setattr(instance, "STOP_WAIT_S", 0.5)

    class Stopper:
        binary = "true"

    try:
        with pytest.raises(UserError, match=f"instance sms: process\\(es\\) {daemon.pid} still running"):
            instance.stop_instance(Stopper(), "sms", None)  # type: ignore[arg-type]
    finally:
        daemon.kill()
        daemon.wait()
