"""Every probe can fail: break one service in a running lab, the probes name it.

One lab per release stays up for the whole module (starting one costs seconds,
not minutes): each test breaks one service the way an admin would meet it
(daemon stopped, NAT rule gone, postfix opened up), asserts that the probes
fail naming that service and only that one, then repairs it and asserts they
pass again, so the next test starts from a green lab.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from sms_services.inputs.project import Project
from sms_services.lab.cluster import SUPERVISORCTL, Lab, lab_is_gone
from sms_services.lab.verify import Outcome, open_lab, probe_services

pytestmark = pytest.mark.integration

CTL = SUPERVISORCTL


def _stop(service: str) -> list[list[str]]:
    return [[*CTL, "stop", service]]


def _start(service: str) -> list[list[str]]:
    return [[*CTL, "start", service]]


# service -> (how to break it, how to repair it, which probe must fail); commands run
# on SMS-services. Release 3.5 is the default (trixie); 4.1 (sid) adds the accounting DB.
BREAKS: dict[str, tuple[str, list[list[str]], list[list[str]], str]] = {
    "munge": ("3.5", _stop("munge"), _start("munge"), "munge-roundtrip"),
    "slurmctld": ("3.5", _stop("slurmctld"), _start("slurmctld"), "slurm-ping"),
    "rsyslog": ("3.5", _stop("rsyslog"), _start("rsyslog"), "syslog-roundtrip[proto=udp]"),
    "chrony": ("3.5", _stop("chrony"), _start("chrony"), "ntp-query"),
    "postfix": ("3.5", _stop("postfix"), _start("postfix"), "smtp-deliver"),
    "cron": ("3.5", _stop("cron"), _start("cron"), "cron-heartbeat"),
    "wwclient": ("3.5", _stop("wwclient"), _start("wwclient"), "wwclient-sync"),
    # The masquerade rule flushed (e.g. by a careless firewall reload).
    "nat": ("3.5", [["iptables", "-t", "nat", "-F", "POSTROUTING"]], [[*CTL, "start", "nat"]], "nat-route"),
    "mariadb": ("4.1", _stop("mariadb"), _start("mariadb"), "process[name=mariadbd]"),
    "slurmdbd": ("4.1", _stop("slurmdbd"), _start("slurmdbd"), "slurm-sacct"),
}

# The classic open relay: listening everywhere with mynetworks far too wide, and the
# public side's firewall opened for mail. (Dropping reject_unauth_destination instead
# is refused by smtpd itself, so that is no test.)
OPEN_RELAY = ["postconf", "-e", "inet_interfaces = all", "mynetworks = 0.0.0.0/0"]
SMTP_FROM_PUBLIC = ["INPUT", "-i", "eth1", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"]


@pytest.fixture(scope="module")
def lab(request, apptainer, project: Project) -> Iterator[Lab]:
    """A green lab of the release (the test's parameter), named apart from `smsctl verify`'s own."""
    with open_lab(project, apptainer, request.param, name=f"smstest{request.param.replace('.', '')}") as lab:
        outcome = probe_services(lab, ready_timeout=90)
        assert outcome.ok, f"lab {request.param} is not green before any test: {outcome.failed}"
        yield lab
    assert lab_is_gone(lab.name, apptainer), f"lab {lab.name} left something behind"


def _run(lab: Lab, commands: list[list[str]]) -> None:
    for cmd in commands:
        rc, out, err = lab.on_sms(cmd)
        assert rc == 0, f"{cmd}: {err or out}"


def _fails_naming(outcome: Outcome, service: str, probe: str) -> None:
    assert not outcome.ok
    assert outcome.failed_services == [service], outcome.failed
    failed = [r for r in outcome.results if not r.ok]
    assert probe in [r.probe for r in failed], [r.probe for r in failed]
    assert all(r.detail for r in failed)


@pytest.mark.parametrize("lab,service", [(v[0], k) for k, v in sorted(BREAKS.items())],
                         indirect=["lab"])
def test_a_broken_service_fails_its_probe(lab: Lab, service: str) -> None:
    _, breaks, repair, probe = BREAKS[service]
    _run(lab, breaks)
    try:
        broken = probe_services(lab, only={service}, ready_timeout=4, probe_timeout=4)
        _fails_naming(broken, service, probe)
    finally:
        _run(lab, repair)
    healed = probe_services(lab, only={service}, ready_timeout=60)
    assert healed.ok, f"{service} did not come back: {[(r.probe, r.detail) for r in healed.results if not r.ok]}"


# Breaks that leave slurmctld answering: only its job probes can notice them.
# name -> (how to break, how to repair, the slurmctld probes that must fail)
JOB_BREAKS: dict[str, tuple[list[list[str]], list[list[str]], set[str]]] = {
    "nodes-drained": ([["scontrol", "update", "nodename=c1,c2", "state=drain", "reason=probe-test"]],
                      [["scontrol", "update", "nodename=c1,c2", "state=resume"]],
                      {"slurm-nodes-idle", "slurm-srun", "slurm-sbatch", "slurm-job-mail"}),
    "mail-down": (_stop("postfix"), _start("postfix"), {"slurm-job-mail"}),
}


@pytest.mark.parametrize("lab,case", [("3.5", k) for k in sorted(JOB_BREAKS)], indirect=["lab"])
def test_the_job_probes_fail_when_jobs_cannot_run_or_mail(lab: Lab, case: str) -> None:
    breaks, repair, probes = JOB_BREAKS[case]
    _run(lab, breaks)
    try:
        broken = probe_services(lab, only={"slurmctld"}, ready_timeout=4, probe_timeout=4)
        failed = {r.probe for r in broken.results if not r.ok}
        assert failed == probes, [(r.probe, r.detail) for r in broken.results if not r.ok]
        assert broken.failed_services == ["slurmctld"]
    finally:
        _run(lab, repair)
    healed = probe_services(lab, only={"slurmctld", "postfix"}, ready_timeout=90)
    assert healed.ok, [(r.probe, r.detail) for r in healed.results if not r.ok]


HEARTBEAT = "/run/sms-services/cron-heartbeat"
SYSLOG_TCP_BLOCKED = ["INPUT", "-p", "tcp", "--dport", "514", "-j", "REJECT", "--reject-with", "tcp-reset"]
# Half of a service broken: only the probe of that half may fail, the other half still passes.
# name -> (service, how to break, how to repair, the one probe that must fail, what its detail says)
HALF_BREAKS: dict[str, tuple[str, list[list[str]], list[list[str]], str, str]] = {
    # A firewall rule that lets UDP syslog through but not TCP.
    "syslog-tcp-blocked": ("rsyslog", [["iptables", "-I", *SYSLOG_TCP_BLOCKED]],
                           [["iptables", "-D", *SYSLOG_TCP_BLOCKED]], "syslog-roundtrip[proto=tcp]", "over tcp"),
    # cron runs, but its @reboot jobs never did (e.g. a crontab lost from the overlay).
    "cron-reboot-job-missing": ("cron", [["cp", HEARTBEAT, f"{HEARTBEAT}.saved"], ["rm", HEARTBEAT]],
                                [["mv", f"{HEARTBEAT}.saved", HEARTBEAT]], "cron-heartbeat",
                                "@reboot heartbeat job did not run"),
    # A firewall reload that lost the public side's last rule: slurmctld, syslog... answer there.
    "public-side-open": ("nat", [["iptables", "-D", "INPUT", "-i", "eth1", "-j", "REJECT"]],
                         [[*CTL, "start", "nat"]], "public-closed", "open to the public network"),
}


@pytest.mark.parametrize("lab,case", [("3.5", k) for k in sorted(HALF_BREAKS)], indirect=["lab"])
def test_half_a_service_broken_fails_only_that_probe(lab: Lab, case: str) -> None:
    service, breaks, repair, probe, detail = HALF_BREAKS[case]
    _run(lab, breaks)
    try:
        broken = probe_services(lab, only={service}, ready_timeout=4, probe_timeout=4)
        failed = [r for r in broken.results if not r.ok]
        assert [r.probe for r in failed] == [probe], [(r.probe, r.detail) for r in failed]
        assert detail in failed[0].detail, failed[0].detail
        assert broken.failed_services == [service]
    finally:
        _run(lab, repair)
    healed = probe_services(lab, only={service}, ready_timeout=30)
    assert healed.ok, [(r.probe, r.detail) for r in healed.results if not r.ok]


@pytest.mark.parametrize("lab", ["3.5"], indirect=True)
def test_an_open_relay_fails_the_relay_probe(lab: Lab) -> None:
    saved = lab.on_sms(["cp", "/etc/postfix/main.cf", "/etc/postfix/main.cf.test-saved"])
    assert saved[0] == 0
    _run(lab, [OPEN_RELAY, ["iptables", "-I", *SMTP_FROM_PUBLIC], [*CTL, "restart", "postfix"]])
    try:
        broken = probe_services(lab, only={"postfix"}, ready_timeout=8, probe_timeout=8)
        _fails_naming(broken, "postfix", "smtp-no-relay")
        relay = next(r for r in broken.results if r.probe == "smtp-no-relay")
        assert "RCPT answered 250" in relay.detail
    finally:
        _run(lab, [["iptables", "-D", *SMTP_FROM_PUBLIC],
                   ["mv", "/etc/postfix/main.cf.test-saved", "/etc/postfix/main.cf"],
                   [*CTL, "restart", "postfix"]])
    assert probe_services(lab, only={"postfix"}, ready_timeout=30).ok


def _pid(lab: Lab, program: str) -> int:
    out = lab.on_sms([*CTL, "status", program])[1]
    m = re.search(r"RUNNING\s+pid (\d+)", out)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("lab,program", [("3.5", "slurmctld"), ("3.5", "munge"), ("4.1", "slurmdbd")],
                         indirect=["lab"])
def test_supervisor_restarts_a_killed_daemon(lab: Lab, program: str) -> None:
    deadline = time.monotonic() + 30  # an earlier test may have just restarted it
    while not _pid(lab, program) and time.monotonic() < deadline:
        time.sleep(0.3)
    before = _pid(lab, program)
    assert before, f"{program} not running: {lab.on_sms([*CTL, 'status'])[1]}"
    assert lab.on_sms(["kill", "-KILL", str(before)])[0] == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid(lab, program) in (0, before):
        time.sleep(0.3)
    after = _pid(lab, program)
    assert after not in (0, before), f"supervisord did not restart {program} after SIGKILL"
    healed = probe_services(lab, only={program}, ready_timeout=30)
    assert healed.ok, [(r.probe, r.detail) for r in healed.results if not r.ok]


def test_the_instance_stops_within_five_seconds(apptainer, project: Project) -> None:
    """A stop is part of every cutover's service gap; supervisord must not wait out its ticks.

    A lab of its own: stopping the shared one would break the tests that pytest orders after it.
    """
    with open_lab(project, apptainer, "3.5", name="smsstop35") as lab:
        assert probe_services(lab, only={"slurmctld"}, ready_timeout=60).ok
        seconds = lab.stop_sms()
        assert seconds < 5, f"instance stop took {seconds} s"
        assert lab.sms_instance not in lab.running_instances()
    assert lab_is_gone("smsstop35", apptainer)
