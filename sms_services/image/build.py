"""Build one release variant into a SIF, layer by layer, never leaving a partial file.

Layers ``os`` and ``packages`` are cached by the hash of their definition text
(the ``packages`` key also covers the ``os`` key), so editing one fragment's
run script rebuilds only the ``final`` layer, and editing a package list
re-installs from a bound host apt cache instead of downloading again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.files import atomic_write, sha256_file
from sms_services.image.checks import check_variant
from sms_services.image.render import render, render_context
from sms_services.inputs.project import Project
from sms_services.inputs.release import Variant
from sms_services.trust.signing import build_key, build_signer, sign

MIN_FREE_GIB = float(os.environ.get("SMS_MIN_FREE_GIB", "3"))


@contextmanager
def _cache_lock(folder: Path | None, say: Callable[[str], None]) -> Iterator[None]:
    """One build at a time on a shared apt cache: apt inside a second build would fail
    at once on the cache's lock ("Could not get lock /var/cache/apt/archives/lock")."""
    if folder is None:
        yield
        return
    lock = folder / ".sms-services.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise UserError(f"{lock}: cannot open the apt cache's lock ({err.strerror}); remove it "
                        "(no build may be running) and build again") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build using the apt cache {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def default_cache() -> Path:
    base = os.environ.get("SMS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sms-services")
    return Path(base)


@dataclass
class BuildResult:
    release: str
    variant: str
    sif: str
    size: int
    sha256: str
    seconds: float
    layers: dict[str, str] = field(default_factory=dict)  # layer -> "cached" | "built"
    labels: dict[str, str] = field(default_factory=dict)
    final_key: str = ""  # hash of the final layer's inputs: same key, same image
    signer: str = ""  # the build key at first; the release key once `smsctl sign` has signed it
    build_key_fingerprint: str = ""  # set while the build key's signature is the image's only one

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def sif_path(project: Project, variant: Variant, out_dir: Path | None = None, role: str = "sms") -> Path:
    out = out_dir or project.root / "build" / variant.release.id
    name = "sms-services" if role == "sms" else role
    return out / f"{name}-{variant.release.id}-{variant.kind}.sif"


def _check_space(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(d).free / 2**30
        if free < MIN_FREE_GIB:
            raise UserError(f"{d}: only {free:.1f} GiB free, a build needs {MIN_FREE_GIB:.0f} GiB; "
                            "free some space or set SMS_CACHE_DIR / --out elsewhere")


class Builder:
    def __init__(self, project: Project, apptainer: Apptainer, *, cache: Path | None = None,
                 say: Callable[[str], None] = lambda s: None) -> None:
        self.project = project
        self.apptainer = apptainer
        self.cache = cache or default_cache()
        self.say = say

    def _build_one(self, definition: str, target: Path, log: Path, *, binds: list[str], what: str) -> None:
        """apptainer build into a temp file beside ``target``, renamed only on success."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_def = tempfile.mkstemp(prefix=".sms-def-", suffix=".def", dir=target.parent)
        os.close(fd)
        tmp_sif = target.with_name(f".{target.name}.partial-{os.getpid()}")
        Path(tmp_def).write_text(definition)
        tmpdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.cache / "tmp"))
        args = ["build", "--force", *self.apptainer.build_flags]
        for b in binds:
            args += ["--bind", b]
        args += [str(tmp_sif), tmp_def]
        env_tmp = os.environ.get("APPTAINER_TMPDIR")
        os.environ["APPTAINER_TMPDIR"] = str(tmpdir)
        try:
            res = self.apptainer.run(args, cwd=self.project.root, log=log)
            if res.returncode != 0:
                tail = log.read_text(errors="replace")[-20000:]
                if "no space left on device" in tail.lower():
                    raise UserError(f"{what}: no space left on device while building; free space under "
                                    f"{self.cache} and {target.parent} (log: {log})")
                # Our own %post guards say what is wrong in one line of their own.
                ours = [ln for ln in tail.splitlines() if ln.startswith("sms-services: ")]
                reason = ours[-1].removeprefix("sms-services: ") if ours else last_line(tail)
                raise UserError(f"{what}: apptainer build failed: {reason} (full log: {log})")
            os.replace(tmp_sif, target)
        finally:
            if env_tmp is None:
                os.environ.pop("APPTAINER_TMPDIR", None)
            else:
                os.environ["APPTAINER_TMPDIR"] = env_tmp
            for p in (tmp_sif, Path(tmp_def)):
                p.unlink(missing_ok=True)
            shutil.rmtree(tmpdir, ignore_errors=True)

    def build(self, variant: Variant, *, out: Path | None = None, commit: str | None = None,
              role: str = "sms") -> BuildResult:
        start = time.monotonic()
        ctx = render_context(self.project, variant, commit, role)
        problems = check_variant(variant, self.project, role)
        if problems:
            more = f" (and {len(problems) - 1} more: smsctl check)" if len(problems) > 1 else ""
            raise UserError(f"{problems[0]}{more}")
        target = sif_path(self.project, variant, out, role)
        layers_dir = self.cache / "layers"
        for d in (layers_dir, self.cache / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        _check_space(self.cache, target.parent)
        log = target.with_suffix(".log")
        target.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        result = BuildResult(variant.release.id, variant.kind, str(target), 0, "", 0.0)

        # The layer key is the definition text with the parent's path replaced by its key.
        os_text = render(ctx, "os").text()
        os_key = hashlib.sha256(os_text.encode()).hexdigest()[:20]
        os_sif = layers_dir / f"os-{variant.base.name}-{os_key}.sif"
        pkg_text = render(ctx, "packages", from_image=str(os_sif)).text()
        pkg_key = hashlib.sha256(pkg_text.replace(str(os_sif), os_key).encode()).hexdigest()[:20]
        pkg_sif = layers_dir / f"packages-{variant.base.name}-{pkg_key}.sif"

        binds = []
        if variant.family == "debian":
            apt_cache = self.cache / "apt" / variant.base.name
            apt_cache.mkdir(parents=True, exist_ok=True)
            (apt_cache / "partial").mkdir(exist_ok=True)
            binds = [f"{apt_cache}:/var/cache/apt/archives"]

        for name, sif, text, b in (("os", os_sif, os_text, []), ("packages", pkg_sif, pkg_text, binds)):
            if sif.exists():
                os.utime(sif)  # most recently used: the last one prune() drops
                result.layers[name] = "cached"
                self.say(f"layer {name}: cached ({sif.name})")
                continue
            self.say(f"layer {name}: building ({variant.base.name})")
            t = time.monotonic()
            with _cache_lock(Path(b[0].split(":")[0]) if b else None, self.say):
                if sif.exists():  # the build we waited for made this very layer
                    result.layers[name] = "cached"
                    self.say(f"layer {name}: cached ({sif.name}, built meanwhile)")
                    continue
                self._build_one(text, sif, log, binds=b, what=f"release {variant.name} layer {name}")
            result.layers[name] = "built"
            self.say(f"layer {name}: built in {time.monotonic() - t:.0f} s")

        final_text = render(ctx, "final", from_image=str(pkg_sif)).text()
        final_key = hashlib.sha256(final_text.replace(str(pkg_sif), pkg_key).encode()).hexdigest()[:20]
        reused = self._reuse(target, final_key)
        if reused is not None:
            self.say(f"final image: unchanged inputs, kept {target.name}")
            # Unsigned (from before builds were signed), or signed by another build key
            # (the config dir was replaced): sign again, or verify would refuse it. A
            # release signature is left alone. The record's sha256 already proved the
            # bytes are the ones built here.
            current = build_signer().fingerprint
            if not reused.signer or (reused.build_key_fingerprint and reused.build_key_fingerprint != current):
                reused.signer = str(sign(self.apptainer, target, build_key(), replaces=None))
                reused.sha256, reused.size = self.record_signature(target, reused.signer,
                                                                   build_key_fingerprint=current)
            reused.seconds = round(time.monotonic() - start, 1)
            reused.layers = {**result.layers, "final": "cached"}
            return reused
        self.say("layer final: building")
        t = time.monotonic()
        self._build_one(final_text, target, log, binds=[], what=f"release {variant.name} layer final")
        result.layers["final"] = "built"
        self.say(f"layer final: built in {time.monotonic() - t:.0f} s")

        try:
            self.verify_no_secrets(target, ctx.fragments)
            # "Built here, unchanged since": what lets verify start the candidate (signing.py).
            signer = sign(self.apptainer, target, build_key(), replaces=None)
            result.signer, result.build_key_fingerprint = str(signer), signer.fingerprint
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        result.size = target.stat().st_size
        result.sha256 = sha256_file(target)
        result.labels = self.apptainer.labels(target)
        result.seconds = round(time.monotonic() - start, 1)
        result.final_key = final_key
        atomic_write(target.with_suffix(".json"), result.to_json() + "\n")
        self.prune(keep={os_sif, pkg_sif}, base=variant.base.name)
        return result

    def _reuse(self, target: Path, final_key: str) -> BuildResult | None:
        """The existing image when its recorded inputs are these and its bytes are intact."""
        record = target.with_suffix(".json")
        if not target.exists() or not record.exists():
            return None
        try:
            data = json.loads(record.read_text())
            if data.get("final_key") != final_key or sha256_file(target) != data.get("sha256"):
                # (`smsctl sign` updates the record, so a release-signed image is kept too.)
                return None
            return BuildResult(**data)
        except (ValueError, TypeError):
            return None

    @staticmethod
    def record_signature(sif: Path, signer: str, *, build_key_fingerprint: str = "") -> tuple[str, int]:
        """After a re-signing: the build record follows, so the signed image counts as built.

        Returns the image's new (sha256, size).
        """
        sha, size = sha256_file(sif), sif.stat().st_size
        record = sif.with_suffix(".json")
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return sha, size
        if Path(data.get("sif", "")).resolve() != sif.resolve():
            return sha, size
        data.update(sha256=sha, size=size, signer=signer, build_key_fingerprint=build_key_fingerprint)
        atomic_write(record, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return sha, size

    def verify_no_secrets(self, sif: Path, fragments) -> None:
        """Belt and braces after the in-definition guard: look inside the finished image."""
        secrets = sorted({s for f in fragments for s in f.secrets})
        if not secrets:
            return
        script = 'for p in "$@"; do [ -e "$p" ] && echo "$p"; done; exit 0'
        res = self.apptainer.exec(sif, ["/bin/sh", "-c", script, "sh", *secrets])
        if res.returncode != 0:
            raise UserError(f"{sif}: cannot look inside the image ({last_line(res.stderr)})")
        found = res.stdout.split()
        if found:
            owners = {s: f.name for f in fragments for s in f.secrets}
            raise UserError(f"{sif}: secret {found[0]} (fragment {owners[found[0]]}) is in the image; "
                            "the image was removed")

    def prune(self, keep: set[Path], base: str, max_per_base: int = 3) -> None:
        """Keep the newest few layers per base so the cache does not grow without bound."""
        for kind in ("os", "packages"):
            layers = sorted((self.cache / "layers").glob(f"{kind}-{base}-*.sif"),
                            key=lambda p: p.stat().st_mtime, reverse=True)
            for old in layers[max_per_base:]:
                if old not in keep:
                    old.unlink(missing_ok=True)
