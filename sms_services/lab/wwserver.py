"""A stand-in for SMS-mgmt's Warewulf server, speaking the real file-sync protocols.

Why: the image's wwclient (defs/wwclient) must work against Warewulf 3, 4.4 and
4.5+ without a real Warewulf install, in unit tests and on the lab cluster (run as
a process inside a network namespace).  The stand-in answers exactly what the
real servers answer, as read from their source (shared/notes, sections C and D):

  ww4-provision        GET /provision/<wwid>?stage=runtime[&compress=gz]   (4.5+)
  ww4-overlay-runtime  GET /overlay-runtime/<wwid>                        (4.4)
      -> a (gzip'd) cpio "newc" archive of the runtime overlay, built per request;
         404 for an unknown wwid, 401 from a source port >= 1024 in secure mode
         and 401 on a wrong asset key when one is configured.
  ww3                  GET /WW/file?hwaddr=<wwid>&timestamp=<t>  -> list lines
                       "%s %s %s %s %s%04o %s %s\\n" (id name uid gid type+mode
                       timestamp path), only newer than t, sorted by timestamp;
                       GET /WW/file?hwaddr=<wwid>&fileid=<id>   -> the content.

Real Warewulf 3 has no source-port check; ``secure`` applies it to ww3 too only
because a stand-in may as well be able to.  ``fault`` makes it misbehave the way a
broken network or server would, so clients can be tested against that.
"""
from __future__ import annotations

import argparse
import gzip
import os
import random
import signal
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROTOCOLS = ("ww3", "ww4-overlay-runtime", "ww4-provision")
FAULTS = (None, "garbage", "truncate", "short")


@dataclass
class FileSpec:
    """One overlay entry.  ``kind`` is file, dir or symlink (content = link target).

    ``mtime`` is also the Warewulf 3 timestamp: both mean "last changed on SMS-mgmt".
    """

    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    kind: str = "file"


def newc_archive(entries: list[tuple[str, FileSpec]]) -> bytes:
    """A cpio newc archive, byte-compatible with GNU ``cpio -o -H newc``, of raw names."""
    out = bytearray()

    def add(name: str, mode: int, spec: FileSpec, ino: int, nlink: int, data: bytes) -> None:
        raw = os.fsencode(name) + b"\0"
        fields = (ino, mode, spec.uid, spec.gid, nlink, spec.mtime, len(data),
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
                            mtime=int(st.st_mtime))
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


def _norm_wwid(wwid: str) -> str:
    """How Warewulf 4 reads the id from the URL: '-' means ':', case does not matter."""
    return wwid.replace("-", ":").lower()


