"""A stand-in for SMS-mgmt's Warewulf server, answering as the real ones do.

Why: the image's wwclient (defs/wwclient) must work against Warewulf 3 and 4
without a real Warewulf install, in unit tests and on the lab cluster (run as a
process inside a network namespace).  What it answers was read from the real
code; comments cite file and line (warewulf/warewulf internal/pkg/warewulfd/ at
the tag named, warewulf/warewulf3 provision/cgi-bin/file.pl at master):

  Warewulf 4 (``warewulf`` "4.3" .. "4.7"), the runtime overlay of a node:
    GET /provision/<wwid>?stage=runtime[&compress=gz]   every 4.x (what wwclient 4.4-4.6 asks)
    GET /overlay-runtime/<wwid>[?compress=gz]            4.3 to 4.7 (deprecated there)
    GET /runtime/<wwid>[?compress=gz]                    4.7+; with ``tls`` also over https
      -> the node's prebuilt image, a cpio "newc" archive (gzip'd only with compress=gz).
         The image is built when it is missing and, with autobuild, rebuilt only when
         nodes.conf is newer (4.4 also looks at the overlay's own files); otherwise
         what changed on SMS-mgmt waits for ``overlay_build()`` (``wwctl overlay build``).
         400 (no body) for an unknown node, and from 4.4-4.6 for any IPv6 client;
         401 from a source port >= 1024 in secure mode and on a wrong asset key;
         403 for plain HTTP when 4.7 has tls on; 404 when there is no image.
  Warewulf 3 (``warewulf`` "3"):
    GET /WW/file?hwaddr=<wwid>&timestamp=<t>  -> list lines "%s %s %s %s %s%04o %s %s\\n"
        (id name uid gid type+mode timestamp path), only newer than t, by timestamp;
        integer timestamps from MySQL, fractional ones from PostgreSQL (``ww3_db``)
    GET /WW/file?hwaddr=<wwid>&fileid=<id>    -> the content
        404 for an unknown hwaddr or one outside [a-zA-Z0-9:]; no source-port check.

``fault`` makes it misbehave the way a broken network or server would, so clients
can be tested against that.  It serves only the runtime overlay: other stages get 404.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROTOCOLS = ("ww3", "ww4-provision", "ww4-overlay-runtime", "ww4-runtime-tls")
FAULTS = (None, "garbage", "truncate", "short")
WW3_DBS = ("mysql", "postgresql")
IMAGE = "__RUNTIME__.img"  # OverlayImage(node, "runtime", nil): internal/pkg/overlay/config.go:98 at v4.6.0


@dataclass
class FileSpec:
    """One overlay entry.  ``kind`` is file, dir or symlink (content = link target).

    ``mtime`` is also the Warewulf 3 timestamp: both mean "last changed on SMS-mgmt";
    it may carry a fraction (PostgreSQL's timestamps do).
    """

    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    kind: str = "file"


def newc_archive(entries: list[tuple[str, FileSpec]]) -> bytes:
    """A cpio newc archive, byte-compatible with GNU ``cpio -o -H newc``, of raw names."""
    out = bytearray()

    def add(name: str, mode: int, spec: FileSpec, ino: int, nlink: int, data: bytes) -> None:
        raw = os.fsencode(name) + b"\0"
        fields = (ino, mode, spec.uid, spec.gid, nlink, int(spec.mtime), len(data),
                  0, 0, 0, 0, len(raw), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    types = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
    for ino, (name, spec) in enumerate(entries, 1):
        data = b"" if spec.kind == "dir" else spec.content
        add(name, types[spec.kind] | (spec.mode & 0o7777), spec, ino,
            2 if spec.kind == "dir" else 1, data)
    add("TRAILER!!!", 0, FileSpec(), 0, 1, b"")
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def scan_tree(top: Path) -> dict[str, FileSpec]:
    """Files, dirs and symlinks under ``top`` as specs, with their real mode/owner/mtime."""
    files: dict[str, FileSpec] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = path.relative_to(top).as_posix()
            spec = FileSpec(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                            mtime=round(st.st_mtime_ns / 1e9, 6))
            if stat.S_ISDIR(st.st_mode):
                spec.kind = "dir"
            elif stat.S_ISLNK(st.st_mode):
                spec.kind, spec.mode = "symlink", 0o777
                spec.content = os.fsencode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                spec.content = path.read_bytes()
            else:
                continue
            files[rel] = spec
    return files


def runtime_archive(files: Mapping[str, FileSpec]) -> bytes:
    """The runtime overlay as Warewulf builds it with ``find . | cpio -o -H newc``."""
    names: dict[str, FileSpec] = {".": FileSpec(mode=0o755, kind="dir")}
    for path in sorted(files):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if ".." not in parts[:i] and parent not in files:
                names.setdefault("./" + parent, FileSpec(mode=0o755, kind="dir"))
        names[path if path.startswith("..") else "./" + path] = files[path]
    return newc_archive(list(names.items()))


def write_image(archive: bytes, image_dir: Path) -> None:
    """Put a built image in place as Warewulf does: the image and a gzip'd copy beside it
    (util.BuildFsImage, internal/pkg/util/util.go:529-541 at v4.6.0), each renamed in."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ((IMAGE, archive), (IMAGE + ".gz", gzip.compress(archive, mtime=0))):
        fd, tmp = tempfile.mkstemp(dir=image_dir, prefix=".build-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.rename(tmp, image_dir / name)


def overlay_build(src: Path, image_dir: Path) -> None:
    """``wwctl overlay build``: render the overlay tree ``src`` into ``image_dir``."""
    write_image(runtime_archive(scan_tree(src)), image_dir)


def mod_time(path: Path) -> int:
    """util.DirModTime (internal/pkg/util/util.go:76-100 at v4.4.0): the newest ctime under path."""
    newest = 0
    for dirpath, dirnames, filenames in os.walk(path) if path.is_dir() else [("", [], [path])]:
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.stat(Path(dirpath, name)).st_ctime_ns)
            except OSError:
                pass
    try:
        newest = max(newest, os.stat(path).st_ctime_ns)
    except OSError:
        return 0
    return newest


def make_tls_cert(tls_dir: Path, host: str) -> Path:
    """``wwctl configure tls`` (internal/pkg/configure/tls.go:47-118 at v4.7.0): a self-signed
    server certificate that is not a CA, naming the server's address and "warewulf".
    RSA 2048 instead of 4096 only to keep tests fast.  Returns the certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Warewulf Server"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Warewulf")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("warewulf")]
    try:
        sans.insert(0, x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.insert(0, x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    tls_dir.mkdir(parents=True, exist_ok=True)
    (tls_dir / "warewulf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (tls_dir / "warewulf.key").chmod(0o600)
    (tls_dir / "warewulf.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return tls_dir / "warewulf.crt"


def _norm_wwid(wwid: str) -> str:
    """parseHwaddr (parser.go:79-83 at v4.7.0, parser.go:35-36 at v4.4.0): '-' is ':', any case."""
    return wwid.replace("-", ":").lower()


def _perl_number(value: str) -> Decimal:
    """What Perl's ``>=`` makes of a string: its leading number, else 0."""
    m = re.match(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", value)
    try:
        return Decimal(m.group(1)) if m else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


class WarewulfStandIn:
    """Serves ``files`` (a dict of path -> FileSpec, or a directory re-read per build).

    ``nodes`` are the registered hardware addresses; None accepts any.  ``warewulf``
    is the release whose behaviour to copy: "3", or "4.3" .. "4.7" (default 4.6, or 4.7
    for ww4-runtime-tls).  A Warewulf 4 stand-in answers every runtime route its release
    has, whatever ``protocol`` says; ``protocol`` is what a client should use with it.
    """

    def __init__(self, files: Mapping[str, FileSpec] | str | Path, protocol: str = "ww4-provision",
                 host: str = "127.0.0.1", port: int = 0, secure: bool = False,
                 nodes: Iterable[str] | None = None, assetkey: str | None = None, *,
                 warewulf: str | None = None, tls: bool = False, tls_port: int = 0,
                 tls_dir: str | Path | None = None, ww3_db: str = "mysql",
                 autobuild: bool = True, image_dir: str | Path | None = None,
                 nodes_conf: str | Path | None = None, discoverable: bool = False) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} (use {', '.join(PROTOCOLS)})")
        self.warewulf = warewulf or ("3" if protocol == "ww3" else
                                     "4.7" if protocol == "ww4-runtime-tls" else "4.6")
        m = re.fullmatch(r"4\.(\d+)", self.warewulf)
        self.minor = int(m.group(1)) if m else 0
        if (protocol == "ww3") != (self.warewulf == "3") or (self.warewulf != "3" and self.minor < 3):
            raise ValueError(f"protocol {protocol} does not fit Warewulf {self.warewulf!r} "
                             "(ww3 is Warewulf 3; the ww4 ones need 4.3 or later)")
        tls = tls or protocol == "ww4-runtime-tls"
        if tls and self.minor < 7:
            raise ValueError("tls needs Warewulf 4.7 or later")
        if self.warewulf == "3" and (secure or assetkey or discoverable):
            # file.pl checks neither a source port nor an asset key
            raise ValueError("Warewulf 3 has no secure mode, asset key or discovery")
        if ww3_db not in WW3_DBS:
            raise ValueError(f"unknown Warewulf 3 database {ww3_db!r} (use {', '.join(WW3_DBS)})")
        self.directory = Path(files) if isinstance(files, (str, Path)) else None
        now = int(time.time())  # copies: the caller's specs stay as they were
        self.files: dict[str, FileSpec] = {} if self.directory else {
            k.lstrip("/"): replace(v, mtime=v.mtime or now) for k, v in files.items()}
        self.protocol, self.secure, self.assetkey = protocol, secure, assetkey
        self.ww3_db, self.autobuild, self.discoverable = ww3_db, autobuild, discoverable
        # Warewulf 3 keeps hwaddrs as wwsh lower-cased them (Node.pm:539, lc)
        self.nodes = None if nodes is None else {
            (w.lower() if self.warewulf == "3" else _norm_wwid(w)) for w in nodes}
        self.claimed: list[str] = []     # hardware addresses a discoverable node was given
        self.fault: str | None = None
        self.broken_overlay = False      # the node's runtime overlays are missing: builds fail
        self.requests: list[tuple[str, int, int]] = []  # (path, client port, status)
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="wwserver-"))
        self.image_dir = Path(image_dir) if image_dir else self._tmp / "provision"
        self.nodes_conf = Path(nodes_conf) if nodes_conf else self._tmp / "nodes.conf"
        if not self.nodes_conf.exists():
            self.nodes_conf.write_text("nodes: {}\n")
        self._source_changed = 0  # ctime_ns stand-in for a dict of files (4.4's autobuild)
        try:
            self._listen(host, port, tls, tls_port, tls_dir)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def _listen(self, host: str, port: int, tls: bool, tls_port: int,
                tls_dir: str | Path | None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (ThreadingHTTPServer,),
                          {"address_family": family, "daemon_threads": True,
                           "allow_reuse_address": True})
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.standin = self  # type: ignore[attr-defined]
        self.httpd.is_tls = False  # type: ignore[attr-defined]
        self.httpsd: ThreadingHTTPServer | None = None
        self.ca_file: Path | None = None
        if tls:
            # server.go:116-129 at v4.7.0: a second listener on "tls port" (9874) with the
            # same routes, using /etc/warewulf/tls/warewulf.{crt,key}
            tls_dir = Path(tls_dir) if tls_dir else self._tmp / "tls"
            crt, key = tls_dir / "warewulf.crt", tls_dir / "warewulf.key"
            self.ca_file = crt if crt.exists() and key.exists() else make_tls_cert(tls_dir, host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(crt, key)
            self.httpsd = server_cls((host, tls_port), _Handler)
            self.httpsd.socket = ctx.wrap_socket(self.httpsd.socket, server_side=True)
            self.httpsd.standin = self  # type: ignore[attr-defined]
            self.httpsd.is_tls = True  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def tls_port(self) -> int:
        return self.httpsd.server_address[1] if self.httpsd else 0

    def snapshot(self) -> dict[str, FileSpec]:
        """The files as they are now; a directory is re-read so edits show at once."""
        with self._lock:
            files = scan_tree(self.directory) if self.directory else dict(self.files)
            for path in sorted(files):
                self._ids.setdefault(path, len(self._ids) + 1)
            return files

    def set_file(self, path: str, content: bytes, mode: int | None = None,
                 uid: int | None = None, gid: int | None = None) -> FileSpec:
        """Change (or add) a file and bump its mtime past every other, as an admin editing
        Warewulf's copy would (Warewulf 3: ``wwsh file sync``)."""
        path = path.lstrip("/")
        with self._lock:
            files = scan_tree(self.directory) if self.directory else self.files
            old = files.get(path, FileSpec())
            stamp = max([time.time()] + [s.mtime + 1 for s in files.values()])
            stamp = round(stamp, 6) if self.ww3_db == "postgresql" else int(stamp)
            spec = FileSpec(content, old.mode if mode is None else mode,
                            old.uid if uid is None else uid, old.gid if gid is None else gid, stamp)
            if self.directory:
                target = self.directory / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                target.chmod(spec.mode)
                os.utime(target, (stamp, stamp))
            else:
                self.files[path] = spec
                self._source_changed = time.time_ns()
            return spec

    def runtime_archive(self) -> bytes:
        """The runtime overlay as it is now (not necessarily what is being served)."""
        return runtime_archive(self.snapshot())

    # -- Warewulf 4's prebuilt images
    def overlay_build(self) -> None:
        """``wwctl overlay build``: what the node gets from now on."""
        write_image(self.runtime_archive(), self.image_dir)

    def touch_nodes_conf(self) -> None:
        """What any ``wwctl node set`` does: nodes.conf is rewritten, so newer than the image."""
        self.nodes_conf.write_text(self.nodes_conf.read_text())

    def runtime_image(self, compress: str) -> bytes | None:
        """getOverlayFile + sendResponse: the image as built, rebuilt only when Warewulf would.

        Built when missing; with autobuild rebuilt when nodes.conf is newer (warewulfd/util.go:
        51-53 at v4.7.0, 51-58 at v4.6.0, whose runtime request names no overlays) and on 4.4
        also when a file of the node's overlays is (warewulfd/util.go:54-60 at v4.4.0).
        None (-> 404) when there is no image to send (provision.go:233-236 at v4.4.0).
        """
        with self._lock:
            image = self.image_dir / IMAGE
            build = not image.exists()
            if not build and self.autobuild:
                built = mod_time(image)
                build = mod_time(self.nodes_conf) > built
                if self.minor <= 4:
                    source = mod_time(self.directory) if self.directory else self._source_changed
                    build = build or source > built
        if build and not self.broken_overlay:
            self.overlay_build()
        # compress=gz sends the .gz beside the image, or 404 (helpers.go:121-129 at v4.7.0)
        if compress not in ("", "gz"):
            return None
        try:
            return (self.image_dir / (IMAGE + (".gz" if compress else ""))).read_bytes()
        except FileNotFoundError:
            return None

    def ww3_stamp(self, spec: FileSpec) -> str:
        """The list's timestamp: UNIX_TIMESTAMP() on MySQL (DataStore/SQL/MySQL.pm:317),
        EXTRACT(EPOCH FROM ...) on PostgreSQL (DataStore/SQL/PostgreSQL.pm:204), which
        PostgreSQL 14+ prints with six decimals."""
        return "%d" % spec.mtime if self.ww3_db == "mysql" else "%.6f" % spec.mtime

    def ww3_list(self, since: str | int) -> bytes:
        """file.pl's list (file.pl:65-103): files newer than ``since``, sorted by timestamp."""
        files = self.snapshot()
        since = str(since)
        lines = []
        for path, s in sorted(files.items(), key=lambda kv: (kv[1].mtime, self._ids[kv[0]])):
            stamp = self.ww3_stamp(s)
            # "if ($timestamp and $timestamp >= $obj_timestamp)": Perl truth, numeric compare
            if since not in ("", "0") and _perl_number(since) >= Decimal(stamp):
                continue
            ftype = {"file": " ", "dir": "d", "symlink": "l"}[s.kind]
            lines.append("%s %s %s %s %s%04o %s %s\n" % (self._ids[path], path.rsplit("/", 1)[-1],
                         s.uid, s.gid, ftype, s.mode, stamp, "/" + path))
        return "".join(lines).encode()

    def start(self) -> WarewulfStandIn:
        for server in filter(None, (self.httpd, self.httpsd)):
            thread = threading.Thread(target=server.serve_forever, name="wwserver",
                                      kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the ports, so clients see 'connection refused'."""
        for server in filter(None, (self.httpd, self.httpsd)):
            if self._threads:
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> WarewulfStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)  # images, nodes.conf, certificate


class _Handler(BaseHTTPRequestHandler):
    server_version = "wwserver-standin/1"

    def log_message(self, format: str, *args: object) -> None:  # the stdlib's signature
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes = b"",
              ctype: str = "application/octet-stream") -> None:
        standin: WarewulfStandIn = self.server.standin  # type: ignore[attr-defined]
        standin.requests.append((self.path, self.client_address[1], status))
        fault = standin.fault if status == 200 else None
        if fault == "garbage":
            body = random.Random(len(body)).randbytes(max(len(body), 64))
        elif fault == "short":
            body = body[: len(body) // 2]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if fault == "truncate" else body)
        if fault == "truncate":
            self.close_connection = True

    def do_GET(self) -> None:
        standin: WarewulfStandIn = self.server.standin  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        if standin.warewulf == "3":
            return self._ww3(standin, url.path, q)
        return self._ww4(standin, url.path, q)

    def _ww3(self, standin: WarewulfStandIn, path: str, q: dict[str, str]) -> None:
        if path != "/WW/file":
            return self._send(404, b"not found\n")
        hwaddr = q.get("hwaddr", "")
        if not re.fullmatch(r"[a-zA-Z0-9:]+", hwaddr):
            return self._send(404)  # file.pl:51 and 238-242: "contains invalid characters"
        # MySQL's default collation ignores case, PostgreSQL's does not (lookup.value IN (...))
        key = hwaddr.lower() if standin.ww3_db == "mysql" else hwaddr
        if standin.nodes is not None and key not in standin.nodes:
            return self._send(404)  # file.pl:232-237: "HWADDR ($hwaddr) is undefined"
        fileid = q.get("fileid", "")
        if fileid in ("", "0"):  # file.pl:65, "if (! $fileid)": Perl truth
            return self._send(200, standin.ww3_list(q.get("timestamp", "")), "text/plain")
        if not re.fullmatch(r"[0-9]+", fileid):
            return self._send(404)  # file.pl:224-231
        files = standin.snapshot()
        path = next((p for p, i in standin._ids.items() if str(i) == fileid), None)
        if path is None or path not in files:
            return self._send(400)  # file.pl:218-223
        return self._send(200, files[path].content)

    def _ww4(self, standin: WarewulfStandIn, path: str, q: dict[str, str]) -> None:
        m = standin.minor
        tls = self.server.is_tls  # type: ignore[attr-defined]
        parts = path.split("/")
        routes = {"provision", "overlay-runtime"} | ({"runtime"} if m >= 7 else set())
        if len(parts) < 2 or parts[1] not in routes:
            return self._send(404, b"404 page not found\n")  # Go's ServeMux
        if m <= 6 and ":" in self.client_address[0]:
            # parser.go:47-48 at v4.6.0 (39-40 at v4.4.0) split RemoteAddr on ':': for
            # "[fd00::3]:987" the port is "" -> 0 -> "could not obtain remote port" -> 400
            return self._send(400)
        if parts[1] == "provision" and m >= 7:
            stage = q.get("stage") or "ipxe"  # parser.go:103-117 at v4.7.0
        elif "stage" in q:
            stage = q["stage"]  # parser.go:58-59 at v4.6.0: the query wins, on any route
        else:
            stage = {"provision": "ipxe"}.get(parts[1], "runtime")
        if stage != "runtime":
            return self._send(404, b"the stand-in serves only the runtime overlay\n")
        if m >= 7 and standin.httpsd is not None and not tls:
            return self._send(403)  # HandleRuntimeOverlay, overlay.go:47-51 at v4.7.0
        if (m <= 4 and len(parts) != 3) or len(parts) < 3 or not parts[2]:
            return self._send(400)  # "unknown path components" / "no hwaddr encoded in GET"
        wwid = _norm_wwid(urllib.parse.unquote(parts[2]))
        if standin.secure and self.client_address[1] >= 1024:
            return self._send(401)  # provision.go:50-56 at v4.4.0, parser.go:39-45 at v4.7.0
        known = standin.nodes is None or wwid in standin.nodes
        if not known and standin.discoverable:
            # GetNodeOrSetDiscoverable (nodedb.go:98-106 at v4.4.0): the first discoverable
            # node takes this hardware address for good
            standin.nodes = (standin.nodes or set()) | {wwid}
            standin.claimed.append(wwid)
            standin.discoverable, known = False, True
        if known and standin.assetkey and q.get("assetkey") != standin.assetkey:
            return self._send(401)  # provision.go:78-83 at v4.4.0, parser.go:54-59 at v4.7.0
        if not known:
            # an unknown node selects no file: "No resource selected" is only logged
            # (provision.go:228-231 at v4.4.0, 322-325 at v4.6.0, helpers.go:145-148 at v4.7.0)
            return self._send(400)
        image = standin.runtime_image(q.get("compress", ""))
        if image is None:
            return self._send(404)  # "Not found: <stage_file>" (helpers.go:150-153 at v4.7.0)
        return self._send(200, image)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sms_services.lab.wwserver",
                                description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=PROTOCOLS, default="ww4-provision")
    p.add_argument("--warewulf", default=None, help="release to behave like: 3, 4.3 .. 4.7")
    p.add_argument("--dir", required=True, help="the overlay tree to serve")
    p.add_argument("--image-dir", default=None,
                   help="Warewulf 4: where the built image lives; overlay_build() into it is "
                        "`wwctl overlay build` (default: a private temp dir)")
    p.add_argument("--port", type=int, default=None,
                   help="default 9873 (Warewulf 4) or 80 (Warewulf 3)")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--secure", action="store_true",
                   help="Warewulf 4: answer the runtime overlay only to source ports below 1024")
    p.add_argument("--wwid", action="append", help="a registered node (repeat); default any")
    p.add_argument("--assetkey", default=None)
    p.add_argument("--ww3-db", choices=WW3_DBS, default="mysql")
    p.add_argument("--tls-dir", default=None,
                   help="Warewulf 4.7+: serve https on 9874 too, with warewulf.crt/.key from "
                        "here (made when missing, as `wwctl configure tls` does)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = p.parse_args(argv)
    port = a.port if a.port is not None else (80 if a.protocol == "ww3" else 9873)
    try:
        server = WarewulfStandIn(a.dir, a.protocol, a.bind, port, a.secure, a.wwid, a.assetkey,
                                 warewulf=a.warewulf, ww3_db=a.ww3_db, image_dir=a.image_dir,
                                 tls=a.tls_dir is not None, tls_dir=a.tls_dir,
                                 tls_port=9874 if a.tls_dir is not None else 0)
    except ValueError as e:
        p.error(str(e))
    server.httpd.verbose = a.verbose  # type: ignore[attr-defined]
    print(f"wwserver: serving {a.dir} as Warewulf {server.warewulf} on {a.bind}:{server.port}"
          + (f" and https {server.tls_port}" if server.httpsd else ""), flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, like Ctrl-C
    try:
        if server.httpsd:
            threading.Thread(target=server.httpsd.serve_forever, daemon=True).start()
        server.httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        shutil.rmtree(server._tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
