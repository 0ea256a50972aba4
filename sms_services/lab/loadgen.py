"""Load from many node addresses at once, in one process: syslog (TCP, UDP) and NTP.

Run as root on the lab's host: ``python -m sms_services.lab.loadgen KIND SERVER SECONDS COUNT NETNS...``
(syslog stops after COUNT messages in all, or SECONDS; NTP runs SECONDS).
For each named network namespace (a farm node's) the process enters it, opens its
socket there (a socket stays in the namespace it was made in) and comes back, so
one process speaks from hundreds of source addresses. Prints one JSON object.

* ``syslog-tcp``: one connection per node, messages as fast as the kernel takes them;
* ``syslog-udp``: one datagram socket per node, as fast as this one process sends;
* ``ntp``: one client per node, queries in flight per client: answers per second.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import selectors
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def sockets_in(namespaces: list[str], make) -> list[socket.socket]:
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    out = []
    try:
        for ns in namespaces:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                _setns(fd)
                out.append(make())
            finally:
                os.close(fd)
                _setns(home)
    finally:
        os.close(home)
    return out


def syslog_tcp(server: str, seconds: float, count: int, namespaces: list[str]) -> dict:
    token = "load" + secrets.token_hex(4)

    def make() -> socket.socket:
        s = socket.create_connection((server, 514), timeout=10)
        s.setblocking(False)
        return s

    socks = sockets_in(namespaces, make)
    sel = selectors.DefaultSelector()
    counters = {}
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_WRITE, i)
        counters[i] = [0, b""]  # messages fully sent, pending bytes
    quota = -(-count // max(len(socks), 1))
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and sel.get_map():
        for key, _ in sel.select(timeout=0.5):
            i = key.data
            c = counters[i]
            if not c[1] and c[0] >= quota:
                sel.unregister(key.fileobj)
                continue
            if not c[1]:
                # Batches of 20 LF-framed messages per send: fewer syscalls, same framing.
                c[1] = b"".join(f"<14>node{i} load: {token} {i} {c[0] + k}\n".encode() for k in range(20))
            try:
                n = key.fileobj.send(c[1])
            except BlockingIOError:
                continue
            c[1] = c[1][n:]
            if not c[1]:
                c[0] += 20
    # Whatever is half sent is finished so every counted message is whole.
    for i, s in enumerate(socks):
        s.setblocking(True)
        if counters[i][1]:
            s.sendall(counters[i][1])
            counters[i][0] += 20
        s.close()
    elapsed = time.monotonic() - t0
    sent = sum(c[0] for c in counters.values())
    return {"token": token, "senders": len(socks), "sent": sent, "seconds": round(elapsed, 2),
            "per_s": round(sent / elapsed, 1)}


def syslog_udp(server: str, seconds: float, count: int, namespaces: list[str]) -> dict:
    token = "load" + secrets.token_hex(4)

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((server, 514))
        return s

    socks = sockets_in(namespaces, make)
    sent = 0
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds and sent < count:
        for i, s in enumerate(socks):
            try:
                s.send(f"<14>node{i} load: {token} {i} {n}".encode())
                sent += 1
            except OSError:
                pass
        n += 1
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    return {"token": token, "senders": len(socks), "sent": sent, "seconds": round(elapsed, 2),
            "per_s": round(sent / elapsed, 1)}


def ntp(server: str, seconds: float, count: int, namespaces: list[str]) -> dict:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((server, 123))
        s.setblocking(False)
        return s

    socks = sockets_in(namespaces, make)
    sel = selectors.DefaultSelector()
    query = b"\x23" + 47 * b"\0"
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
        s.send(query)
    answered, sent = 0, len(socks)
    last_sent = {i: time.monotonic() for i in range(len(socks))}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(512)
            except OSError:
                continue
            if len(data) >= 48 and data[0] & 7 == 4:
                answered += 1
            key.fileobj.send(query)
            sent += 1
            last_sent[key.data] = time.monotonic()
        now = time.monotonic()
        for i, s in enumerate(socks):  # a lost query: ask again after a second
            if now - last_sent[i] > 1:
                s.send(query)
                sent += 1
                last_sent[i] = now
    elapsed = time.monotonic() - t0
    return {"senders": len(socks), "sent": sent, "answered": answered, "seconds": round(elapsed, 2),
            "per_s": round(answered / elapsed, 1)}


KINDS = {"syslog-tcp": syslog_tcp, "syslog-udp": syslog_udp, "ntp": ntp}


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[0] not in KINDS:
        print(f"usage: loadgen {{{','.join(KINDS)}}} SERVER SECONDS COUNT NETNS...", file=sys.stderr)
        return 2
    print(json.dumps(KINDS[argv[0]](argv[1], float(argv[2]), int(argv[3]), argv[4:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
