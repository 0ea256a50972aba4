"""The node farm's plan: which nodes are instances, which are farm slurmd, and their site."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.lab.farm import FARM_SH, farm_nodes, scale_nodes, scale_site_text

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


def test_each_farm_node_gets_its_own_spool_and_run_folder() -> None:
    # slurmd kills the process its pid file names: a shared /run would let node 2 end node 1.
    assert "farm-run /run" in FARM_SH and "farm-spool /var/spool/slurmd" in FARM_SH
    assert 'nsenter --net="/farm/netns/$lab-$name" unshare -m' in FARM_SH
