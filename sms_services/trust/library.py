"""A local library of signed SIFs: a directory (any shared filesystem) or an OCI registry.

Directory layout::

    LIB/<collection>/<release>/<version>.sif   immutable once published
    LIB/index.json                             every entry + tags, rewritten atomically

Writers take an exclusive ``flock`` on ``LIB/.lock`` for the read-modify-write of
the index, and copy the SIF to a temporary name that is renamed into place
before the index names it, so an interrupted publish never leaves an entry that
points at a partial file. Readers check the signature and sha256 before they
hand out a path.

``oras://HOST/REPO`` libraries use Apptainer's own ``push``/``pull``: the tag is
``<release>-<version>`` (and moving tags such as ``<release>-stable``); the
signature travels inside the SIF.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.files import atomic_write, sha256_file
from sms_services.probes.report import passed_report
from sms_services.trust.signing import Signer, Trust, check, content_digest

COLLECTION = "sms-services"
TAG_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,40}$")


@dataclass
class Entry:
    release: str
    version: str
    path: str  # relative to the library
    sha256: str
    size: int
    signer: str
    fingerprint: str
    slurm: str
    build_date: str
    verify: str  # "passed (sha256 of the report)" or "not verified"
    published: str
    tags: list[str] = field(default_factory=list)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DirectoryLibrary:
    def __init__(self, root: Path, apptainer: Apptainer) -> None:
        self.root = root
        self.apptainer = apptainer
        self.index_path = root / "index.json"

    # --- index ---------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The index for a read-modify-write; written back atomically on success."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read()
            yield index
            atomic_write(self.index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    def _read(self) -> dict:
        if not self.index_path.exists():
            return {"schema": 1, "entries": [], "tags": {}}
        try:
            index = json.loads(self.index_path.read_text())
            if not isinstance(index.get("entries"), list) or not isinstance(index.get("tags"), dict):
                raise ValueError("entries or tags missing")
            return index
        except ValueError as err:
            raise UserError(f"{self.index_path}: corrupt library index ({err}); restore it from a backup "
                            "or rebuild it by republishing") from None

    def entries(self) -> list[Entry]:
        index = self._read()
        tags_of: dict[str, list[str]] = {}
        for tag, ref in index["tags"].items():
            tags_of.setdefault(ref, []).append(tag.split(":", 1)[1])
        out = []
        for e in index["entries"]:
            entry = Entry(**{**e, "tags": sorted(tags_of.get(f"{e['release']}:{e['version']}", []))})
            out.append(entry)
        return out

    # --- publish ----------------------------------------------------------------------
    def publish(self, sif: Path, release: str, trust: Trust, *, tags: list[str], verify_report: Path | None,
                labels: dict[str, str]) -> Entry:
        signer = check(self.apptainer, sif, trust)
        assert signer is not None
        for tag in tags:
            _check_tag(tag)
        sha = sha256_file(sif)
        verify = (passed_report(verify_report, content_digest(self.apptainer, sif), sif)
                  if verify_report else "not verified")
        with self._locked() as index:
            same = [e for e in index["entries"] if e["release"] == release]
            for e in same:
                if e["sha256"] == sha:
                    raise UserError(f"{sif}: already published as {release}:{e['version']} (versions are "
                                    f"immutable; tag that one instead: smsctl library tag {release}:{e['version']} TAG)")
            version = str(max((int(e["version"]) for e in same if e["version"].isdigit()), default=0) + 1)
            rel_path = Path(COLLECTION) / release / f"{version}.sif"
            dest = self.root / rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
            try:
                shutil.copyfile(sif, tmp)
                if sha256_file(tmp) != sha:
                    raise UserError(f"{dest}: copy does not match {sif}; check the library's filesystem")
                os.chmod(tmp, 0o444)  # published versions are immutable
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            entry = Entry(release, version, str(rel_path), sha, dest.stat().st_size, signer.name,
                          signer.fingerprint, labels.get("sms-services.slurm.installed", "?"),
                          labels.get("sms-services.build-date", "?"), verify, _now())
            data = asdict(entry)
            data.pop("tags")
            index["entries"].append(data)
            for tag in tags:
                self._move(index, release, tag, version)
        entry.tags = tags
        return entry

    # --- tags -------------------------------------------------------------------------
    @staticmethod
    def _move(index: dict, release: str, tag: str, version: str) -> str:
        """Point a tag at a version, remembering where it pointed (rollback pops that)."""
        key = f"{release}:{tag}"
        before = index["tags"].get(key, "")
        if before:
            index.setdefault("previous", {}).setdefault(key, []).append(before.split(":", 1)[1])
        index["tags"][key] = f"{release}:{version}"
        return before

    def tag(self, ref: str, tag: str) -> str:
        """Point TAG at RELEASE:VERSION (promotion); returns what it pointed at before."""
        _check_tag(tag)
        with self._locked() as index:
            release, version = self._resolve(index, ref)
            return self._move(index, release, tag, version)

    def rollback(self, release: str, tag: str) -> str:
        """Point TAG back where it was before its last move; returns the version now tagged."""
        key = f"{release}:{tag}"
        with self._locked() as index:
            stack = index.get("previous", {}).get(key, [])
            if not stack:
                raise UserError(f"{key}: no earlier version to roll back to")
            version = stack.pop()
            index["tags"][key] = f"{release}:{version}"
            return version

    def _resolve(self, index: dict, ref: str) -> tuple[str, str]:
        release, _, name = ref.partition(":")
        name = name or "latest"
        versions = [e["version"] for e in index["entries"] if e["release"] == release]
        if not versions:
            raise UserError(f"{release}: nothing published for this release in {self.root}")
        if name == "latest":
            return release, max(versions, key=lambda v: int(v) if v.isdigit() else 0)
        if name in versions:
            return release, name
        tagged = index["tags"].get(f"{release}:{name}")
        if tagged:
            return release, tagged.split(":", 1)[1]
        raise UserError(f"{ref}: no such version or tag in {self.root} (smsctl library list)")

    # --- pull ---------------------------------------------------------------------------
    def pull(self, ref: str, trust: Trust) -> tuple[Path, Signer]:
        index = self._read()
        release, version = self._resolve(index, ref)
        entry = next(e for e in index["entries"] if e["release"] == release and e["version"] == version)
        path = self.root / entry["path"]
        if not path.is_file():
            raise UserError(f"{path}: listed in the index as {release}:{version} but missing")
        if sha256_file(path) != entry["sha256"]:
            raise UserError(f"{path}: sha256 does not match the index ({release}:{version}); "
                            "the file is corrupt or was changed: not served")
        signer = check(self.apptainer, path, trust)
        assert signer is not None
        return path, signer


def _check_tag(tag: str) -> None:
    if not TAG_RE.match(tag) or tag == "latest" or tag.isdigit():
        raise UserError(f"tag {tag!r}: use lower-case letters, digits, '.', '-', '_' (not a number, not 'latest')")


class OrasLibrary:
    """An OCI registry through Apptainer's oras:// transport."""

    def __init__(self, url: str, apptainer: Apptainer) -> None:
        self.url = url.rstrip("/")
        self.apptainer = apptainer

    def _ref(self, release: str, tag: str) -> str:
        return f"{self.url}:{release}-{tag}"

    def _flags(self) -> list[str]:
        # A registry on this host (tests, a site's own) speaks plain HTTP.
        host = self.url.removeprefix("oras://").split("/", 1)[0]
        return ["--no-https"] if host.startswith(("127.", "localhost")) else []

    def publish(self, sif: Path, release: str, trust: Trust, *, tags: list[str]) -> list[str]:
        check(self.apptainer, sif, trust)
        for tag in tags:
            _check_tag(tag)
        version = sha256_file(sif)[:12]
        refs = [self._ref(release, version), *[self._ref(release, t) for t in tags]]
        for ref in refs:
            res = self.apptainer.run(["push", *self._flags(), str(sif), ref], timeout=600)
            if res.returncode != 0:
                raise UserError(f"{ref}: push failed: {last_line(res.stderr)}")
        return refs

    def pull(self, ref: str, trust: Trust, dest_dir: Path) -> tuple[Path, Signer]:
        release, _, tag = ref.partition(":")
        tag = tag or "latest"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{COLLECTION}-{release}-{tag}.sif"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            res = self.apptainer.run(["pull", "--force", *self._flags(), str(tmp), self._ref(release, tag)],
                                     timeout=600)
            if res.returncode != 0:
                raise UserError(f"{self._ref(release, tag)}: pull failed: {last_line(res.stderr)}")
            signer = check(self.apptainer, tmp, trust)
            assert signer is not None
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest, signer


def default_library() -> str:
    return os.environ.get("SMS_LIBRARY") or "/var/lib/sms-services/library"
