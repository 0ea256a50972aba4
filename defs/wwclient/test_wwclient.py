"""The image's wwclient against the Warewulf stand-in, over real HTTP on 127.0.0.1.

Each test runs the real program (as a subprocess, as supervisord would) with
--once into a temp root, for each protocol: ww4-provision (/provision/<wwid>?
stage=runtime, Warewulf 4.6 here), ww4-overlay-runtime (/overlay-runtime/<wwid>),
ww4-runtime-tls (https /runtime/<wwid>, Warewulf 4.7 with tls on) and ww3.  The
stand-in answers as the real servers do (see sms_services/lab/wwserver.py).  Owner
checks need root; everything else runs unprivileged in a few seconds.
"""
from __future__ import annotations

import gzip
import http.client
import importlib.machinery
import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sms_services.lab.wwserver import FileSpec, WarewulfStandIn, newc_archive, overlay_build

# The image runs the client with its own python3 (3.9 on EL8 .. 3.13): WWCLIENT_PYTHON picks one.
PYTHON = os.environ.get("WWCLIENT_PYTHON", sys.executable)
CLIENT = Path(__file__).parent / "files/usr/libexec/sms-services/wwclient/sms-wwclient"
PROTOCOLS = ["ww4-provision", "ww4-overlay-runtime", "ww4-runtime-tls", "ww3"]
WW4 = [p for p in PROTOCOLS if p != "ww3"]
WWID = "02:00:c6:12:00:02"
IS_ROOT = os.geteuid() == 0
KEY_OWNER = (202, 202) if IS_ROOT else (os.getuid(), os.getgid())
T0 = 1_700_000_000


def can_bind_low_port() -> bool:
    """Secure mode needs a source port below 1024: root, CAP_NET_BIND_SERVICE or a low sysctl."""
    for port in range(1000, 1024):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return True
        except PermissionError:
            return False
        except OSError:
            continue
        finally:
            s.close()
    return False


