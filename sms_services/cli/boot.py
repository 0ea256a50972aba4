"""smsctl unit: a systemd unit that starts a recorded instance at boot and after a crash."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from sms_services.cli.common import out_console
from sms_services.errors import UserError


def smsctl_path() -> Path:
    """This smsctl, absolute (systemd runs ExecStart without a PATH search of our venv)."""
    found = shutil.which("smsctl")
    if found:
        return Path(found).resolve()
    here = Path(sys.argv[0])
    if here.name == "smsctl" and here.exists():
        return here.resolve()
    beside = Path(sys.executable).parent / "smsctl"  # run as python -m from the venv smsctl lives in
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    raise UserError("smsctl: not on PATH; run smsctl unit from the installed smsctl (e.g. .venv/bin/smsctl)")


def cmd_unit(args: argparse.Namespace) -> int:
    from sms_services.files import atomic_write
    from sms_services.runtime.deploy import Record, state_dir
    from sms_services.runtime.units import render_unit, unit_name

    rec = Record.load(args.name)
    config = os.environ.get("SMS_CONFIG_DIR")
    text = render_unit(name=rec.name, smsctl=smsctl_path(), state_dir=state_dir().resolve(),
                       overlay=Path(rec.overlay), provision_bridge=rec.provision_bridge,
                       public_bridge=rec.public_bridge, config_dir=Path(config).resolve() if config else None)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"{out}: no such folder for the unit (--out)")
    path = out / unit_name(rec.name)
    atomic_write(path, text, mode=0o644)
    out_console.print(f"wrote {path}; enable it with: systemctl daemon-reload && systemctl enable --now "
                      f"{unit_name(rec.name)}", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("unit", help="write a systemd unit that starts a recorded instance at boot and after a crash")
    s.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
    s.add_argument("--out", default="/etc/systemd/system", metavar="DIR",
                   help="where the unit goes (default /etc/systemd/system; - prints it)")
    s.set_defaults(func=cmd_unit)
