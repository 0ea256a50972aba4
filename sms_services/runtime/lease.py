"""Never two writers: a lease beside the overlay, renewed while the instance runs.

Two controllers on one overlay corrupt the cluster's state in seconds, and
nothing below us prevents it: Apptainer does not lock an overlay, ``flock`` does
not cross hosts on shared storage, and ext4's multi-mount protection (the
kernel's own guard) makes the image one Apptainer refuses ("file is not a valid
ext3 image": its image/ext3.go accepts only the filetype, recover and meta_bg
incompat features, and MMP is one more; measured with Apptainer 1.4.5).

So the lease is ours, modelled on MMP: ``<overlay>.lease`` names the holder
(host id, instance, a random token) and a sequence number a small renewer
process bumps every ``interval`` seconds while the instance lives. A start on
another host is refused while the lease exists. Taking over after a host died
(``--take-over``) does not trust clocks: it watches the sequence for two
intervals and proceeds only if nobody bumped it, then moves the old lease
aside with one rename (atomic, so of two hosts taking over at once one wins).
A renewer that finds its token gone stops its instance: the other host won.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sms_services.errors import UserError
from sms_services.runtime.procfs import ended

INTERVAL = 5.0  # seconds between renewals; a take-over waits two of them and a bit


def host_id() -> str:
    """Who holds a lease: ``SMS_HOST_ID``, else machine-id and host name (a cloned VM
    keeps the machine-id, so the name goes with it)."""
    if os.environ.get("SMS_HOST_ID"):
        return os.environ["SMS_HOST_ID"]
    try:
        machine = Path("/etc/machine-id").read_text().strip()[:12]
    except OSError:
        machine = "no-machine-id"
    return f"{socket.gethostname()}:{machine}"


def lease_path(overlay: Path) -> Path:
    return overlay.with_name(overlay.name + ".lease")


@dataclass
class Lease:
    holder: str
    instance: str
    token: str
    seq: int
    renewed: float  # the holder's clock: shown to people, never used to decide
    interval: float
    renewer: int = 0  # the renewer's pid on the holder's host

    def describe(self) -> str:
        """Who holds it, for a message (the age is by the holder's clock: informative only)."""
        age = time.time() - self.renewed
        return (f"held by {self.holder} (instance {self.instance}, renewed {age:.0f} s ago by its clock, "
                f"sequence {self.seq})")


def _parse(path: Path, raw: bytes) -> Lease:
    try:
        data = json.loads(raw)
        lease = Lease(**data)
        if not (isinstance(lease.token, str) and isinstance(lease.seq, int) and isinstance(lease.renewer, int)):
            raise TypeError
        return lease
    except (ValueError, TypeError):
        raise UserError(f"{path}: not a lease file smsctl wrote; remove it if you know no instance uses "
                        "the overlay") from None


def _read_path(path: Path) -> Lease | None:
    try:
        # O_NONBLOCK: a FIFO planted there must not hang every start.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:  # ELOOP: a link planted where the lease goes
        raise UserError(f"{path}: not a lease file smsctl wrote ({err.strerror}); remove it if you "
                        "know no instance uses the overlay") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"{path}: not a lease file smsctl wrote (not a regular file); remove it if you "
                            "know no instance uses the overlay")
        raw = fh.read(65536)
    return _parse(path, raw)


def read(overlay: Path) -> Lease | None:
    return _read_path(lease_path(overlay))


