"""smsctl probe: the health of a running instance, as a monitoring plugin and a node_exporter textfile."""

from __future__ import annotations

import argparse
from pathlib import Path

from sms_services.cli.common import out_console, project_of, write_json


def cmd_probe(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.errors import UserError
    from sms_services.runtime.health import UNKNOWN, check, write_prometheus

    try:
        health = check(project_of(args), Apptainer.find(), args.name, probe_timeout=args.timeout,
                       warn_free=args.warn_free, crit_free=args.crit_free)
        if args.prometheus:
            write_prometheus(health, Path(args.prometheus))
        if args.json:
            write_json(args.json, health.to_dict())
    except UserError as err:
        # A monitoring system reads exit 3 as "the check could not run", never as an outage.
        print(f"SMS-SERVICES UNKNOWN - {args.name}: {err}")
        return UNKNOWN
    # Plain print, no rich markup or wrapping: the first line is parsed by Nagios/Icinga.
    print(health.summary())
    if args.verbose:
        for r in health.results:
            out_console.print(f"{'ok  ' if r.ok else 'FAIL'} {r.service}/{r.probe} {r.seconds * 1000:.0f} ms "
                              f"{r.detail}", markup=False, highlight=False)
    return health.status


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("probe", help="health of a running instance for monitoring: exit 0 OK, 1 WARNING, "
                                     "2 CRITICAL, 3 UNKNOWN (as a Nagios/Icinga plugin)")
    s.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
    s.add_argument("--json", metavar="FILE", help="also write the whole result as JSON")
    s.add_argument("--prometheus", metavar="FILE",
                   help="also write a node_exporter textfile (atomically), e.g. "
                        "/var/lib/prometheus/node-exporter/sms-services.prom")
    s.add_argument("--timeout", type=float, default=10, help="seconds each probe may take (default 10)")
    s.add_argument("--warn-free", type=float, default=10, metavar="PCT",
                   help="WARNING below this much free overlay space, in percent (default 10)")
    s.add_argument("--crit-free", type=float, default=5, metavar="PCT",
                   help="CRITICAL below this much free overlay space, in percent (default 5)")
    s.add_argument("--verbose", "-v", action="store_true", help="one line per probe after the summary")
    s.set_defaults(func=cmd_probe)
