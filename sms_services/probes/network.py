"""Network services seen from a compute node and from the public side: syslog, NTP, mail, NAT, exposure."""

from __future__ import annotations

import secrets
import time

from sms_services.probes.registry import PUBLIC_HOST, Cluster, Param, ProbeFailed, kind, ok, py

# Connected: a chronyd not yet listening is reported at once (ICMP port unreachable ->
# ConnectionRefusedError) instead of after the whole timeout, so the retry comes sooner.
NTP_QUERY = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], 123))
s.send(b"\x23" + 47 * b"\0")
data = s.recv(512)
li, mode, stratum = data[0] >> 6, data[0] & 7, data[1]
secs, frac = struct.unpack("!II", data[40:48])
offset = secs - 2208988800 + frac / 2**32 - time.time()
print(f"leap={li} mode={mode} stratum={stratum} offset={offset:.3f}")
sys.exit(0 if mode == 4 and li != 3 and 0 < stratum < 16 and abs(offset) < 5 else 1)
"""

SMTP_SEND = r"""
import smtplib, sys
host, rcpt, token = sys.argv[1:4]
msg = f"From: slurm@{sys.argv[4]}\r\nTo: {rcpt}\r\nSubject: Slurm Job_id=0 Name=probe Ended\r\n\r\n{token}\r\n"
with smtplib.SMTP(host, 25, timeout=10) as s:
    s.sendmail(f"slurm@{sys.argv[4]}", [rcpt], msg)
print("accepted")
"""

PORTS_OPEN = r"""
import socket, sys, threading
open_ = []
def knock(port):
    try:
        socket.create_connection((sys.argv[1], int(port)), timeout=1).close()
        open_.append(port)
    except OSError:
        pass
knocks = [threading.Thread(target=knock, args=(p,)) for p in sys.argv[2:]]
for t in knocks: t.start()
for t in knocks: t.join()
print(" ".join(sorted(open_, key=int)))
"""

RELAY_TRY = r"""
import smtplib, socket, sys
try:
    s = smtplib.SMTP(sys.argv[1], 25, timeout=5)
except (ConnectionRefusedError, socket.timeout, OSError) as e:
    print(f"refused: no SMTP on the public address ({e.__class__.__name__})"); sys.exit(0)
s.ehlo("outside.example")
s.mail("spammer@outside.example")
code, text = s.rcpt("victim@elsewhere.example")
s.quit()
print(f"RCPT answered {code} {text.decode(errors='replace')}")
sys.exit(0 if code >= 500 else 1)
"""

WHOAMI = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(100).decode().strip())
"""


@kind("syslog-roundtrip", params={"proto": Param("transport the message is sent over", ("udp", "tcp"),
                                                  required=True)})
def syslog_roundtrip(c: Cluster, p: dict) -> str:
    """A message logged on a compute node arrives, with its hostname, in the central log."""
    proto = str(p["proto"])
    node = c.nodes[0]
    token = f"sms-probe-{proto}-{secrets.token_hex(6)}"
    flag = "--udp" if proto == "udp" else "--tcp"
    ok(c.on_node(node, ["logger", "--server", c.sms_ip, "--port", "514", flag, "--rfc3164",
                        "-t", "probe", token]), f"logger over {proto}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rc, out, _ = c.on_sms(["grep", "-F", token, "/var/log/cluster/messages"])
        if rc == 0:
            if node not in out.split():
                raise ProbeFailed(f"message over {proto} arrived without hostname {node}: {out.strip()}")
            return f"message over {proto} from {node} in /var/log/cluster/messages"
        time.sleep(0.2)
    raise ProbeFailed(f"message over {proto} from {node} not in the central log")


@kind("ntp-query")
def ntp_query(c: Cluster, p: dict) -> str:
    """An NTP query from a compute node gets a synchronised server answer (stratum 1-15, offset < 5 s)."""
    return ok(c.on_node(c.nodes[0], py(NTP_QUERY, c.sms_ip)), "NTP query").strip()


@kind("smtp-deliver")
def smtp_deliver(c: Cluster, p: dict) -> str:
    """Mail sent over SMTP from a compute node is delivered to a local mailbox on SMS-services."""
    token = f"sms-probe-mail-{secrets.token_hex(6)}"
    rcpt = f"slurm@{c.mail_domain}"
    ok(c.on_node(c.nodes[0], py(SMTP_SEND, c.sms_ip, rcpt, token, c.nodes[0])), "SMTP dialogue")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if c.on_sms(["grep", "-rqF", token, "/var/mail/"])[0] == 0:
            return f"job-notification mail to {rcpt} delivered"
        time.sleep(0.3)
    raise ProbeFailed(f"mail to {rcpt} accepted but not delivered to /var/mail")


@kind("smtp-no-relay", needs={PUBLIC_HOST})
def smtp_no_relay(c: Cluster, p: dict) -> str:
    """A host on the public side cannot relay mail through SMS-services."""
    return ok(c.on_public(py(RELAY_TRY, c.sms_public_ip)), "relay attempt from the public side").strip()


@kind("nat-route", needs={PUBLIC_HOST})
def nat_route(c: Cluster, p: dict) -> str:
    """A compute node reaches the public host, masqueraded as SMS-services' public address."""
    seen = ok(c.on_node(c.nodes[0], py(WHOAMI, c.public_host_ip, "8080")),
              f"connection from {c.nodes[0]} to the public host").strip()
    if seen != c.sms_public_ip:
        raise ProbeFailed(f"public host saw source {seen}, not SMS-services' public {c.sms_public_ip}")
    return f"{c.nodes[0]} -> {c.public_host_ip} masqueraded as {seen}"


@kind("public-closed", needs={PUBLIC_HOST})
def public_closed(c: Cluster, p: dict) -> str:
    """Every TCP port a fragment serves on the provisioning network or loopback is closed to the public side.

    slurmctld or syslog answering there is an exposure.
    """
    ports = sorted({str(port.port) for f in c.sms_fragments for port in f.ports
                    if port.proto == "tcp" and port.network != "public"}, key=int)
    seen = ok(c.on_public(py(PORTS_OPEN, c.sms_public_ip, *ports)), "connections from the public side").split()
    if seen:
        what = {str(port.port): port.what for f in c.sms_fragments for port in f.ports}
        raise ProbeFailed("open to the public network on " + c.sms_public_ip + ": " +
                          ", ".join(f"{p}/tcp ({what[p]})" for p in seen))
    return f"{', '.join(ports)}/tcp closed to the public network"
