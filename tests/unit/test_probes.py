"""The probe registry: kinds declare parameters and needs; fragments name real kinds; every probe can fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sms_services.image.checks import check_all
from sms_services.inputs.fragment import Probe
from sms_services.inputs.project import Project
from sms_services.probes import KINDS, NEEDS, probe_name, probe_problems
from sms_services.probes.registry import runnable


def _findings(scratch: Path) -> list[str]:
    return [str(f) for f in check_all(Project(scratch))]


def test_a_probe_kind_typo_is_refused_by_check(scratch: Path) -> None:
    meta = scratch / "defs/chrony/fragment.yaml"
    meta.write_text(meta.read_text().replace("{kind: ntp-query}", "{kind: ntp-qeury}"))
    assert any("defs/chrony/fragment.yaml: probes[0]: unknown probe kind 'ntp-qeury'" in f
               for f in _findings(scratch))


@pytest.mark.parametrize("old,new,expect", [
    ("{kind: syslog-roundtrip, proto: udp}", "{kind: syslog-roundtrip, proto: sctp}",
     "probe syslog-roundtrip: proto is 'sctp', expected udp or tcp"),
    ("{kind: syslog-roundtrip, proto: udp}", "{kind: syslog-roundtrip}",
     "probe syslog-roundtrip: parameter 'proto' is required"),
    ("{kind: syslog-roundtrip, proto: udp}", "{kind: syslog-roundtrip, proto: udp, port: 515}",
     "probe syslog-roundtrip: unknown parameter 'port' (known: proto)"),
])
def test_a_bad_probe_parameter_is_refused_by_check(scratch: Path, old: str, new: str, expect: str) -> None:
    meta = scratch / "defs/rsyslog/fragment.yaml"
    meta.write_text(meta.read_text().replace(old, new))
    assert any(expect in f for f in _findings(scratch)), _findings(scratch)


def test_a_break_naming_a_probe_of_another_service_is_refused(scratch: Path) -> None:
    meta = scratch / "defs/chrony/fragment.yaml"
    meta.write_text(meta.read_text().replace("fails: [ntp-query]", "fails: [slurm-ping]"))
    assert any("breaks 'stopped': fails names 'slurm-ping', which is not a probe of chrony" in f
               for f in _findings(scratch))


def test_every_probe_of_every_fragment_is_failed_by_one_of_its_breaks(project: Project) -> None:
    """The negative integration tests run each fragment's breaks; a probe no break fails
    would be a probe no test proves able to fail."""
    unbroken = [f"{frag.name}: {probe_name(p)}" for frag in project.fragments.values() for p in frag.probes
                if not any(probe_name(p) in b.fails for b in frag.breaks)]
    assert unbroken == []


def test_every_kind_is_documented_and_its_needs_are_known() -> None:
    for k in KINDS.values():
        assert k.doc, k.name
        assert k.needs <= set(NEEDS), k.name


def test_what_a_target_provides_decides_what_runs() -> None:
    srun, nat, ping = Probe("slurm-srun", {}), Probe("nat-route", {}), Probe("slurm-ping", {})
    assert runnable(ping, frozenset()) and not runnable(srun, frozenset()) and not runnable(nat, frozenset())
    assert runnable(srun, frozenset({"idle-nodes"})) and runnable(nat, frozenset(NEEDS))


def test_a_switched_probe_runs_only_where_the_site_turned_it_on() -> None:
    metrics = Probe("slurm-metrics", {}, when="slurm_metrics")
    assert not runnable(metrics, frozenset(NEEDS))  # no site values: no switch is on
    assert not runnable(metrics, frozenset(NEEDS), {"slurm_metrics": False})
    assert runnable(metrics, frozenset(), {"slurm_metrics": True})


def test_probe_problems_of_a_good_probe_are_none() -> None:
    assert probe_problems(Probe("process", {"name": "mariadbd"})) == []
    assert probe_problems(Probe("process", {})) != []


class _Scraped:
    """A target whose compute node fetches what slurmctld would serve."""

    def __init__(self, rc: int, body: str, nodes: int = 2) -> None:
        self.nodes = [f"c{i + 1}" for i in range(nodes)]
        self.sms_ip = "198.18.0.2"
        self.rc, self.body, self.asked = rc, body, []

    def on_node(self, node: str, command: list[str], stdin: str | None = None,
                timeout: float = 30) -> tuple[int, str, str]:
        self.asked.append(command[-1])
        return self.rc, "text/plain\n" + self.body, "urllib.error.URLError: connection refused" if self.rc else ""


NODES = "# HELP slurm_nodes Total number of nodes\n# TYPE slurm_nodes gauge\nslurm_nodes {n}\n"


@pytest.mark.parametrize("rc,body,expect", [
    (0, NODES.format(n=2), None),
    (0, NODES.format(n=1), "/metrics/nodes counts 1 nodes, the site has 2"),
    (0, "# HELP slurm_jobs x\n# TYPE slurm_jobs gauge\nslurm_jobs 0\n", "has no slurm_nodes (families: slurm_jobs)"),
    (0, "<html>not found</html>\n", "not metrics"),
    (1, "", "GET http://198.18.0.2:6817/metrics/nodes exited 1"),
])
def test_slurm_metrics_reads_what_slurmctld_serves(rc: int, body: str, expect: str | None) -> None:
    from sms_services.probes.registry import ProbeFailed
    from sms_services.probes.slurm import slurm_metrics

    target = _Scraped(rc, body)
    if expect is None:
        assert slurm_metrics(target, {}) == "/metrics/nodes: 1 metric families, 2 nodes"  # type: ignore[arg-type]
    else:
        with pytest.raises(ProbeFailed, match=re.escape(expect)):
            slurm_metrics(target, {})  # type: ignore[arg-type]
    assert target.asked == ["http://198.18.0.2:6817/metrics/nodes"]
