"""smsctl ha: SMS-services as a Pacemaker resource on two infrastructure hosts.

``config`` prints (or applies) the cluster configuration as cibadmin XML;
``monitor`` is what the OCF agent (ha/ocf/sms-services/instance) asks to know
whether the instance serves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sms_services.cli.common import err_console, project_of


def cmd_config(args: argparse.Namespace) -> int:
    from sms_services.runtime.ha import apply, load_config, render, to_text

    sections = render(load_config(Path(args.config)))
    if args.apply:
        apply(sections)
        err_console.print("applied crm_config, resources and constraints in one cibadmin transaction "
                          "(crm_mon -1 shows the result)", markup=False)
        return 0
    sys.stdout.write(to_text(sections))
    err_console.print("smsctl: read it, then apply it with smsctl ha config --apply on one host of the pair "
                      "(one cibadmin --modify --allow-create of the whole configuration)", markup=False)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.runtime.ha_monitor import controller_state

    # Plain print: the agent reads the first line as Pacemaker's exit reason; the exit code is OCF's.
    state = controller_state(project_of(args), Apptainer.find(), args.name, timeout=args.timeout)
    print(state.detail)
    return state.code


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ha = sub.add_parser("ha", help="Pacemaker: the HA pair's configuration, and the resource agent's monitor")
    verbs = ha.add_subparsers(dest="ha_command", required=True, metavar="VERB")
    s = verbs.add_parser("config", help="print the Pacemaker configuration (cibadmin XML) for ha.yaml; "
                                        "--apply applies it with cibadmin")
    s.add_argument("config", metavar="HA_YAML", help="the pair: instance, smsctl, bridges, the two hosts "
                                                     "and their fencing (README: HA pair)")
    s.add_argument("--apply", action="store_true", help="apply it with cibadmin --modify --allow-create")
    s.set_defaults(func=cmd_config)

    s = verbs.add_parser("monitor", help="exit 0 when the instance runs and slurmctld answers, 7 when it does "
                                         "not run, 1 when it runs without an answering controller (OCF codes)")
    s.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
    s.add_argument("--timeout", type=float, default=5, help="seconds slurmctld has to answer (default 5)")
    s.set_defaults(func=cmd_monitor)
