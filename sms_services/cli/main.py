"""``smsctl``: the admin's command line.

Every command prints a table for people and, with ``--json``, one JSON object
for scripts. Bad input ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from sms_services import __version__
from sms_services.errors import UserError
from sms_services.image.render import render_context
from sms_services.inputs.project import Project, load_project

if TYPE_CHECKING:  # cryptography is imported only by the commands that sign
    from sms_services.trust.signing import Trust

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Pipes and CI logs get a wide console: a table cut to 80 columns hides the facts.
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _project(args: argparse.Namespace) -> Project:
    return load_project(Path(args.root).resolve() if args.root else None)


def cmd_releases(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer

    project = _project(args)
    try:
        runtime: str | None = f"{Apptainer.find().flavour} {'.'.join(map(str, Apptainer.find().version))}"
    except UserError:
        runtime = None
    rows = []
    for rel in project.matrix.releases.values():
        variants = []
        for v in rel.variants():
            if v.kind == "debian":
                here = "yes" if runtime else "no: needs Apptainer (scripts/install-host.sh)"
            else:
                here = "render only: needs an EL mirror and OpenHPC repo"
            variants.append({"variant": v.kind, "base": v.base.name, "slurmctld": v.slurm,
                             "serves_slurmd": v.serves(), "buildable_here": here})
        rows.append({
            "release": rel.id, "default": rel.id == project.matrix.default, "slurm": rel.slurm,
            "warewulf": rel.warewulf, "wwclient_protocol": rel.wwclient_protocol,
            "el_base": rel.el.name if rel.el else None, "debian_suite": rel.debian.name if rel.debian else None,
            "ohpc_repo": rel.variant("el").ohpc_repo if rel.el else None,
            "fragments": list(rel.fragments), "variants": variants,
        })
    if args.json:
        print(json.dumps({"default": project.matrix.default, "runtime": runtime, "releases": rows}, indent=2))
        return 0
    defaults = project.matrix.default_fragments
    table = Table(title=f"OpenHPC releases ({project.matrix.path.name})", show_lines=False)
    for col in ("release", "Slurm", "Warewulf", "EL base", "Debian", "slurmctld", "serves slurmd",
                "builds here", "fragments"):
        table.add_column(col, no_wrap=col != "serves slurmd")
    for r in rows:
        deb = next((v for v in r["variants"] if v["variant"] == "debian"), None)
        table.add_row(
            r["release"] + (" *" if r["default"] else ""), r["slurm"], r["warewulf"], r["el_base"] or "-",
            r["debian_suite"] or "-", deb["slurmctld"] if deb else "-",
            " ".join(deb["serves_slurmd"]) if deb else "-",
            "debian" if deb and deb["buildable_here"] == "yes" else "-",
            _fragment_diff(r["fragments"], defaults),
        )
    out_console.print(table)
    out_console.print("* default release. defaults: " + " ".join(defaults))
    out_console.print("EL variants render and pass checks everywhere; they build where an EL mirror "
                      "and the OpenHPC repository are reachable. --json for everything.")
    return 0


def _fragment_diff(frags: list[str], defaults: tuple[str, ...]) -> str:
    """'defaults' or the difference from them: the table stays narrow."""
    extra = [f"+{f}" for f in frags if f not in defaults]
    gone = [f"-{f}" for f in defaults if f not in frags]
    return " ".join(["defaults", *extra, *gone])


def cmd_render(args: argparse.Namespace) -> int:
    from sms_services.image.render import render

    project = _project(args)
    variant = project.matrix.get(args.release or project.matrix.default).variant(args.variant)
    ctx = render_context(project, variant, commit=args.commit, role="compute" if args.compute else "sms")
    sys.stdout.write(render(ctx, args.layer).text())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sms_services.image.checks import check_all

    project = _project(args)
    findings = check_all(project)
    for f in findings:
        err_console.print(f"{f}", markup=False)
    if findings:
        return 1
    n = sum(len(r.variants()) for r in project.matrix.releases.values())
    print(f"ok: {len(project.fragments)} fragments, {len(project.matrix.releases)} releases, {n} variants")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from sms_services.image.definition import lint

    bad = 0
    for path in args.files:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror})") from None
        for p in lint(text):
            err_console.print(f"{path}:{p.line}: {p.message}", markup=False)
            bad += 1
    return 1 if bad else 0


def cmd_build(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.image.build import Builder

    project = _project(args)
    variant = project.matrix.get(args.release or project.matrix.default).variant(args.variant)
    say: Callable[[str], None] = (lambda s: None) if args.json else (
        lambda s: err_console.print(f"[bold]{variant.name}[/bold] {s}"))
    builder = Builder(project, Apptainer.find(), cache=Path(args.cache) if args.cache else None, say=say)
    result = builder.build(variant, out=Path(args.out) if args.out else None,
                           role="compute" if args.compute else "sms")
    if args.json:
        print(json.dumps({"release": result.release, "variant": result.variant, "sif": result.sif,
                          "size": result.size, "sha256": result.sha256, "seconds": result.seconds,
                          "layers": result.layers}, indent=2))
    else:
        out_console.print(f"built {result.sif} ({result.size / 2**20:.1f} MiB, {result.seconds:.0f} s, "
                          f"Slurm {result.labels.get('sms-services.slurm.installed', '?')})")
        print(result.sif)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer, last_line

    app = Apptainer.find()
    sif = Path(args.sif)
    if not sif.is_file():
        raise UserError(f"{sif}: no such image")
    res = app.run(["run", *app.cap_flags, "--app", "manifest", str(sif)], timeout=120)
    if res.returncode != 0:
        raise UserError(f"{sif}: no package manifest ({last_line(res.stderr)}); was it built by smsctl?")
    sys.stdout.write(res.stdout)
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from sms_services.image.pipelines import check_pipelines, write_pipelines

    project = _project(args)
    if args.check:
        problems = check_pipelines(project)
        for line in problems:
            err_console.print(line, markup=False)
        return 1 if problems else 0
    written, removed = write_pipelines(project)
    for path in written:
        print(f"wrote {path.as_posix()}")
    for path in removed:
        print(f"removed {path.as_posix()}")
    if not written and not removed:
        print("ok: CI pipelines already match releases.yaml")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import signal

    from sms_services.apptainer import Apptainer
    from sms_services.lab.verify import verify
    from sms_services.probes.report import print_table

    project = _project(args)
    release = args.release or project.matrix.default
    # SIGTERM (CI cancelling a job) tears the lab down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def say_result(r) -> None:
        mark = "[green]pass[/green]" if r.ok else "[red]FAIL[/red]"
        err_console.print(f"{mark} {r.service:10} {r.probe:28} {r.phase:9} {r.detail}")

    outcome = verify(project, Apptainer.find(), release, sif=Path(args.sif) if args.sif else None,
                     trust=_trust(args, candidate=True),
                     site_path=Path(args.site) if args.site else None,
                     json_path=Path(args.json) if args.json else None,
                     junit_path=Path(args.junit) if args.junit else None,
                     say=lambda s: err_console.print(f"[bold]verify {release}[/bold] {s}"),
                     say_result=say_result)
    print_table(outcome.results, f"verify OpenHPC {release}: {outcome.meta['sif']}", out_console)
    t = outcome.meta["timings"]
    out_console.print(", ".join(f"{k} {v}" for k, v in t.items()))
    for service, log in outcome.meta.get("logs", {}).items():
        err_console.print(f"--- last lines of {service}'s log ---\n{log.rstrip()}", markup=False)
    if not outcome.ok:
        err_console.print(f"smsctl: verify {release} FAILED: {'; '.join(outcome.failed)}", markup=False)
        return 1
    out_console.print(f"verify {release}: all {len(outcome.results)} probes passed")
    return 0


def trust_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--key", action="append", metavar="PREFIX",
                   help="trust PREFIX.pub (repeatable; default: the .pub files in ~/.config/sms-services/trusted)")
    s.add_argument("--certificate", help="the signer's X.509 certificate (checked against --certificate-roots)")
    s.add_argument("--certificate-roots", metavar="PEM", help="trusted root certificates (the site CA)")
    s.add_argument("--certificate-intermediates", metavar="PEM")


def _trust(args: argparse.Namespace, *, candidate: bool = False) -> Trust:
    """Release trust from the command line; ``candidate`` adds this host's build key (verify only)."""
    from sms_services.trust.signing import Trust

    return (Trust.candidate if candidate else Trust.release)(
        args.key, certificate=args.certificate, roots=args.certificate_roots,
        intermediates=args.certificate_intermediates, allow_unsigned=getattr(args, "allow_unsigned", False))


