"""smsctl keys, sign, verify-signature, publish, pull and library: who signed an image and where it is kept."""

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
)
from sms_services.errors import UserError


def cmd_keys_create(args: argparse.Namespace) -> int:
    from sms_services.trust.keys import create_keypair

    pair = create_keypair(Path(args.out), kind=args.type, ca=Path(args.ca) if args.ca else None, name=args.name)
    info = {"private": str(pair.private), "public": str(pair.public),
            "certificate": str(pair.certificate) if pair.certificate else None,
            "type": pair.kind, "fingerprint": pair.fingerprint}
    if args.json:
        print_json(info)
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
    from sms_services.trust.signing import content_digest, release_sign

    sif = sif_of(args, args.target)
    app = Apptainer.find()
    require = None
    if args.require_verified:
        report = Path(args.require_verified)
        require = lambda copy: passed_report(report, content_digest(app, copy), sif)  # noqa: E731
    signer = release_sign(app, sif, args.key, require=require,
                          warn=lambda s: err_console.print(f"smsctl: {s}", markup=False))
    Builder.record_signature(sif, str(signer))
    out_console.print(f"signed {sif} as {signer}", markup=False)
    return 0


def cmd_verify_signature(args: argparse.Namespace) -> int:
    from sms_services.apptainer import Apptainer
    from sms_services.trust.signing import check

    sif = sif_of(args, args.target)
    signer = check(Apptainer.find(), sif, trust_of(args))
    assert signer is not None
    if args.json:
        print_json({"sif": str(sif), "signer": signer.name, "fingerprint": signer.fingerprint,
                    "type": signer.kind, "ok": True})
    else:
        out_console.print(f"{sif}: signature OK, signed by {signer.name} ({signer.kind}, {signer.fingerprint})",
                          markup=False)
    return 0


def _library(spec: str | None, *, existing: bool = False):
    """The library ``--library`` names; ``existing``: it must be there already (list, tag,
    rollback), so a mistyped path is one line, not an empty table."""
    from sms_services.apptainer import Apptainer
    from sms_services.trust.library import DirectoryLibrary, OrasLibrary, default_library

    spec = spec or default_library()
    if spec.startswith("oras://"):
        return OrasLibrary(spec, Apptainer.find())
    root = Path(spec)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: not a folder; --library takes a library folder (or oras://HOST/REPO)")
    if existing and not root.is_dir():
        raise UserError(f"{root}: no such library folder (smsctl publish makes one; check --library or "
                        "$SMS_LIBRARY)")
    return DirectoryLibrary(root, Apptainer.find())


def cmd_publish(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    project = project_of(args)
    release = args.release or project.matrix.default
    project.matrix.get(release)
    sif = sif_of(args, args.sif or release)
    lib = _library(args.library)
    trust = trust_of(args)
    tags = args.tag or []
    if isinstance(lib, DirectoryLibrary):
        entry = lib.publish(sif, release, trust, tags=tags,
                            verify_report=Path(args.verify_report) if args.verify_report else None,
                            labels=lib.apptainer.labels(sif))
        out_console.print(f"published {release}:{entry.version} -> {lib.root / entry.path} (signer {entry.signer}, "
                          f"verify {entry.verify}){' tags ' + ' '.join(tags) if tags else ''}", markup=False)
    else:
        refs = lib.publish(sif, release, trust, tags=tags, labels=lib.apptainer.labels(sif))
        out_console.print("pushed " + " ".join(refs), markup=False)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    lib = _library(args.library, existing=True)
    trust = trust_of(args)
    if isinstance(lib, DirectoryLibrary):
        path, signer = lib.pull(args.ref, trust)
    else:
        path, signer = lib.pull(args.ref, trust, Path(args.dest or "."))
    err_console.print(f"{args.ref}: signature and checksum OK, signed by {signer}", markup=False)
    print(path)
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    from sms_services.trust.library import DirectoryLibrary

    lib = _library(args.library, existing=True)
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
        print_json([asdict(e) for e in entries])
        return 0
    table = Table(title=f"library {lib.root}")
    for col in ("release", "version", "tags", "slurm", "signer", "verify", "size", "sha256", "published"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.release, e.version, " ".join(e.tags), e.slurm, e.signer, e.verify.split(" (")[0],
                      f"{e.size / 2**20:.1f} MiB", e.sha256[:12], e.published)
    out_console.print(table)
    return 0


def _library_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--library", metavar="DIR|oras://HOST/REPO",
                   help="default: $SMS_LIBRARY or /var/lib/sms-services/library")


def add_parsers(sub: argparse._SubParsersAction) -> None:
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

    s = sub.add_parser("sign", help="sign a SIF (replacing the build key's signature, once it checked)")
    s.add_argument("--key", required=True, metavar="PREFIX", help="PREFIX.key signs")
    s.add_argument("--require-verified", metavar="REPORT",
                   help="sign only if this verify JSON report passed for exactly this SIF")
    s.add_argument("target", metavar="SIF|RELEASE")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("verify-signature", help="check a SIF's signature and say who signed it")
    add_trust_args(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("target", metavar="SIF|RELEASE")
    s.set_defaults(func=cmd_verify_signature)

    s = sub.add_parser("publish", help="put a release's signed SIF into the library")
    _library_arg(s)
    add_trust_args(s)
    s.add_argument("--sif", help="default: the SIF smsctl build wrote for the release")
    s.add_argument("--tag", action="append", help="e.g. testing, stable (repeatable)")
    s.add_argument("--verify-report", metavar="JSON", help="the passing verify report to record with it")
    s.add_argument("release", metavar="RELEASE")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("pull", help="fetch RELEASE[:tag|:version] and check signature and checksum")
    _library_arg(s)
    add_trust_args(s)
    s.add_argument("--dest", help="folder for images pulled from a registry (default: .)")
    s.add_argument("ref", metavar="RELEASE[:TAG]")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("library", help="list the library; move and roll back tags")
    libs = s.add_subparsers(dest="library_command", required=True, metavar="ACTION")
    k = libs.add_parser("list", help="what is published")
    _library_arg(k)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_library)
    k = libs.add_parser("tag", help="point TAG at RELEASE:VERSION (promote)")
    _library_arg(k)
    k.add_argument("ref", metavar="RELEASE:VERSION")
    k.add_argument("tag")
    k.set_defaults(func=cmd_library)
    k = libs.add_parser("rollback", help="point TAG back where it was before its last move")
    _library_arg(k)
    k.add_argument("release")
    k.add_argument("tag")
    k.set_defaults(func=cmd_library)
