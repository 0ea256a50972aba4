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
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError
from sms_services.files import atomic_write, copy_file, open_folder, read_file, replacing, sha256_fd, sha256_file
from sms_services.probes.report import passed_report
from sms_services.trust.signing import Signer, Trust, check, content_digest

COLLECTION = "sms-services"
TAG_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,40}$")
RELEASE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,40}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REGISTRY_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")  # a tag, a version (sha256[:12]) or latest
RELEASE_LABEL = "sms-services.release"


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


ENTRY_FIELDS = frozenset(f.name for f in fields(Entry)) - {"tags"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def version_path(release: str, version: str) -> str:
    """Where a version lives, relative to the library: the only path an entry may name."""
    return f"{COLLECTION}/{release}/{version}.sif"


def check_release(release: str) -> None:
    if not RELEASE_RE.fullmatch(release):
        raise UserError(f"release {release!r}: a release id is letters, digits, '.', '-', '_' (e.g. 3.5)")


def check_labels(sif: Path, release: str, labels: dict[str, str]) -> None:
    """The image says which release it was built as: it is published as that one only."""
    built = labels.get(RELEASE_LABEL, "")
    if not built:
        raise UserError(f"{sif}: no {RELEASE_LABEL} label, so not an image smsctl built; not published")
    if built != release:
        raise UserError(f"{sif}: built as release {built} ({RELEASE_LABEL} label), not {release}; "
                        f"publish it as {built}")


def validate_index(index: object) -> dict:
    """The index, or ValueError naming the first thing wrong in it."""
    if not isinstance(index, dict):
        raise ValueError(f"a JSON {type(index).__name__.replace('NoneType', 'null')} where an object belongs")
    entries, tags = index.get("entries"), index.get("tags")
    if not isinstance(entries, list) or not isinstance(tags, dict):
        raise ValueError("entries or tags missing")
    published: dict[str, set[str]] = {}
    for i, e in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where} is not an object")
        if missing := sorted(ENTRY_FIELDS - e.keys()):
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        if extra := sorted(e.keys() - ENTRY_FIELDS):
            raise ValueError(f"{where} has unknown field {', '.join(map(str, extra))}")
        for name in sorted(ENTRY_FIELDS - {"size"}):
            if not isinstance(e[name], str):
                raise ValueError(f"{where}.{name} is not a string")
        if type(e["size"]) is not int or e["size"] < 0:
            raise ValueError(f"{where}.size is not a byte count")
        release, version = e["release"], e["version"]
        if not RELEASE_RE.fullmatch(release) or not VERSION_RE.fullmatch(version):
            raise ValueError(f"{where} names release {release!r} version {version!r}")
        if e["path"] != version_path(release, version):
            raise ValueError(f"{where}.path is {e['path']!r}, not {version_path(release, version)!r}")
        if not SHA256_RE.fullmatch(e["sha256"]):
            raise ValueError(f"{where}.sha256 is not a sha256")
        if version in published.setdefault(release, set()):
            raise ValueError(f"{where}: {release}:{version} listed twice")
        published[release].add(version)
    for key, ref in tags.items():
        release, sep, tag = key.partition(":")
        if not sep or not TAG_RE.fullmatch(tag):
            raise ValueError(f"tag {key!r} is not RELEASE:TAG")
        if not isinstance(ref, str) or ref.partition(":")[0] != release \
                or ref.partition(":")[2] not in published.get(release, ()):
            raise ValueError(f"tag {key!r} points at {ref!r}, which is not published")
    previous = index.get("previous", {})
    if not isinstance(previous, dict):
        raise ValueError("previous is not an object")
    for key, stack in previous.items():
        release = key.partition(":")[0]
        if key not in tags or not isinstance(stack, list) \
                or any(not isinstance(v, str) or v not in published[release] for v in stack):
            raise ValueError(f"previous[{key!r}] names a tag or versions not in the index")
    return index