def _sif_of(args: argparse.Namespace, target: str) -> Path:
    """A SIF path, or a release id meaning the SIF `smsctl build` wrote for it."""
    path = Path(target)
    if path.suffix == ".sif" or path.exists():
        if not path.is_file():
            raise UserError(f"{path}: no such SIF")
        return path
    from sms_services.image.build import sif_path

    project = _project(args)
    sif = sif_path(project, project.matrix.get(target).variant())
    if not sif.is_file():
        raise UserError(f"{sif}: release {target} is not built yet (smsctl build {target})")
    return sif


def cmd_keys_create(args: argparse.Namespace) -> int:
    from sms_services.trust.keys import create_keypair

    pair = create_keypair(Path(args.out), kind=args.type, ca=Path(args.ca) if args.ca else None, name=args.name)
    info = {"private": str(pair.private), "public": str(pair.public),
            "certificate": str(pair.certificate) if pair.certificate else None,
            "type": pair.kind, "fingerprint": pair.fingerprint}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        out_console.print(f"{pair.kind} key {pair.fingerprint}\n  private {pair.private} (0600: keep it secret)"
                          f"\n  public  {pair.public} (give this to hosts that trust the key)"
                          + (f"\n  certificate {pair.certificate}" if pair.certificate else ""), markup=False)
    return 0