def load_client():
    """The client as a module (it has no .py suffix), for its parser."""
    loader = importlib.machinery.SourceFileLoader("sms_wwclient", str(CLIENT))
    spec = importlib.util.spec_from_loader("sms_wwclient", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def overlay() -> dict[str, FileSpec]:
    return {
        "etc/passwd": FileSpec(b"root:x:0:0:root:/root:/bin/sh\n"
                               b"slurm:x:202:202::/etc:/sbin/nologin\n", 0o644, 0, 0, T0),
        "etc/group": FileSpec(b"root:x:0:\nslurm:x:202:\n", 0o644, 0, 0, T0 + 1),
        "etc/munge/munge.key": FileSpec(bytes(range(256)) * 4, 0o400, *KEY_OWNER, T0 + 2),
        "etc/slurm": FileSpec(mode=0o755, mtime=T0 + 3, kind="dir"),
        "etc/slurm/slurm.conf": FileSpec(b"ClusterName=lab\nSlurmctldHost=sms\n", 0o644, 0, 0,
                                         T0 + 4),
        "etc/slurm/current.conf": FileSpec(b"slurm.conf", 0o777, 0, 0, T0 + 5, kind="symlink"),
    }


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    return root, state


def client_port(server: WarewulfStandIn) -> int:
    return server.tls_port if server.protocol == "ww4-runtime-tls" else server.port


def run(server: WarewulfStandIn, dirs: tuple[Path, Path], *extra: str, wwid: str = WWID,
        secure: bool = False, env: dict | None = None, protocol: str | None = None,
        host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    root, state = dirs
    protocol = protocol or server.protocol
    port = server.tls_port if protocol == "ww4-runtime-tls" else server.port
    ca = ["--ca", str(server.ca_file)] if protocol == "ww4-runtime-tls" and "--ca" not in extra else []
    cmd = [PYTHON, str(CLIENT), "--once", "--server", host, "--port", str(port),
           "--wwid", wwid, "--protocol", protocol,
           "--root", str(root), "--state", str(state),
           "--timeout", "5", "--secure" if secure else "--no-secure", *ca, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env or clean_env())


def change(server: WarewulfStandIn, path: str, content: bytes, **kw) -> None:
    """Change a file on SMS-mgmt as an admin does: edit it, then (Warewulf 4) `wwctl overlay build`."""
    server.set_file(path, content, **kw)
    if server.protocol != "ww3":
        server.overlay_build()


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about the tree a reader could notice, including inodes (renames)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
        out[str(p.relative_to(root))] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid,
                                         st.st_mtime_ns, body)
    return out


def no_temp_files(*trees: Path) -> None:
    left = [p for t in trees if t.exists() for p in t.rglob(".wwclient-tmp-*")]
    assert not left, f"temp files left behind: {left}"


@pytest.fixture(params=PROTOCOLS)
def server(request):
    with WarewulfStandIn(overlay(), request.param, nodes=[WWID]) as s:
        yield s


# ------------------------------------------------------------------ the happy path
def test_files_arrive_with_content_mode_mtime(server, dirs):
    root, state = dirs
    r = run(server, dirs)
    assert r.returncode == 0, r.stdout + r.stderr
    where = f"127.0.0.1:{client_port(server)}"
    assert f"wwclient: synced 5 files (5 changed) from {where} via {server.protocol}" in r.stdout
    for path, spec in overlay().items():
        p = root / path
        st = p.lstat()
        if spec.kind == "symlink":
            assert os.readlink(p) == spec.content.decode()
        elif spec.kind == "dir":
            assert p.is_dir() and stat.S_IMODE(st.st_mode) == spec.mode
        else:
            assert p.read_bytes() == spec.content
            assert stat.S_IMODE(st.st_mode) == spec.mode, path
        assert int(st.st_mtime) == spec.mtime, path
        if IS_ROOT:
            assert (st.st_uid, st.st_gid) == (spec.uid, spec.gid), path
    status = json.loads((state / "status.json").read_text())
    assert status["ok"] is True and status["files"] == 5 and status["last_error"] is None
    no_temp_files(root, state)


def test_changed_file_arrives_and_unchanged_files_are_not_rewritten(server, dirs):
    root, state = dirs
    assert run(server, dirs).returncode == 0
    before = snapshot(root)
    change(server, "etc/slurm/slurm.conf", b"ClusterName=lab\nSlurmctldHost=sms2\n", mode=0o640)
    r = run(server, dirs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(1 changed)" in r.stdout
    conf = root / "etc/slurm/slurm.conf"
    assert conf.read_bytes().endswith(b"sms2\n")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    after = snapshot(root)
    for path in ("etc/passwd", "etc/group", "etc/munge/munge.key", "etc/slurm/current.conf"):
        assert after[path] == before[path], f"{path} was rewritten though unchanged"
    assert after["etc/slurm/slurm.conf"][0] != before["etc/slurm/slurm.conf"][0]  # renamed in
    no_temp_files(root, state)
    r = run(server, dirs)
    assert r.returncode == 0 and "(0 changed)" in r.stdout
    assert snapshot(root) == after


def test_server_down_keeps_last_good_copy(server, dirs):
    root, state = dirs
    assert run(server, dirs).returncode == 0
    before = snapshot(root)
    server.stop()
    r = run(server, dirs)
    assert r.returncode != 0
    assert f"wwclient: SMS-mgmt 127.0.0.1:{client_port(server)} unreachable (" in r.stdout
    assert "keeping last good copy" in r.stdout and len(r.stdout.splitlines()) == 1
    assert snapshot(root) == before
    status = json.loads((state / "status.json").read_text())
    assert status["ok"] is False and status["last_error"] and status["files"] == 5


@pytest.mark.parametrize("fault", ["garbage", "truncate", "short"])
def test_bad_answer_writes_nothing(server, dirs, fault):
    if fault == "short" and server.protocol == "ww3":
        pytest.skip("a Warewulf 3 list cut at a line end looks complete; covered by 'truncate'")
    root, state = dirs
    server.fault = fault
    r = run(server, dirs)
    assert r.returncode != 0, r.stdout
    assert "keeping last good copy" in r.stdout
    assert list(root.iterdir()) == []
    # and with a good copy in place, a bad answer leaves it untouched
    server.fault = None
    assert run(server, dirs).returncode == 0
    before = snapshot(root)
    change(server, "etc/passwd", b"root:x:0:0::/:/bin/false\n")
    server.fault = fault
    assert run(server, dirs).returncode != 0
    assert snapshot(root) == before
    no_temp_files(root, state)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_path_traversal_is_rejected(protocol, dirs, tmp_path):
    files = overlay()
    files["../etc/x"] = FileSpec(b"evil\n", 0o644, 0, 0, T0 + 9)
    with WarewulfStandIn(files, protocol) as server:
        r = run(server, dirs)
    assert r.returncode != 0
    assert "leaves the root" in r.stdout
    assert not (tmp_path / "etc").exists()
    assert list(dirs[0].iterdir()) == []


@pytest.mark.parametrize("protocol", ["ww4-provision", "ww4-overlay-runtime"])
def test_no_writing_through_a_symlink_out_of_the_root(protocol, dirs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    files = {"etc": FileSpec(str(outside).encode(), kind="symlink", mtime=T0),
             "etc/passwd": FileSpec(b"evil\n", mtime=T0)}
    with WarewulfStandIn(files, protocol) as server:
        r = run(server, dirs)
    assert r.returncode != 0 and "symlink out of the root" in r.stdout
    assert list(outside.iterdir()) == []


def test_parser_rejects_absolute_and_dotdot_names():
    client = load_client()
    for name in ("/etc/x", "./a/../../x", "etc/../../x"):
        with pytest.raises(ValueError):
            client.parse_newc(newc_archive([(name, FileSpec(b"x"))]))
    ok = client.parse_newc(newc_archive([(".", FileSpec(kind="dir", mode=0o755)),
                                         ("./a/b", FileSpec(b"x", 0o600, 1, 2, 3))]))
    assert [(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.data) for e in ok] == \
        [("a/b", "file", 0o600, 1, 2, 3, b"x")]
    archive = newc_archive([("a", FileSpec(b"hello"))])
    for cut in (50, 120, len(archive.rstrip(b"\0")) - 20):
        with pytest.raises(ValueError):
            client.parse_newc(archive[:cut])
    with pytest.raises(ValueError):
        client.gunzip(gzip.compress(archive)[:-10])


# ------------------------------------------------------------------ refusals
def test_unknown_wwid_fails_clearly(server, dirs):
    """Warewulf 4.4-4.7 answer an unknown node 400 (no resource selected), Warewulf 3 404."""
    r = run(server, dirs, wwid="02:00:c6:12:00:99")
    assert r.returncode != 0
    if server.protocol == "ww3":
        assert "HTTP 404" in r.stdout and "wwsh node list" in r.stdout
    else:
        assert "HTTP 400" in r.stdout and "wwctl node add NAME --hwaddr 02:00:c6:12:00:99" in r.stdout
    assert "02:00:c6:12:00:99" in r.stdout
    assert list(dirs[0].iterdir()) == []


@pytest.mark.parametrize("protocol", WW4)
def test_secure_server_rejects_unprivileged_source_port(protocol, dirs):
    with WarewulfStandIn(overlay(), protocol, secure=True) as server:
        r = run(server, dirs, secure=False)
        assert r.returncode != 0
        assert "HTTP 401" in r.stdout and "--secure is off" in r.stdout
        assert all(port >= 1024 for _, port, _ in server.requests)
        assert list(dirs[0].iterdir()) == []


@pytest.mark.skipif(not can_bind_low_port(), reason="needs root or CAP_NET_BIND_SERVICE")
@pytest.mark.parametrize("protocol", WW4)
def test_secure_client_is_accepted(protocol, dirs):
    with WarewulfStandIn(overlay(), protocol, secure=True) as server:
        for _ in range(2):  # twice: the second must cope with the first's TIME_WAIT
            r = run(server, dirs, secure=True)
            assert r.returncode == 0, r.stdout + r.stderr
        assert server.requests and all(port < 1024 for _, port, _ in server.requests)
        assert (dirs[0] / "etc/munge/munge.key").exists()


@pytest.mark.parametrize("protocol", WW4)
def test_asset_key(protocol, dirs):
    with WarewulfStandIn(overlay(), protocol, assetkey="rack_7") as server:
        r = run(server, dirs, "--assetkey", "rack 8")
        assert r.returncode != 0 and "HTTP 401" in r.stdout
        assert run(server, dirs, "--assetkey", "rack 7").returncode == 0  # spaces become _


# ------------------------------------------------------------------ ww3 specifics
def test_ww3_remembers_timestamp_and_resyncs_lost_files(dirs):
    root = dirs[0]
    with WarewulfStandIn(overlay(), "ww3", nodes=[WWID]) as server:
        assert run(server, dirs).returncode == 0
        r = run(server, dirs)
        assert "synced 0 files" in r.stdout
        assert server.requests[-1][0].endswith(f"&timestamp={T0 + 5}")
        (root / "etc/group").unlink()  # e.g. a fresh /etc under an old state dir
        r = run(server, dirs)
        assert r.returncode == 0 and (root / "etc/group").exists()
        lists = [path for path, _, _ in server.requests if "timestamp=" in path]
        assert lists[-1].endswith("&timestamp=0")


def test_ww3_list_format_matches_file_pl():
    with WarewulfStandIn(overlay(), "ww3") as server:
        lines = server.ww3_list(0).decode().splitlines()
        # ids in path order, lines in timestamp order; a regular file's type is a space
        assert lines[0] == "3 passwd 0 0  0644 %d /etc/passwd" % T0
        assert any(line.split()[4] == "d0755" and line.endswith(" /etc/slurm") for line in lines)
        assert any(line.split()[4] == "l0777" for line in lines)
        assert server.ww3_list(T0 + 4) == server.ww3_list(0).splitlines(keepends=True)[-1]


# ------------------------------------------------------------------ interop with GNU cpio
@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_parser_reads_gnu_cpio_and_gnu_cpio_reads_the_standin(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc/slurm").mkdir(parents=True)
    (tree / "etc/slurm/slurm.conf").write_bytes(b"ClusterName=lab\n")
    (tree / "etc/odd").write_bytes(b"abc")  # lengths that exercise the 4-byte padding
    (tree / "etc/slurm/link").symlink_to("slurm.conf")
    os.link(tree / "etc/odd", tree / "etc/hard")
    os.chmod(tree / "etc/odd", 0o640)
    os.utime(tree / "etc/odd", (T0, T0))
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tree, input=names,
                             capture_output=True, check=True).stdout
    entries = {e.path: e for e in load_client().parse_newc(archive)}
    assert entries["etc/slurm/slurm.conf"].data == b"ClusterName=lab\n"
    link = entries["etc/slurm/link"]
    assert link.kind == "symlink" and link.data == b"slurm.conf"
    assert entries["etc/odd"].data == entries["etc/hard"].data == b"abc"
    assert entries["etc/odd"].mode == 0o640 and entries["etc/odd"].mtime == T0
    assert entries["etc/slurm"].kind == "dir"
    out = tmp_path / "out"
    out.mkdir()
    with WarewulfStandIn(overlay(), "ww4-provision") as server:
        subprocess.run(["cpio", "--quiet", "-idm", "--no-absolute-filenames"], cwd=out,
                       input=server.runtime_archive(), check=True)
    assert (out / "etc/munge/munge.key").read_bytes() == overlay()["etc/munge/munge.key"].content
    assert os.readlink(out / "etc/slurm/current.conf") == "slurm.conf"


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("args,env,needle", [
    (["--server", "h", "--wwid", "w", "--protocol", "ww5"], {}, "unknown protocol 'ww5'"),
    (["--wwid", "w", "--protocol", "ww3"], {}, "no SMS-mgmt server set"),
    (["--server", "h", "--protocol", "ww3"], {}, "no wwid set"),
    (["--server", "h", "--wwid", "w"], {}, "no protocol set"),
    (["--server", "h", "--wwid", "w", "--protocol", "ww3"], {"SMS_WWCLIENT_PORT": "x"},
     "port must"),
    (["--server", "h", "--wwid", "w", "--protocol", "ww3"], {"SMS_WWCLIENT_SECURE": "maybe"},
     "SMS_WWCLIENT_SECURE must be true or false"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, env, needle):
    r = subprocess.run([PYTHON, str(CLIENT), "--once", "--state", str(tmp_path),
                        "--release-env", str(tmp_path / "none"), *args],
                       capture_output=True, text=True, env={**clean_env(), **env}, timeout=30)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_settings_from_environment_and_release_env(dirs, tmp_path):
    release_env = tmp_path / "release.env"
    release_env.write_text("SMS_RELEASE='3.5'\nSMS_RELEASE_WWCLIENT_PROTOCOL=ww4-provision\n")
    root, state = dirs
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID]) as server:
        env = {**clean_env(), "SMS_WWCLIENT_SERVER": "127.0.0.1",
               "SMS_WWCLIENT_PORT": str(server.port), "SMS_WWCLIENT_WWID": WWID,
               "SMS_WWCLIENT_SECURE": "false", "SMS_WWCLIENT_PROTOCOL": ""}
        r = subprocess.run([PYTHON, str(CLIENT), "--once", "--root", str(root), "--state",
                            str(state), "--release-env", str(release_env)],
                           capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "via ww4-provision" in r.stdout and (root / "etc/passwd").exists()


# ------------------------------------------------------------------ daemon mode and signals
def start_daemon(port: int, dirs: tuple[Path, Path], protocol: str = "ww4-provision",
                 timeout: str = "10") -> tuple[subprocess.Popen, queue.Queue]:
    root, state = dirs
    proc = subprocess.Popen(
        [PYTHON, str(CLIENT), "--server", "127.0.0.1", "--port", str(port), "--wwid", WWID,
         "--protocol", protocol, "--root", str(root), "--state", str(state), "--no-secure",
         "--interval", "60", "--timeout", timeout],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def wait_line(lines: queue.Queue, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {timeout}s")


def stop_within(proc: subprocess.Popen, seconds: float) -> float:
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"client did not exit within {seconds}s of SIGTERM") from None
    assert rc == 0
    return time.monotonic() - t


def test_daemon_sighup_syncs_now_and_sigterm_exits_within_1s(dirs):
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID]) as server:
        proc, lines = start_daemon(server.port, dirs)
        try:
            wait_line(lines, "synced 5 files (5 changed)")
            change(server, "etc/group", b"root:x:0:\n")
            proc.send_signal(signal.SIGHUP)
            wait_line(lines, "synced 5 files (1 changed)", timeout=5)
            assert (dirs[0] / "etc/group").read_bytes() == b"root:x:0:\n"
            stop_within(proc, 1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sigterm_during_a_hanging_request_exits_within_1s(dirs):
    """An SMS-mgmt that accepts but never answers must not hold up a stop for --timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    proc, _ = start_daemon(silent.getsockname()[1], dirs, timeout="30")
    try:
        conn, _ = silent.accept()  # the client is now waiting for an answer
        time.sleep(0.2)
        stop_within(proc, 1.0)
        conn.close()
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    no_temp_files(*dirs)


# ------------------------------------------------------------------ as the real servers answer
def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_ww3_postgresql_fractional_timestamps_are_sent_back_unchanged(dirs):
    """Warewulf 3 on PostgreSQL lists EXTRACT(EPOCH ...) timestamps with a fraction."""
    files = overlay()
    files["etc/slurm/slurm.conf"].mtime = T0 + 4.25
    files["etc/slurm/current.conf"].mtime = T0 + 5.123456
    with WarewulfStandIn(files, "ww3", nodes=[WWID], ww3_db="postgresql") as server:
        assert server.ww3_list(0).decode().splitlines()[-1].split()[5] == "%d.123456" % (T0 + 5)
        r = run(server, dirs)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "synced 5 files (5 changed)" in r.stdout
        assert int((dirs[0] / "etc/slurm/slurm.conf").stat().st_mtime) == T0 + 4
        r = run(server, dirs)
        assert r.returncode == 0 and "synced 0 files" in r.stdout
        assert server.requests[-1][0].endswith("&timestamp=%d.123456" % (T0 + 5))
        change(server, "etc/group", b"root:x:0:\n")
        r = run(server, dirs)
        assert r.returncode == 0 and "synced 1 files (1 changed)" in r.stdout
        assert (dirs[0] / "etc/group").read_bytes() == b"root:x:0:\n"
        stamp = server.ww3_stamp(server.files["etc/group"])
        assert "." in stamp
        assert json.loads((dirs[1] / "ww3-state.json").read_text())["timestamp"] == stamp


def test_ww3_hardware_address_is_normalised(dirs):
    """file.pl takes only [a-zA-Z0-9:]; wwsh stores lower case, PostgreSQL compares exactly."""
    with WarewulfStandIn(overlay(), "ww3", nodes=[WWID], ww3_db="postgresql") as server:
        assert http_get(server.port, "/WW/file?hwaddr=02-00-c6-12-00-02")[0] == 404
        assert http_get(server.port, "/WW/file?hwaddr=02:00:C6:12:00:02")[0] == 404
        r = run(server, dirs, wwid="02-00-C6-12-00-02")
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(f"hwaddr={WWID}&" in path for path, _, _ in server.requests[2:])


def test_ww3_has_no_source_port_check(dirs):
    """Warewulf 3 checks no port: the stand-in cannot pretend to, the client binds none."""
    with pytest.raises(ValueError, match="no secure mode"):
        WarewulfStandIn(overlay(), "ww3", secure=True)
    with WarewulfStandIn(overlay(), "ww3", nodes=[WWID]) as server:
        r = run(server, dirs, secure=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(port >= 1024 for _, port, _ in server.requests)


def test_ww4_known_node_without_image_gets_404_and_the_build_hint(dirs):
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID]) as server:
        server.broken_overlay = True
        r = run(server, dirs)
    assert r.returncode != 0
    assert "HTTP 404" in r.stdout and "wwctl overlay build" in r.stdout
    assert list(dirs[0].iterdir()) == []


def test_ww4_discoverable_node_is_claimed_by_our_address(dirs):
    """Why the README warns: an unregistered SMS-services takes over a discoverable node."""
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[], discoverable=True) as server:
        r = run(server, dirs)
        assert r.returncode == 0, r.stdout + r.stderr
        assert server.claimed == [WWID] and not server.discoverable
        assert run(server, dirs, wwid="02:00:c6:12:00:99").returncode != 0  # taken once only


@pytest.mark.parametrize("warewulf", ["4.4", "4.6", "4.7"])
def test_ww4_routes_and_compression(warewulf):
    """Every 4.x answers /provision/?stage=runtime and /overlay-runtime/, 4.7 also /runtime/;
    each sends the image plain unless asked for compress=gz."""
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID], warewulf=warewulf) as server:
        for route in ("/provision/%s?stage=runtime", "/overlay-runtime/%s", "/runtime/%s"):
            status, plain = http_get(server.port, route % WWID)
            if route.startswith("/runtime/") and warewulf != "4.7":
                assert status == 404
                continue
            assert status == 200 and plain[:6] == b"070701"
            sep = "&" if "?" in route else "?"
            status, packed = http_get(server.port, route % WWID + sep + "compress=gz")
            assert status == 200 and gzip.decompress(packed) == plain
        assert http_get(server.port, "/provision/%s?stage=runtime&compress=xz" % WWID)[0] == 404
        assert http_get(server.port, "/overlay-runtime/02:00:c6:12:00:99")[0] == 400


def test_ww4_client_asks_for_gzip_on_every_route(dirs):
    with WarewulfStandIn(overlay(), "ww4-overlay-runtime", nodes=[WWID]) as server:
        assert run(server, dirs).returncode == 0
        path = server.requests[-1][0]
    assert path.startswith(f"/overlay-runtime/{WWID}?") and "compress=gz" in path


@pytest.mark.parametrize("protocol", ["ww4-provision", "ww4-overlay-runtime"])
def test_ww4_tls_server_refuses_plain_http_with_403_and_the_hint(protocol, dirs):
    with WarewulfStandIn(overlay(), "ww4-runtime-tls", nodes=[WWID]) as server:
        r = run(server, dirs, protocol=protocol)
    assert r.returncode != 0
    assert "HTTP 403" in r.stdout and "ww4-runtime-tls" in r.stdout
    assert list(dirs[0].iterdir()) == []


def test_ww4_tls_refuses_a_certificate_it_was_not_given(dirs, tmp_path):
    """wwclient 4.7 trusts only the server's certificate; so do we."""
    with WarewulfStandIn(overlay(), "ww4-runtime-tls", nodes=[WWID]) as server, \
            WarewulfStandIn(overlay(), "ww4-runtime-tls") as other:
        r = run(server, dirs, "--ca", str(other.ca_file))
        assert r.returncode != 0
        assert "certificate is not the one trusted here" in r.stdout
        assert not [p for p, _, _ in server.requests]
    assert list(dirs[0].iterdir()) == []


@pytest.mark.parametrize("ca,needle", [(None, "needs SMS-mgmt's certificate"),
                                       ("missing.crt", "No such file"),
                                       ("garbage.crt", "certificate")])
def test_ww4_tls_settings(tmp_path, ca, needle):
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    args = ["--ca", str(tmp_path / ca)] if ca else []
    r = subprocess.run([PYTHON, str(CLIENT), "--once", "--server", "h", "--wwid", WWID,
                        "--protocol", "ww4-runtime-tls", "--state", str(tmp_path), *args],
                       capture_output=True, text=True, env=clean_env(), timeout=30)
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("warewulf", ["4.4", "4.6", "4.7"])
def test_ww4_ipv6_fails_on_4_4_to_4_6_with_a_clear_hint(warewulf, dirs):
    with WarewulfStandIn(overlay(), "ww4-provision", host="::1", nodes=[WWID],
                         warewulf=warewulf) as server:
        r = run(server, dirs, host="::1")
    if warewulf == "4.7":
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        assert r.returncode != 0
        assert "HTTP 400" in r.stdout and "IPv6" in r.stdout and "wwctl node add" not in r.stdout


def test_ww4_6_serves_the_image_built_until_nodes_conf_or_overlay_build(dirs):
    """The real lag: 4.5+ rebuild a runtime image only when it is missing or nodes.conf is
    newer, so a changed file waits for `wwctl overlay build` (or any `wwctl node set`)."""
    root = dirs[0]
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID], warewulf="4.6") as server:
        assert run(server, dirs).returncode == 0
        server.set_file("etc/group", b"root:x:0:\n")
        r = run(server, dirs)
        assert r.returncode == 0 and "(0 changed)" in r.stdout
        assert (root / "etc/group").read_bytes() != b"root:x:0:\n"
        time.sleep(0.02)  # past the filesystem's timestamp tick
        server.touch_nodes_conf()
        r = run(server, dirs)
        assert r.returncode == 0 and "(1 changed)" in r.stdout
        assert (root / "etc/group").read_bytes() == b"root:x:0:\n"
        server.set_file("etc/passwd", b"root:x:0:0::/:/bin/sh\n")
        assert "(0 changed)" in run(server, dirs).stdout
        server.overlay_build()
        assert "(1 changed)" in run(server, dirs).stdout


def test_ww4_4_rebuilds_when_an_overlay_file_changed(dirs):
    """4.4 also compared the overlay's own files with the image (autobuild)."""
    with WarewulfStandIn(overlay(), "ww4-provision", nodes=[WWID], warewulf="4.4") as server:
        assert run(server, dirs).returncode == 0
        time.sleep(0.02)
        server.set_file("etc/group", b"root:x:0:\n")
        r = run(server, dirs)
        assert r.returncode == 0 and "(1 changed)" in r.stdout


def test_lab_standin_process_serves_what_overlay_build_wrote(dirs, tmp_path):
    """The lab's way (lab/cluster.py): the stand-in as a process answering as 4.6 does, the
    admin's `wwctl overlay build` done with wwserver.overlay_build into its --image-dir."""
    tree, images = tmp_path / "mgmt", tmp_path / "mgmt-provision"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    overlay_build(tree, images)
    proc = subprocess.Popen([sys.executable, "-m", "sms_services.lab.wwserver", "--dir", str(tree),
                             "--image-dir", str(images), "--warewulf", "4.6", "--port", "0",
                             "--bind", "127.0.0.1", "--wwid", WWID],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        port = int(proc.stdout.readline().split(":")[-1])

        class Port:  # what run() needs of a stand-in
            protocol, tls_port, ca_file = "ww4-provision", 0, None
        Port.port = port
        assert run(Port, dirs).returncode == 0
        (tree / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\nalice:x:2001:2001::/:/bin/sh\n")
        assert b"alice" not in (dirs[0] / "etc/passwd").read_bytes()
        assert "(0 changed)" in run(Port, dirs).stdout  # 4.6 serves the image it has
        overlay_build(tree, images)
        r = run(Port, dirs)
        assert "(1 changed)" in r.stdout, r.stdout + r.stderr
        assert b"alice" in (dirs[0] / "etc/passwd").read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)