class DirectoryLibrary:
    def __init__(self, root: Path, apptainer: Apptainer) -> None:
        self.root = root
        self.apptainer = apptainer
        self.index_path = root / "index.json"

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: not a folder; a library is a folder (or oras://HOST/REPO)")

    # --- index ---------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The index for a read-modify-write; written back atomically on success."""
        self._check_root()
        folder = open_folder(self.root, root=self.root, create=True)
        try:
            lock = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        except OSError as err:
            raise UserError(f"{self.root / '.lock'}: cannot open the library's lock ({err.strerror})") from None
        finally:
            os.close(folder)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read()
            yield index
            atomic_write(self.index_path, json.dumps(index, indent=2, sort_keys=True) + "\n", root=self.root)
        finally:
            os.close(lock)

    def _read(self) -> dict:
        self._check_root()
        data = read_file(self.index_path, root=self.root)
        if data is None:
            if os.path.lexists(self.index_path):
                raise UserError(f"{self.index_path}: not a regular file (a link?); not read")
            return {"schema": 1, "entries": [], "tags": {}}
        try:
            return validate_index(json.loads(data))
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

    def _on_disk(self, release: str) -> dict[int, str]:
        """Version files in the release's folder, listed or not: number -> file name."""
        try:
            folder = open_folder(self.root / COLLECTION / release, root=self.root)
        except FileNotFoundError:
            return {}
        try:
            names = os.listdir(folder)
        finally:
            os.close(folder)
        found = {}
        for name in names:
            stem, dot, ext = name.partition(".")
            if dot and ext == "sif" and VERSION_RE.fullmatch(stem):
                found[int(stem)] = name
        return found

    def _sha256_of(self, rel_path: str) -> str | None:
        """The sha256 of a file in the library, reached through no link; None if it is not one."""
        path = self.root / rel_path
        folder = open_folder(path.parent, root=self.root)
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
        except OSError:
            return None
        finally:
            os.close(folder)
        try:
            return sha256_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    # --- publish ----------------------------------------------------------------------
    def publish(self, sif: Path, release: str, trust: Trust, *, tags: list[str], verify_report: Path | None,
                labels: dict[str, str]) -> Entry:
        check_release(release)
        signer = check(self.apptainer, sif, trust)
        assert signer is not None
        check_labels(sif, release, labels)
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
            # A version file, once written, is never replaced, whatever the index says (a lost
            # or older index.json): the next number is past every file there, and one there
            # unlisted with these very bytes is listed again rather than copied.
            listed = {int(e["version"]) for e in same}
            on_disk = self._on_disk(release)
            relisted = next((n for n in sorted(set(on_disk) - listed)
                             if self._sha256_of(version_path(release, str(n))) == sha), None)
            version = str(relisted or max(listed | set(on_disk), default=0) + 1)
            rel_path = version_path(release, version)
            dest = self.root / rel_path
            if relisted is None:
                copy_file(sif, dest, mode=0o444, sha256=sha, root=self.root, create=True,  # immutable
                          keep_existing=True)
            entry = Entry(release, version, rel_path, sha, os.stat(sif).st_size, signer.name,
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
        check_release(release)
        name = name or "latest"
        versions = [e["version"] for e in index["entries"] if e["release"] == release]
        if not versions:
            raise UserError(f"{release}: nothing published for this release in {self.root}")
        if name == "latest":
            return release, max(versions, key=int)
        if name in versions:
            return release, name
        tagged = index["tags"].get(f"{release}:{name}")
        if tagged:
            return release, tagged.split(":", 1)[1]
        raise UserError(f"{ref}: no such version or tag in {self.root} (smsctl library list)")

    # --- pull ---------------------------------------------------------------------------
    def pull(self, ref: str, trust: Trust) -> tuple[Path, Signer]:
        """The path of a published version, after proving it is the file the index lists,
        inside the library (no link on the way), with its sha256 and a trusted signature."""
        index = self._read()
        release, version = self._resolve(index, ref)
        entry = next(e for e in index["entries"] if e["release"] == release and e["version"] == version)
        path = self.root / entry["path"]  # validate_index: always version_path()
        try:
            folder = open_folder(path.parent, root=self.root)
        except FileNotFoundError:
            raise UserError(f"{path}: listed in the index as {release}:{version} but missing") from None
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            raise UserError(f"{path}: listed in the index as {release}:{version} but missing") from None
        except OSError:
            raise UserError(f"{path}: not a file in the library (a link?); not served") from None
        finally:
            os.close(folder)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{path}: not a regular file; not served")
            if sha256_fd(fd) != entry["sha256"]:
                raise UserError(f"{path}: sha256 does not match the index ({release}:{version}); "
                                "the file is corrupt or was changed: not served")
        finally:
            os.close(fd)
        signer = check(self.apptainer, path, trust)
        assert signer is not None
        here = os.stat(path)
        if (here.st_dev, here.st_ino) != (st.st_dev, st.st_ino):
            raise UserError(f"{path}: replaced while it was checked; not served")
        return path, signer


def _check_tag(tag: str) -> None:
    if not TAG_RE.fullmatch(tag) or tag == "latest" or tag.isdigit():
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

    def publish(self, sif: Path, release: str, trust: Trust, *, tags: list[str],
                labels: dict[str, str]) -> list[str]:
        """Push as ``<release>-<sha256[:12]>``, each tag, and ``<release>-latest``: what a pull
        without a tag gets is, as in a directory library, the last version published."""
        check_release(release)
        check(self.apptainer, sif, trust)
        check_labels(sif, release, labels)
        for tag in tags:
            _check_tag(tag)
        version = sha256_file(sif)[:12]
        refs = [self._ref(release, version), *[self._ref(release, t) for t in tags], self._ref(release, "latest")]
        for ref in refs:
            res = self.apptainer.run(["push", *self._flags(), str(sif), ref], timeout=600)
            if res.returncode != 0:
                raise UserError(f"{ref}: push failed: {last_line(res.stderr)}")
        return refs

    def pull(self, ref: str, trust: Trust, dest_dir: Path) -> tuple[Path, Signer]:
        release, _, tag = ref.partition(":")
        check_release(release)
        tag = tag or "latest"
        if not REGISTRY_TAG_RE.fullmatch(tag):
            raise UserError(f"{ref}: not RELEASE[:TAG] (a tag is lower-case letters, digits, '.', '-', '_')")
        if dest_dir.exists() and not dest_dir.is_dir():
            raise UserError(f"{dest_dir}: not a folder (--dest)")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{COLLECTION}-{release}-{tag}.sif"
        # Apptainer writes into this process' private staging folder (files.replacing), and
        # the image is renamed into place only once its signature is checked.
        with replacing(dest) as new:
            res = self.apptainer.run(["pull", "--force", *self._flags(), str(new.path), self._ref(release, tag)],
                                     timeout=600)
            if res.returncode != 0:
                raise UserError(f"{self._ref(release, tag)}: pull failed: {last_line(res.stderr)}")
            signer = check(self.apptainer, new.path, trust)
            assert signer is not None
        return dest, signer


def default_library() -> str:
    return os.environ.get("SMS_LIBRARY") or "/var/lib/sms-services/library"