def cmd_keys_create_ca(args: argparse.Namespace) -> int:
    from sms_services.trust.keys import create_ca

    crt = create_ca(Path(args.out), kind=args.type, name=args.name)
    out_console.print(f"site CA {crt} (hosts trust it with --certificate-roots {crt})", markup=False)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.image.build import Builder
    from sms_services.probes.report import passed_report
    from sms_services.trust.signing import content_digest, sign

    sif = _sif_of(args, args.target)
    app = Apptainer.find()
    if args.require_verified:
        passed_report(Path(args.require_verified), content_digest(app, sif), sif)
    signer = sign(app, sif, args.key)
    Builder.record_signature(sif, str(signer))
    out_console.print(f"signed {sif} as {signer}", markup=False)
    return 0


def cmd_verify_signature(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.trust.signing import check

    sif = _sif_of(args, args.target)
    signer = check(Apptainer.find(), sif, _trust(args))
    assert signer is not None
    if args.json:
        print(json.dumps({"sif": str(sif), "signer": signer.name, "fingerprint": signer.fingerprint,
                          "type": signer.kind, "ok": True}, indent=2))
    else:
        out_console.print(f"{sif}: signature OK, signed by {signer.name} ({signer.kind}, {signer.fingerprint})",
                          markup=False)
    return 0


def _library(spec: str | None):
    from sms_services.apptainer import Apptainer
    from sms_services.trust.library import DirectoryLibrary, OrasLibrary, default_library

    spec = spec or default_library()
    if spec.startswith("oras://"):
        return OrasLibrary(spec, Apptainer.find())
    return DirectoryLibrary(Path(spec), Apptainer.find())


def cmd_publish(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    project = _project(args)
    release = args.release or project.matrix.default
    project.matrix.get(release)
    sif = _sif_of(args, args.sif or release)
    lib = _library(args.library)
    trust = _trust(args)
    tags = args.tag or []
    if isinstance(lib, DirectoryLibrary):
        entry = lib.publish(sif, release, trust, tags=tags,
                            verify_report=Path(args.verify_report) if args.verify_report else None,
                            labels=lib.apptainer.labels(sif))
        out_console.print(f"published {release}:{entry.version} -> {lib.root / entry.path} (signer {entry.signer}, "
                          f"verify {entry.verify}){' tags ' + ' '.join(tags) if tags else ''}", markup=False)
    else:
        refs = lib.publish(sif, release, trust, tags=tags)
        out_console.print("pushed " + " ".join(refs), markup=False)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    lib = _library(args.library)
    trust = _trust(args)
    if isinstance(lib, DirectoryLibrary):
        path, signer = lib.pull(args.ref, trust)
    else:
        path, signer = lib.pull(args.ref, trust, Path(args.dest or "."))
    err_console.print(f"{args.ref}: signature and checksum OK, signed by {signer}", markup=False)
    print(path)
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    lib = _library(args.library)
    if not isinstance(lib, DirectoryLibrary):
        raise UserError("library list/tag/rollback work on directory libraries; for a registry use its own tools")
    if args.library_command == "tag":
        before = lib.tag(args.ref, args.tag)
        out_console.print(f"{args.ref.split(':')[0]}:{args.tag} -> {args.ref}"
                          + (f" (was {before})" if before else ""), markup=False)
        return 0
    if args.library_command == "rollback":
        version = lib.rollback(args.release, args.tag)
        out_console.print(f"{args.release}:{args.tag} rolled back to {args.release}:{version}", markup=False)
        return 0
    entries = lib.entries()
    if args.json:
        from dataclasses import asdict
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    table = Table(title=f"library {lib.root}")
    for col in ("release", "version", "tags", "slurm", "signer", "verify", "size", "sha256", "published"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.release, e.version, " ".join(e.tags), e.slurm, e.signer, e.verify.split(" (")[0],
                      f"{e.size / 2**20:.1f} MiB", e.sha256[:12], e.published)
    out_console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smsctl", description="Build, verify, sign and publish SMS-services images.")
    p.add_argument("--version", action="version", version=f"smsctl {__version__}")
    p.add_argument("--root", help="project folder (default: found from the current directory)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("releases", help="list OpenHPC releases and what each image holds")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_releases)

    def release_args(s: argparse.ArgumentParser, positional: bool = False) -> None:
        s.add_argument("--release", "-r", help="OpenHPC release id (default: releases.yaml's default)")
        if positional:  # `smsctl build 3.5` as well as `smsctl build --release 3.5`
            s.add_argument("release_pos", nargs="?", metavar="RELEASE")
        s.add_argument("--variant", choices=("debian", "el"), help="default: debian when the release has one")

    s = sub.add_parser("render", help="print the assembled Apptainer definition")
    release_args(s)
    s.add_argument("--layer", choices=("all", "os", "packages", "final"), default="all")
    s.add_argument("--commit", help="git commit to stamp into labels (default: the checkout's)")
    s.add_argument("--compute", action="store_true", help="the lab's compute-node image instead")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("check", help="check every fragment, release and rendered definition")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("lint", help="check Apptainer definition files for common mistakes")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_lint)

    s = sub.add_parser("build", help="build a release's SIF")
    release_args(s, positional=True)
    s.add_argument("--out", help="output folder (default: build/<release>)")
    s.add_argument("--cache", help="layer and apt cache (default: ~/.cache/sms-services)")
    s.add_argument("--json", action="store_true", help="print one JSON object: sif, size, sha256, seconds")
    s.add_argument("--compute", action="store_true", help="build the lab's compute-node image instead")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("verify", help="start the SIF in a lab cluster and prove every service answers")
    release_args(s, positional=True)
    s.add_argument("--sif", help="image to verify (default: build/<release>/..., built or brought up to date first)")
    s.add_argument("--site", help="lab site file (default: overlays/lab/site.yaml)")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--junit", metavar="FILE", help="write the results as JUnit XML")
    trust_args(s)
    s.add_argument("--allow-unsigned", action="store_true",
                   help="start an unsigned image (local development only; says so loudly)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("keys", help="signing keys")
    keys = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="make a signing key pair PREFIX.key (0600) and PREFIX.pub")
    k.add_argument("--out", required=True, metavar="PREFIX")
    k.add_argument("--type", default="ec", help="ec (P-256, default), ed25519 or rsa (3072)")
    k.add_argument("--ca", metavar="CA_PREFIX", help="also issue PREFIX.crt from this site CA")
    k.add_argument("--name", help="the certificate's common name (default: PREFIX's name)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_create)
    k = keys.add_parser("create-ca", help="make a site CA (CA_PREFIX.key, CA_PREFIX.crt) to issue signing certificates")
    k.add_argument("--out", required=True, metavar="CA_PREFIX")
    k.add_argument("--type", default="ec", help="ec (default), ed25519 or rsa")
    k.add_argument("--name", default="sms-services site CA")
    k.set_defaults(func=cmd_keys_create_ca)

    s = sub.add_parser("sign", help="sign a SIF (replacing the build key's signature)")
    s.add_argument("--key", required=True, metavar="PREFIX", help="PREFIX.key signs")
    s.add_argument("--require-verified", metavar="REPORT",
                   help="sign only if this verify JSON report passed for exactly this SIF")
    s.add_argument("target", metavar="SIF|RELEASE")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("verify-signature", help="check a SIF's signature and say who signed it")
    trust_args(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("target", metavar="SIF|RELEASE")
    s.set_defaults(func=cmd_verify_signature)

    def library_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--library", metavar="DIR|oras://HOST/REPO",
                       help="default: $SMS_LIBRARY or /var/lib/sms-services/library")

    s = sub.add_parser("publish", help="put a release's signed SIF into the library")
    library_arg(s)
    trust_args(s)
    s.add_argument("--sif", help="default: the SIF smsctl build wrote for the release")
    s.add_argument("--tag", action="append", help="e.g. testing, stable (repeatable)")
    s.add_argument("--verify-report", metavar="JSON", help="the passing verify report to record with it")
    s.add_argument("release", metavar="RELEASE")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("pull", help="fetch RELEASE[:tag|:version] and check signature and checksum")
    library_arg(s)
    trust_args(s)
    s.add_argument("--dest", help="folder for images pulled from a registry (default: .)")
    s.add_argument("ref", metavar="RELEASE[:TAG]")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("library", help="list the library; move and roll back tags")
    libs = s.add_subparsers(dest="library_command", required=True, metavar="ACTION")
    k = libs.add_parser("list", help="what is published")
    library_arg(k)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_library)
    k = libs.add_parser("tag", help="point TAG at RELEASE:VERSION (promote)")
    library_arg(k)
    k.add_argument("ref", metavar="RELEASE:VERSION")
    k.add_argument("tag")
    k.set_defaults(func=cmd_library)
    k = libs.add_parser("rollback", help="point TAG back where it was before its last move")
    library_arg(k)
    k.add_argument("release")
    k.add_argument("tag")
    k.set_defaults(func=cmd_library)

    from sms_services.cli.upgrade import add_parsers

    add_parsers(sub, trust_args)

    s = sub.add_parser("manifest", help="print the package manifest embedded in a SIF")
    s.add_argument("sif")
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("pipelines", help="generate the per-release CI pipelines under ci/ from releases.yaml")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="write ci/ files and remove those of dropped releases")
    g.add_argument("--check", action="store_true", help="exit 1 listing files that are not up to date")
    s.set_defaults(func=cmd_pipelines)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "release_pos", None):
        if args.release and args.release != args.release_pos:
            parser.error("give the release once")
        args.release = args.release_pos
    try:
        return args.func(args)
    except UserError as err:
        err_console.print(f"smsctl: {err}", markup=False)
        return err.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        err_console.print("smsctl: interrupted; partial files were removed", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