class WarewulfStandIn:
    """Serves ``files`` (a dict of path -> FileSpec, or a directory re-read per request).

    ``nodes`` maps wwid -> allowed; None accepts any wwid.  An unknown wwid gets 404,
    a known but disallowed one 403 (Warewulf 3's "request from the wrong address").
    """

    def __init__(self, files: Mapping[str, FileSpec] | str | Path, protocol: str = "ww4-provision",
                 host: str = "127.0.0.1", port: int = 0, secure: bool = False,
                 nodes: Mapping[str, bool] | None = None, assetkey: str | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} (use {', '.join(PROTOCOLS)})")
        self.directory = Path(files) if isinstance(files, (str, Path)) else None
        now = int(time.time())  # copies: the caller's specs stay as they were
        self.files: dict[str, FileSpec] = {} if self.directory else {
            k.lstrip("/"): replace(v, mtime=v.mtime or now) for k, v in files.items()}
        self.protocol, self.secure, self.assetkey = protocol, secure, assetkey
        self.nodes = None if nodes is None else {_norm_wwid(k): v for k, v in nodes.items()}
        self.fault: str | None = None
        self.requests: list[tuple[str, int, int]] = []  # (path, client port, status)
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (ThreadingHTTPServer,),
                          {"address_family": family, "daemon_threads": True,
                           "allow_reuse_address": True})
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.standin = self  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def snapshot(self) -> dict[str, FileSpec]:
        """The files as they are now; a directory is re-read so edits show at once."""
        with self._lock:
            files = scan_tree(self.directory) if self.directory else dict(self.files)
            for path in sorted(files):
                self._ids.setdefault(path, len(self._ids) + 1)
            return files

    def set_file(self, path: str, content: bytes, mode: int | None = None,
                 uid: int | None = None, gid: int | None = None) -> FileSpec:
        """Change (or add) a file and bump its mtime past every other, as wwsh/wwctl would."""
        path = path.lstrip("/")
        with self._lock:
            files = scan_tree(self.directory) if self.directory else self.files
            old = files.get(path, FileSpec())
            stamp = max([int(time.time())] + [s.mtime + 1 for s in files.values()])
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
            return spec

    def runtime_archive(self) -> bytes:
        """The runtime overlay as Warewulf builds it with ``find . | cpio -o -H newc``."""
        files = self.snapshot()
        names: dict[str, FileSpec] = {".": FileSpec(mode=0o755, kind="dir")}
        for path in sorted(files):
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if ".." not in parts[:i] and parent not in files:
                    names.setdefault("./" + parent, FileSpec(mode=0o755, kind="dir"))
            names[path if path.startswith("..") else "./" + path] = files[path]
        return newc_archive(list(names.items()))

    def ww3_list(self, since: int) -> bytes:
        """file.pl's list: files newer than ``since``, sorted by timestamp."""
        files = self.snapshot()
        lines = []
        for path, s in sorted(files.items(), key=lambda kv: (kv[1].mtime, self._ids[kv[0]])):
            if since and since >= s.mtime:
                continue
            ftype = {"file": " ", "dir": "d", "symlink": "l"}[s.kind]
            lines.append("%s %s %s %s %s%04o %s %s\n" % (self._ids[path], path.rsplit("/", 1)[-1],
                         s.uid, s.gid, ftype, s.mode, s.mtime, "/" + path))
        return "".join(lines).encode()

    def start(self) -> WarewulfStandIn:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="wwserver",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port, so clients see 'connection refused'."""
        if self._thread:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> WarewulfStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if standin.protocol == "ww3":
            if url.path != "/WW/file":
                return self._send(404, b"not found\n")
            wwid = q.get("hwaddr", "").lower()
        else:
            prefix = "/provision/" if standin.protocol == "ww4-provision" else "/overlay-runtime/"
            if not url.path.startswith(prefix):
                return self._send(404, b"not found\n")
            wwid = _norm_wwid(urllib.parse.unquote(url.path[len(prefix):]))
        if standin.nodes is not None and wwid not in standin.nodes:
            return self._send(404, f"node {wwid} not found\n".encode())
        if standin.nodes is not None and not standin.nodes[wwid]:
            return self._send(403, b"forbidden\n")
        if standin.secure and self.client_address[1] >= 1024:
            return self._send(401, b"secure mode: source port must be below 1024\n")
        if standin.assetkey and q.get("assetkey") != standin.assetkey:
            return self._send(401, b"BAD_ASSET\n")
        if standin.protocol == "ww3":
            if "fileid" in q:
                files = standin.snapshot()
                path = next((p for p, i in standin._ids.items() if str(i) == q["fileid"]), None)
                if path is None or path not in files:
                    return self._send(400, b"no such file id\n")
                return self._send(200, files[path].content)
            since = int(q["timestamp"]) if q.get("timestamp", "").isdigit() else 0
            return self._send(200, standin.ww3_list(since), "text/plain")
        if standin.protocol == "ww4-provision" and q.get("stage") != "runtime":
            return self._send(404, b"the stand-in serves only stage=runtime\n")
        archive = standin.runtime_archive()
        if standin.protocol == "ww4-overlay-runtime" or q.get("compress") == "gz":
            archive = gzip.compress(archive, mtime=0)
        return self._send(200, archive)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sms_services.lab.wwserver",
                                description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=PROTOCOLS, default="ww4-provision")
    p.add_argument("--dir", required=True, help="tree to serve (re-read on every request)")
    p.add_argument("--port", type=int, default=None,
                   help="default 9873 (Warewulf 4) or 80 (Warewulf 3)")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--secure", action="store_true", help="answer only source ports below 1024")
    p.add_argument("--wwid", action="append", help="a node allowed to sync (repeat); default any")
    p.add_argument("--assetkey", default=None)
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = p.parse_args(argv)
    port = a.port if a.port is not None else (80 if a.protocol == "ww3" else 9873)
    nodes = {w: True for w in a.wwid} if a.wwid else None
    server = WarewulfStandIn(a.dir, a.protocol, a.bind, port, a.secure, nodes, a.assetkey)
    server.httpd.verbose = a.verbose  # type: ignore[attr-defined]
    print(f"wwserver: serving {a.dir} via {a.protocol} on {a.bind}:{server.port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, like Ctrl-C
    try:
        server.httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
