"""The node farm's plan: which nodes are instances, which are farm slurmd, and their site."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.lab.farm import farm_nodes, scale_nodes, scale_site_text

ROOT = Path(__file__).resolve().parents[2]
LAB_SITE = ROOT / "overlays/lab/site.yaml"


def _base() -> list[dict]:
    return yaml.safe_load(LAB_SITE.read_text())["nodes"]


def test_scale_nodes_keeps_the_lab_nodes_first_and_numbers_the_rest() -> None:
    nodes = scale_nodes(_base(), "198.18.0.0/21", 450)
    assert [n["name"] for n in nodes[:3]] == ["c1", "c2", "f001"]
    assert nodes[-1] == {"name": "f448", "address": "198.18.2.191", "cpus": 1, "memory": 1000}
    assert len({n["address"] for n in nodes}) == len({n["name"] for n in nodes}) == 450


def test_a_network_too_small_is_one_line() -> None:
    with pytest.raises(UserError, match="too small for 450 nodes"):
        scale_nodes(_base(), "198.18.0.0/24", 450)


def test_farm_nodes_splits_at_job_nodes() -> None:
    full, farmed = farm_nodes(scale_nodes(_base(), "198.18.0.0/21", 10), 2)
    assert [n["name"] for n in full] == ["c1", "c2"]
    assert [n.name for n in farmed][:2] == ["f001", "f002"] and len(farmed) == 8


def test_the_scale_site_passes_the_site_checks_and_lists_every_node(tmp_path: Path) -> None:
    project = Project(ROOT)
    variant = project.matrix.get(project.matrix.default).variant("debian")
    frags = project.ordered(variant)
    site = tmp_path / "site.yaml"
    site.write_text(scale_site_text(LAB_SITE.read_text(), scale_nodes(_base(), "198.18.0.0/21", 450),
                                    "198.18.0.0/21"))
    loaded = load_site(site, frags, list(project.fragments.values()))
    conf = render_site(loaded, frags, project.matrix.default)["/etc/slurm/slurm.conf"]
    assert conf.count("NodeName=") == 450
    assert "NodeName=f448 NodeAddr=198.18.2.191" in conf


def test_rehearse_job_nodes_must_be_a_positive_number() -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "rehearse", "--to", "3.5", "--from", "3.5",
                        "--overlay", "/nonexistent", "--job-nodes", "0"], capture_output=True, text=True, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(ROOT), "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "--job-nodes: '0': give a whole number of at least 1" in p.stderr
    assert "Traceback" not in p.stderr


def test_the_rehearsal_report_names_full_and_simulated_nodes() -> None:
    from sms_services.lab.rehearse import Rehearsal

    r = Rehearsal("old.sif", "new.sif", "live.img", instance_nodes=["c1", "c2"], farm_nodes=["f001"])
    assert r.to_dict()["farm_nodes"] == ["f001"] and r.to_dict()["instance_nodes"] == ["c1", "c2"]


def test_loadgen_refuses_bad_arguments_in_one_line() -> None:
    from sms_services.lab import loadgen

    assert loadgen.main(["flood", "198.18.0.2", "1", "1", "x"]) == 2
    assert loadgen.main(["ntp"]) == 2


def test_percentiles_and_the_load_table() -> None:
    import importlib.util

    from rich.console import Console

    from sms_services.lab.load import pct

    assert pct([], 50) is None
    assert pct([float(i) for i in range(1, 101)], 50) == 51.0 and pct([1.0, 9.0], 99) == 9.0
    spec = importlib.util.spec_from_file_location("loadtool", ROOT / "tools/load.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = {"release": "3.5", "nodes": 450, "job_nodes": 2, "jobs": 10,
              "lab": {"start_to_all_idle_s": 40, "farm": {"pss_per_node_mib": 2.5, "rss_per_node_mib": 10}},
              "cutover_empty_queue": {"gap_median_s": 1.0, "gap_max_s": 2.0, "jobs_lost": 0},
              "syslog": {"udp": {"senders": 448, "sent": 10, "per_s": 5.0, "received_per_s": 4.0, "lost": 1,
                                 "loss_pct": 10.0}}}
    console = Console(record=True, width=200)
    console.print(tool.table(result))
    text = console.export_text()
    assert "1.0 / 2.0 s, 0" in text and "1 of 10 lost (10.0 %)" in text
