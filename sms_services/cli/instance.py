"""smsctl init, start, status, stop, reconcile and cutover: SMS-services running on this host, and its upgrade."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from sms_services.cli.common import (
    add_trust_args,
    err_console,
    out_console,
    print_json,
    project_of,
    sif_of,
    trust_of,
    write_json,
)
from sms_services.errors import UserError
from sms_services.runtime.deploy import DEFAULT_NODE_EXEC


def named_copies() -> set[str]:
    """The checked copies this host's instance records name (every other one may go)."""
    from sms_services.runtime.deploy import records

    return {Path(r.sif).name for r in records()}


def cmd_init(args: argparse.Namespace) -> int:
    import signal

    from sms_services.apptainer import Apptainer
    from sms_services.runtime.deploy import images_dir
    from sms_services.runtime.init import image_facts, init, parse_size
    from sms_services.runtime.pin import checked

    # SIGTERM stops init like Ctrl-C does: its temporary files go, no half overlay stays.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    size = parse_size(args.size)
    project, apptainer = project_of(args), Apptainer.find()
    sif = sif_of(args, args.sif).resolve()
    # init runs the image (its accounts, folders and Slurm parser): the checked private copy, as start does.
    # Not kept: start pins (and keeps) its own copy.
    with checked(apptainer, sif, trust_of(args), images_dir(),
                 warn=lambda s: err_console.print(f"smsctl: {s}", markup=False), named=named_copies) as copy:
        made = init(project, image_facts(project, apptainer, copy.path), site_path=Path(args.site),
                    overlay=Path(args.overlay).absolute(), size_mib=size,
                    munge_key=Path(args.munge_key) if args.munge_key else None, new_key=args.new_munge_key,
                    force=args.force, apptainer=apptainer,
                    from_sms=Path(args.from_sms) if args.from_sms else None,
                    keep_slurm_conf=args.keep_slurm_conf, dry_run=args.dry_run,
                    say=lambda s: out_console.print(s, markup=False))
    if made is None:
        out_console.print("dry run: nothing was written", markup=False)
        return 0
    out_console.print(f"made {made.overlay} ({made.size_mib} MiB, sparse) for release {made.release}: "
                      f"{len(made.files)} site files, {made.folders} folders", markup=False)
    if made.new_key:
        out_console.print("a new munge key is in the overlay: the nodes need the same one "
                          f"(debugfs -R 'cat /upper/etc/munge/munge.key' {made.overlay} > munge.key)", markup=False)
    out_console.print(f"next: smsctl start {args.sif} --overlay {made.overlay} --site {args.site} "
                      "--provision-bridge BRIDGE --public-bridge BRIDGE", markup=False)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.runtime.deploy import Record, images_dir, start
    from sms_services.runtime.pin import checked

    apptainer = Apptainer.find()
    settings = ("overlay", "site", "provision_bridge", "public_bridge")
    if args.sif is None:
        # What the boot unit runs: everything from the record, the image checked again.
        given = [f"--{o.replace('_', '-')}" for o in settings if getattr(args, o)]
        if given:
            raise UserError(f"smsctl start --name {args.name} without an image restarts the recorded instance "
                            f"as recorded; drop {' '.join(given)}, or give the image and every setting")
        rec = Record.load(args.name)
        sif, source = Path(rec.sif), Path(rec.source or rec.sif)
        if not sif.is_file():  # never the source path instead: whoever can write it chooses what starts
            raise UserError(f"{sif}: the recorded instance's checked copy of {source} is gone; start it with "
                            f"an image: smsctl start IMAGE --name {args.name} and every setting")
        overlay, site, prov, pub = Path(rec.overlay), Path(rec.site), rec.provision_bridge, rec.public_bridge
        node_exec, binds = rec.node_exec, rec.binds
    else:
        missing = [f"--{o.replace('_', '-')}" for o in settings if not getattr(args, o)]
        if missing:
            raise UserError(f"smsctl start {args.sif}: also give {' '.join(missing)} (or no image, to restart "
                            f"the recorded instance --name {args.name})")
        sif = source = sif_of(args, args.sif).resolve()
        overlay, site, prov, pub = Path(args.overlay).resolve(), Path(args.site), args.provision_bridge, \
            args.public_bridge
        node_exec, binds = args.node_exec, args.bind or []
    # What is checked is a private copy, and that copy is what starts (runtime/pin.py).
    with checked(apptainer, sif, trust_of(args), images_dir(),
                 warn=lambda s: err_console.print(f"smsctl: {s}", markup=False), named=named_copies) as copy:
        dep = start(project_of(args), apptainer, copy.path, name=args.name, overlay=overlay, site=site,
                    provision_bridge=prov, public_bridge=pub, node_exec=node_exec, binds=binds,
                    signer=str(copy.signer) if copy.signer else "UNSIGNED", source=source,
                    take_over=args.take_over, pid_file=Path(args.pid_file) if args.pid_file else None,
                    say=lambda s: err_console.print(f"smsctl: {s}", markup=False))
        copy.keep = True  # the record names it
    dep.close()
    out_console.print(f"started {args.name}: {source.name} (release {dep.release}, signed by "
                      f"{dep.record.signer}) on {overlay} (checked: e2fsck clean); recorded in "
                      f"{dep.record.path_of(args.name)}", markup=False)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.runtime.deploy import stop

    seconds = stop(project_of(args), Apptainer.find(), args.name)
    out_console.print(f"stopped {args.name} in {seconds} s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.runtime.deploy import Record, records
    from sms_services.runtime.instance import instance_pids
    from sms_services.runtime.overlay import usage

    apptainer = Apptainer.find()
    found = [Record.load(args.name)] if args.name else records()
    rows = []
    for rec in found:
        running = bool(instance_pids(apptainer, rec.name))
        free: float | None = None
        try:
            used, total = usage(Path(rec.overlay))
            free = round(100 * (total - used) / total, 1) if total else 0.0
            space = f"{used / 2**20:.0f}/{total / 2**20:.0f} MiB"
        except (UserError, OSError):  # a missing or unreadable overlay is itself the news
            space = "unreadable"
        rows.append({**rec.__dict__, "running": running, "overlay_use": space, "overlay_free_percent": free})
    if args.json:
        print_json(rows)
        return 0
    table = Table(title="SMS-services instances on this host")
    for col in ("name", "state", "release", "image", "signed by", "since", "overlay", "earlier images"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "running" if r["running"] else "[red]stopped[/red]", r["release"],
                      Path(r["source"] or r["sif"]).name, r["signer"], r["started"], f"{r['overlay']} ({r['overlay_use']})"
                      + (f" [red]{r['overlay_free_percent']}% free[/red]" if low(r) else ""),
                      str(len(r["history"])))
    out_console.print(table)
    for r in rows:
        if low(r):  # a full overlay stops slurmctld saving state: say it where an admin looks
            err_console.print(f"smsctl: {r['name']}: overlay {r['overlay']} has {r['overlay_free_percent']}% free "
                              f"(below {LOW_FREE_PERCENT}%); smsctl overlay grow, or free space in it",
                              markup=False)
    return 0


LOW_FREE_PERCENT = 10  # the same default as smsctl probe --warn-free


def low(row: dict) -> bool:
    free = row.get("overlay_free_percent")
    return free is not None and free < LOW_FREE_PERCENT


def cmd_reconcile(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.runtime.deploy import Deployment, Record
    from sms_services.runtime.reconcile import reconcile

    with Deployment(project_of(args), Apptainer.find(), Record.load(args.name)) as dep:
        found = reconcile(dep, dry_run=args.dry_run)
    verb = "would cancel" if args.dry_run else "cancelled"
    out_console.print(f"{len(found.running)} running job(s) confirmed by their node; {verb} "
                      f"{len(found.ghosts)} that no node runs{': ' + ' '.join(found.ghosts) if found.ghosts else ''}")
    if found.unknown:
        out_console.print(f"not asked (their node did not answer --node-exec): {' '.join(found.unknown)}")
        return 1
    return 0


def cmd_cutover(args: argparse.Namespace) -> int:
    import contextlib

    from sms_services.apptainer import Apptainer
    from sms_services.probes.report import print_table
    from sms_services.runtime.cutover import cutover
    from sms_services.runtime.deploy import Deployment, Record, images_dir
    from sms_services.runtime.ha import unmanaged
    from sms_services.runtime.pin import checked, holding
    from sms_services.runtime.units import unit_name

    record = Record.load(args.name)
    if record.pid_file:
        # A unit follows the pid file only while its main process lives; the cutover stops that
        # process first, so systemd would count the service as ended (and stop, or restart, it)
        # in the middle of the cutover.
        raise UserError(f"instance {args.name} was started with --pid-file (by its unit {unit_name(args.name)}); "
                        f"cut over with the unit stopped: systemctl stop {unit_name(args.name)}; smsctl start "
                        f"--name {args.name}; smsctl cutover ...; smsctl stop --name {args.name}; systemctl start "
                        f"{unit_name(args.name)}")
    project, apptainer = project_of(args), Apptainer.find()
    old_name = Path(record.source or record.sif).name
    new_sif = sif_of(args, args.to).resolve()
    # Under Pacemaker the cluster must not "recover" the instance the cutover stops; the
    # resource's start reads the record, so the new image is the resource's from now on.
    held = unmanaged(args.pacemaker_resource) if args.pacemaker_resource else contextlib.nullcontext()
    # The old image's copy stays until the cutover ends: a rollback starts it again.
    with held, holding(Path(record.sif)), Deployment(project, apptainer, record, jobs=args.jobs) as dep:
        if not dep.running():
            raise UserError(f"instance {args.name} is not running; a cutover replaces a running instance "
                            f"(smsctl start starts one)")
        say = lambda s: err_console.print(f"[bold]cutover[/bold] {s}")  # noqa: E731
        # Checked now, started after the old instance stopped: so a private copy, not the path.
        with checked(apptainer, new_sif, trust_of(args), images_dir(), warn=say, named=named_copies) as copy:
            dep.sources[copy.path] = str(new_sif)
            try:
                report = cutover(dep, project, copy.path, trust=trust_of(args), deadline=args.deadline,
                                 node_slurmd=dep.slurmd_versions(), signer=copy.signer, say=say)
            finally:  # also when interrupted: once the record names the copy, the boot unit needs it
                copy.keep = record.sif == str(copy.path)  # refused or rolled back: nothing runs it
        if report.ok:
            record.signer = report.signer
            record.save()
    if args.json:
        write_json(args.json, report.to_dict())
    print_table(report.results, f"cutover of {args.name} to {new_sif.name}", out_console)
    gap = "the controller never answered again" if report.gap_s is None else f"service gap {report.gap_s} s"
    if report.ok:
        settled = f"waited {report.settle_s} s for slurmctld's RPCs to the nodes, " if report.settle_s >= 1 else ""
        out_console.print(f"{args.name} now runs {new_sif.name} (release {report.new_release}): {gap}, {settled}"
                          f"stop {report.stop_s} s, every probe green {report.green_s} s after the start")
        if report.renumbered:
            err_console.print(f"smsctl: the new image numbers these accounts differently: "
                              f"{', '.join(report.renumbered)}; the overlay follows them now; give SMS-mgmt's "
                              "(Warewulf's) synced passwd and group the same numbers, or its next sync undoes them",
                              markup=False)
        return 0
    for reason in report.reasons:
        err_console.print(f"smsctl: {reason}", markup=False)
    if report.rolled_back:
        back = [r for r in report.results if r.phase == "rollback"]
        state = "answers again" if back and all(r.ok for r in back) else "FAILS ITS PROBES TOO: act now"
        err_console.print(f"smsctl: rolled back to {old_name}, which {state} ({gap})",
                          markup=False)
    return 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("init", help="make a new instance's overlay: the site's files, the munge key, the state "
                                    "folders, for the image's release")
    s.add_argument("sif", metavar="IMAGE", help="the release-signed image (a SIF or a release id)")
    s.add_argument("--site", required=True, help="the site file (smsctl site check SITE checks it alone)")
    s.add_argument("--overlay", required=True, help="the overlay to make (an ext3 image file)")
    s.add_argument("--size", default="4G", help="its size (sparse; default 4G)")
    k = s.add_mutually_exclusive_group()
    k.add_argument("--munge-key", metavar="FILE", help="the cluster's munge key (1..16 KiB, readable by root only)")
    k.add_argument("--new-munge-key", action="store_true", help="make a new key (a new cluster)")
    s.add_argument("--force", action="store_true", help="replace an existing overlay (of a stopped instance)")
    s.add_argument("--from-sms", metavar="ROOT", help="import an existing SMS's Slurm state, munge key and users from "
                                                      "its root filesystem (mounted read-only) or a copy")
    s.add_argument("--keep-slurm-conf", action="store_true",
                   help="with --from-sms: keep its slurm.conf, cgroup.conf and included files")
    s.add_argument("--dry-run", action="store_true", help="with --from-sms: print the plan, write nothing")
    s.add_argument("--allow-unsigned", action="store_true", help="use an unsigned image (development only)")
    add_trust_args(s)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("start", help="start SMS-services on this host and record how (for smsctl cutover)")
    s.add_argument("sif", metavar="SIF", nargs="?",
                   help="the release-signed image (a SIF or a release id); none: start the recorded instance "
                        "--name again exactly as recorded (what the boot unit runs)")
    s.add_argument("--name", default="sms-services", help="the instance name (default sms-services)")
    s.add_argument("--overlay", help="the instance's ext3 overlay (its whole state; smsctl init makes one)")
    s.add_argument("--site", help="the site file (addresses, nodes)")
    s.add_argument("--provision-bridge", metavar="BRIDGE", help="host bridge on the provisioning network")
    s.add_argument("--public-bridge", metavar="BRIDGE", help="host bridge on the public network")
    s.add_argument("--pid-file", metavar="FILE",
                   help="where Apptainer writes the instance's pid (the unit's PIDFile; cutovers refuse it: run them with the unit stopped)")
    s.add_argument("--node-exec", default=DEFAULT_NODE_EXEC, metavar="COMMAND",
                   help="runs a command on compute node {node}, given as one shell string, for the probes "
                        f"(default: {DEFAULT_NODE_EXEC!r})")
    s.add_argument("--bind", action="append", metavar="SRC[:DEST]", help="an extra bind (repeatable)")
    s.add_argument("--allow-unsigned", action="store_true", help="start an unsigned image (development only)")
    s.add_argument("--take-over", action="store_true",
                   help="the overlay's lease is held by a host that died: prove it (its lease stands still for "
                        "two renewal intervals), then take it")
    add_trust_args(s)
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("status", help="the recorded SMS-services instances: image, signer, running, overlay")
    s.add_argument("--name", help="only this instance")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("stop", help="stop a recorded SMS-services instance")
    s.add_argument("--name", default="sms-services")
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("reconcile", help="after a restore: cancel the jobs the controller runs that no node runs")
    s.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
    s.add_argument("--dry-run", action="store_true", help="only list them")
    s.set_defaults(func=cmd_reconcile)

    s = sub.add_parser("cutover", help="replace a running SMS-services with NEW; roll back if a probe fails")
    s.add_argument("--to", required=True, metavar="NEW", help="the new image (a SIF or a release id)")
    s.add_argument("--name", default="sms-services", help="the recorded instance (default sms-services)")
    s.add_argument("--deadline", type=float, default=120,
                   help="seconds the new image has to pass every probe before the rollback (default 120)")
    s.add_argument("--jobs", action="store_true",
                   help="also run the test-job probes (srun, sbatch, mail, accounting): needs idle nodes")
    s.add_argument("--json", metavar="FILE", help="write the report as JSON")
    s.add_argument("--pacemaker-resource", metavar="RESOURCE",
                   help="the instance is this Pacemaker resource (smsctl ha): unmanaged during the cutover, "
                        "managed and refreshed after it")
    add_trust_args(s)
    s.set_defaults(func=cmd_cutover)