def _staged(overlay: Path, lease: Lease) -> Path:
    """The lease's whole content in a file of its own beside it, so that it appears at its
    name complete or not at all (a reader on another host never sees half of it)."""
    fd, name = tempfile.mkstemp(prefix=f".{lease_path(overlay).name}.", dir=overlay.parent)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, (json.dumps(asdict(lease)) + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def _write(overlay: Path, lease: Lease) -> None:
    staged = _staged(overlay, lease)
    try:
        os.rename(staged, lease_path(overlay))
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def _create(overlay: Path, lease: Lease) -> bool:
    """Exclusively (a hard link never replaces): False if a lease appeared meanwhile."""
    staged = _staged(overlay, lease)
    try:
        os.link(staged, lease_path(overlay))
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """A live process (not a zombie) with that pid."""
    if pid <= 0:
        return False
    return not ended(pid)


def _ours(pid: int) -> bool:
    """A live smsctl or renewer, not whatever reused the pid after a reboot."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"sms_services" in cmdline or b"smsctl" in cmdline


def acquire(overlay: Path, instance: str, *, take_over: bool = False, interval: float = INTERVAL,
            say: Callable[[str], None] = lambda s: None, sleep: Callable[[float], None] = time.sleep) -> Lease:
    """The lease for ``instance`` on ``overlay``, or one line why not.

    Held by this host: reclaimed when neither its renewer nor the smsctl that took it
    lives (a crash or a reboot here), refused while one does. Held by another host:
    refused, unless ``take_over`` and the holder's sequence stands still for two
    intervals. Until the renewer runs, the lease names this smsctl, so a second start
    on this host during the first one's e2fsck is refused too."""
    me = host_id()
    mine = Lease(me, instance, secrets.token_hex(16), 0, time.time(), interval, os.getpid())
    for _ in range(3):  # a lease may vanish or appear between our look and our create
        old = read(overlay)
        if old is None:
            if _create(overlay, mine):
                return mine
            continue
        if old.holder == me:
            if _ours(old.renewer):
                raise UserError(f"{overlay}: {old.describe()}, which still runs on this host; "
                                f"smsctl stop --name {old.instance} first")
            if _swap(overlay, old, mine):  # our own, left by a crash
                return mine
            continue
        if not take_over:
            raise UserError(f"{overlay}: {old.describe()}; a second writer would corrupt the cluster's "
                            f"state. Stop it there, or, if that host is down, smsctl start --take-over "
                            f"(waits {2 * old.interval + 1:.0f} s to prove its lease has expired)")
        wait = 2 * old.interval + 1
        say(f"{overlay}: {old.describe()}; watching the lease for {wait:.0f} s to prove the holder is gone")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            sleep(min(0.5, interval / 4))
            now = read(overlay)
            if now is None or now.token != old.token or now.seq != old.seq:
                raise UserError(f"{overlay}: the lease of {old.holder} was renewed while we watched: its "
                                "instance is alive; not taking over")
        if _swap(overlay, old, mine):
            say(f"{overlay}: took over the lease of {old.holder}")
            return mine
        raise UserError(f"{overlay}: another host took the lease of {old.holder} first; not taking over")
    raise UserError(f"{overlay}: the lease changed hands while we tried; look at who runs it and try again")


def _swap(overlay: Path, old: Lease, mine: Lease) -> bool:
    """Replace exactly ``old`` by ``mine``: move what is there aside under a name of our own
    (one rename: of two takers, only one moves any given lease), and go on only if what we
    moved is ``old``; anything else goes back where it was."""
    path = lease_path(overlay)
    aside = path.with_name(f".{path.name}.aside-{secrets.token_hex(6)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        moved = _read_path(aside)
    except UserError:
        moved = None
    if moved is None or moved.token != old.token or moved.seq != old.seq:
        os.rename(aside, path)  # someone else's: put it back
        return False
    os.unlink(aside)
    return _create(overlay, mine)


def _still_mine(overlay: Path, token: str) -> Lease | None:
    try:
        cur = read(overlay)
    except UserError:
        return None
    return cur if cur is not None and cur.token == token else None


def release(overlay: Path, token: str) -> bool:
    """Remove the lease if it is still ours (a clean stop); stop its renewer."""
    old = _still_mine(overlay, token)
    if old is None:
        return False
    if old.renewer and old.holder == host_id() and _ours(old.renewer) and old.renewer != os.getpid():
        os.kill(old.renewer, signal.SIGTERM)
    lease_path(overlay).unlink(missing_ok=True)
    return True


def renewer_gone(overlay: Path, token: str, wait: float = 2 * INTERVAL,
                 sleep: Callable[[float], None] = time.sleep) -> bool:
    """No live renewer of this host holds ``token`` any more. A renewer notices its
    instance's death within one interval, so one that lives on past ``wait`` watches a
    live instance process, whatever else said it was gone."""
    deadline = time.monotonic() + wait
    while True:
        cur = _still_mine(overlay, token)
        if cur is None or cur.holder != host_id() or not _ours(cur.renewer) or cur.renewer == os.getpid():
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(0.25)


def renew_once(overlay: Path, token: str) -> bool:
    """Bump the sequence; False if the lease is no longer ours."""
    cur = _still_mine(overlay, token)
    if cur is None:
        return False
    cur.seq += 1
    cur.renewed = time.time()
    cur.renewer = os.getpid()
    _write(overlay, cur)
    return True


def renew(overlay: Path, token: str, watched: int, interval: float, on_lost: Callable[[], None]) -> None:
    """Until the watched process (the instance) exits: renew; if the lease is lost, ``on_lost``.

    A renewal that cannot be written (a full disk, a storage hiccup) is retried; once a
    whole interval has passed without one, another host may already be watching the lease
    run out, so the instance is given up rather than risk two writers."""
    last_ok = time.monotonic()
    while _alive(watched):
        try:
            # A taker needs two intervals (and a second) of silence: stalled for nearly
            # that long, a late write could land on its new lease, so stop instead.
            if time.monotonic() - last_ok > 1.8 * interval or not renew_once(overlay, token):
                on_lost()
                return
            last_ok = time.monotonic()
        except OSError:
            if time.monotonic() - last_ok > interval:
                on_lost()
                return
            time.sleep(min(1.0, interval / 4))
            continue
        time.sleep(interval)
    # The instance is gone without a clean stop (a crash): the lease stays, unrenewed, so
    # this host reclaims it at the next start and another host needs --take-over.


def require_free(overlay: Path, what: str) -> None:
    """For the commands that write an overlay without starting it (init --force, restore,
    overlay check/repair/grow): no instance anywhere may hold it."""
    held = read(overlay)
    if held is not None and not (held.holder == host_id() and not _ours(held.renewer)):
        raise UserError(f"{overlay}: {held.describe()}; stop it before you {what}")


def spawn_renewer(overlay: Path, lease: Lease, watched: int, instance: str, apptainer: str = "apptainer") -> int:
    """The renewer, detached from smsctl (which exits) but not from the service's cgroup."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sms_services.runtime.lease", str(overlay), lease.token, str(watched),
         str(lease.interval), instance],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "SMS_APPTAINER": apptainer, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    # Record the renewer at once, so a start racing this one sees a live holder.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cur = read(overlay)
        if cur is not None and cur.token == lease.token and cur.renewer == proc.pid:
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise UserError(f"{lease_path(overlay)}: the lease renewer did not start; not running without a lease")


def _main(argv: list[str]) -> int:
    overlay, token, watched, interval, instance = Path(argv[0]), argv[1], int(argv[2]), float(argv[3]), argv[4]

    def lost() -> None:
        # Someone took over: this instance must stop writing now, not at its next clean stop.
        apptainer = os.environ.get("SMS_APPTAINER", "apptainer")
        subprocess.run([apptainer, "instance", "stop", "--signal", "SIGKILL", instance],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean stop released the lease
    renew(overlay, token, watched, interval, lost)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
