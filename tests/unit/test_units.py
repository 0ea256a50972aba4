"""smsctl unit: the rendered unit passes systemd-analyze verify with no warning, names the
bridges as systemd does, and carries nothing a value could smuggle in (no root, no systemd PID 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sms_services.cli.main import main
from sms_services.errors import UserError
from sms_services.runtime.units import device_unit, escape_unit_part, exec_lines, render_unit

ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze not installed (install-host.sh installs it)")


def fake_smsctl(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "smsctl"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


def unit(tmp_path: Path, **kw) -> str:
    args = dict(name="sms-services", smsctl=fake_smsctl(tmp_path), state_dir=Path("/var/lib/sms-services"),
                overlay=Path("/srv/sms/sms-overlay.img"), provision_bridge="br-prov", public_bridge="br0")
    return render_unit(**{**args, **kw})


def verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "sms-services-sms-services.service"
    path.write_text(text)
    return subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True)


@needs_systemd
def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    r = verify(tmp_path, unit(tmp_path))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@needs_systemd
@pytest.mark.parametrize("spoil", [("Type=forking", "Type=forkin"), ("Restart=on-failure", "Restart=sometimes"),
                                   ("/bin/smsctl start", "/nonexistent/smsctl start")])
def test_verify_would_catch_a_broken_unit(tmp_path: Path, spoil: tuple[str, str]) -> None:
    text = unit(tmp_path)
    assert spoil[0] in text
    r = verify(tmp_path, text.replace(*spoil))
    assert r.returncode != 0 or r.stderr.strip()


@pytest.mark.parametrize("iface", ["br-prov", "br0", "sms35-p", "a.b", "x_y:z"])
def test_bridge_device_units_are_escaped_as_systemd_escape_does(iface: str) -> None:
    tool = shutil.which("systemd-escape")
    if tool:
        assert escape_unit_part(iface) == subprocess.run([tool, iface], capture_output=True, text=True).stdout.strip()
    assert device_unit("br-prov") == "sys-subsystem-net-devices-br\\x2dprov.device"


def test_the_unit_runs_smsctl_for_the_record_and_waits_for_the_bridges(tmp_path: Path) -> None:
    text = unit(tmp_path)
    lines = exec_lines(text)
    smsctl = str(fake_smsctl(tmp_path))
    assert lines["ExecStart"] == [smsctl, "start", "--name", "sms-services", "--pid-file",
                                  "/run/sms-services/sms-services.pid"]
    assert lines["ExecStop"] == [smsctl, "stop", "--name", "sms-services"]
    assert "PIDFile=/run/sms-services/sms-services.pid" in text and "Restart=on-failure" in text
    assert f"BindsTo={device_unit('br-prov')} {device_unit('br0')}" in text


@pytest.mark.parametrize("field,value", [("overlay", Path("/srv/my sms/o.img")), ("overlay", Path("/srv/%h/o.img")),
                                         ("public_bridge", "br0\nExecStartPre=/bin/sh"),
                                         ("state_dir", Path("/var/lib/$X"))])
def test_a_value_cannot_add_to_the_unit(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(UserError, match="a unit can only carry"):
        unit(tmp_path, **{field: value})


def test_smsctl_unit_writes_the_recorded_instances_unit(tmp_path: Path, monkeypatch, capsys) -> None:
    state = tmp_path / "state"
    (state / "instances").mkdir(parents=True)
    (state / "instances/sms.json").write_text(json.dumps({
        "name": "sms", "sif": "/srv/sms/img.sif", "release": "3.5", "overlay": "/srv/sms/o.img",
        "site": "/etc/sms/site.yaml", "provision_bridge": "br-prov", "public_bridge": "br0"}))
    monkeypatch.setenv("SMS_STATE_DIR", str(state))
    monkeypatch.setenv("PATH", f"{fake_smsctl(tmp_path).parent}:/usr/bin:/bin")
    out = tmp_path / "units"
    out.mkdir()
    assert main(["unit", "--name", "sms", "--out", str(out)]) == 0
    text = (out / "sms-services-sms.service").read_text()
    assert f"Environment=SMS_STATE_DIR={state}" in text and "--name sms" in text
    assert "systemctl enable --now sms-services-sms.service" in capsys.readouterr().out
    assert main(["unit", "--name", "sms", "--out", str(tmp_path / "nope")]) == 2
