"""Site files: every value held to its fragment's type, one line per problem (issue 10, item 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sms_services.errors import UserError
from sms_services.inputs.fragment import load_fragment
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.inputs.sitetypes import SiteType, parse_type

ROOT = Path(__file__).resolve().parents[2]
LAB = yaml.safe_load((ROOT / "overlays/lab/site.yaml").read_text())


def _site(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({**LAB, **changes}))
    return path


def _load(project: Project, path: Path, release: str = "4.1"):
    frags = project.sms_fragments(release)
    return load_site(path, frags, list(project.fragments.values()))


@pytest.mark.parametrize("site", ["overlays/lab/site.yaml", "overlays/example/site.yaml"])
@pytest.mark.parametrize("release", ["3.0", "3.5", "4.1"])
def test_the_checked_in_sites_load(project: Project, site: str, release: str) -> None:
    files = render_site(_load(project, ROOT / site, release), project.sms_fragments(release), release)
    assert "/etc/slurm/slurm.conf" in files


# The injections the review reproduced, and their neighbours.
@pytest.mark.parametrize("field,value,where,expect", [
    ("mail_relay", "[smtp.example.org]:25\nmynetworks = 0.0.0.0/0", "mail_relay", "a relay like"),
    ("syslog_forward", 'x" template="t") action(type="omprog" binary="/bin/sh', "syslog_forward", "host:port"),
    ("syslog_forward", "splunk.example.org:99999", "syslog_forward", "port 1-65535"),
    ("slurmd_timeout", "300\nSlurmUser=root", "slurmd_timeout", "an integer from 1 to 65533"),
    ("slurmd_timeout", 0, "slurmd_timeout", "an integer from 1 to 65533"),
    ("slurmd_timeout", True, "slurmd_timeout", "an integer"),
    ("nodes", [{"name": "c1\nSlurmUser=root", "address": "198.18.0.11"}], "nodes[0].name", "a host name"),
    ("nodes", [{"name": "c1", "address": "198.18.0.11 Weight=0"}], "nodes[0].address", "an IP address"),
    ("nodes", [{"name": "c1", "address": "198.18.0.11", "cpus": "1 State=DOWN"}], "nodes[0].cpus",
     "a positive integer"),
    ("nodes", [{"name": "c1", "address": "198.18.0.11", "features": "gpu"}], "nodes[0].features", "absent"),
    ("nodes", [{"name": "c1"}], "nodes[0].address", "needs a name and an address"),
    ("nodes", {"name": "c1"}, "nodes", "a list of a node"),
    ("cluster_name", "lab\nSlurmUser=root", "cluster_name", "one word"),
    ("partition", "normal Nodes=c1", "partition", "one word"),
    ("sms_hostname", "sms-services(1.2.3.4)", "sms_hostname", "a host name"),
    ("mail_domain", "lab.cluster\nrelayhost = evil", "mail_domain", "a DNS domain"),
    ("provision_ip", "fe80::1%eth0\nx", "provision_ip", "an IP address"),  # an IPv6 scope id takes anything
    ("provision_network", "198.18.0.1/24", "provision_network", "host bits zero"),
    ("public_interface", "eth1 -j ACCEPT", "public_interface", "an interface name"),
    ("ntp_servers", ["pool.ntp.org iburst\nallow all"], "ntp_servers[0]", "a host name or an IP address"),
    ("ntp_servers", "pool.ntp.org", "ntp_servers", "a list of"),
    ("cgroup_plugin", "cgroup/v3", "cgroup_plugin", "one of autodetect, cgroup/v1, cgroup/v2"),
    ("wwclient_wwid", 1234567, "wwclient_wwid", "quoted in YAML"),  # YAML 1.1 reads 52:54:00... as a number
    ("wwclient_port", "9873", "wwclient_port", "an integer from 1 to 65535"),
    ("wwclient_secure", "yes please", "wwclient_secure", "true or false"),
    ("wwclient_protocol", "ww5", "wwclient_protocol", "one of ww3"),
])
def test_a_bad_value_is_one_line_naming_file_and_field(project: Project, tmp_path: Path, field: str,
                                                       value: Any, where: str, expect: str) -> None:
    path = _site(tmp_path, **{field: value})
    with pytest.raises(UserError) as e:
        _load(project, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: field '{where}' must be ") and expect in msg, msg
    assert "\n" not in msg


def test_a_secret_is_never_echoed(project: Project, tmp_path: Path) -> None:
    path = _site(tmp_path, slurmdbd_password="hunter2 with spaces")
    with pytest.raises(UserError) as e:
        _load(project, path)
    assert "field 'slurmdbd_password'" in str(e.value) and "hunter2" not in str(e.value)


@pytest.mark.parametrize("changes,expect", [
    ({"public_ip": "198.18.0.2"}, "field 'public_ip' 198.18.0.2 is outside public_network 198.19.0.0/24"),
    ({"provision_ip": "10.0.0.2"}, "field 'provision_ip' 10.0.0.2 is outside provision_network"),
    ({"nodes": [{"name": "c1", "address": "10.9.9.9"}]}, "field 'nodes[0].address' 10.9.9.9 is outside"),
    ({"wwclient_server": "198.19.0.3"}, "field 'wwclient_server' 198.19.0.3 is outside provision_network"),
    ({"nodes": [{"name": "c1", "address": "198.18.0.11"}, {"name": "C1", "address": "198.18.0.12"}]},
     "field 'nodes[1].name' C1 is also nodes[0]'s"),
    ({"nodes": [{"name": "c1", "address": "198.18.0.11"}, {"name": "c2", "address": "198.18.0.11"}]},
     "field 'nodes[1].address' 198.18.0.11 is also nodes[0]'s"),
    ({"nodes": [{"name": "c1", "address": "198.18.0.2"}]}, "field 'nodes[0].address' 198.18.0.2 is also provision_ip's"),
])
def test_cross_field_checks(project: Project, tmp_path: Path, changes: dict[str, Any], expect: str) -> None:
    with pytest.raises(UserError, match=r"^[^\n]*$") as e:
        _load(project, _site(tmp_path, **changes))
    assert expect in str(e.value)


@pytest.mark.parametrize("spec,value,ok", [
    ({"type": "relay"}, "[smtp.example.org]:25", True),
    ({"type": "relay"}, "smtp.example.org", True),
    ({"type": "relay"}, "[198.51.100.1]", True),
    ({"type": "relay"}, "smtp.example.org:0", False),
    ({"type": "relay"}, "smtp.example.org\n", False),  # re's '$' would let a trailing newline through
    ({"type": "host:port"}, "splunk.example.org", True),
    ({"type": "address"}, "2001:db8::1", True),
    ({"type": "address"}, "198.18.0.256", False),
    ({"type": "network"}, "2001:db8::/32", True),
    ({"type": "network"}, "10.0.0.0/255.0.0.0", False),
    ({"type": "word"}, "p@ss;w0rd=$x", True),
    ({"type": "word"}, "it's", False),
    ({"type": "integer", "min": 1}, 1, True),
    ({"type": "integer", "max": 5}, 6, False),
    ({"type": "list of host"}, ["ntp.example.org", "192.0.2.1"], True),
    ({"type": "mac", "empty": True}, "", True),
    ({"type": "mac"}, "", False),
    ({"type": "path"}, "/etc/warewulf/tls/warewulf.crt", True),
    ({"type": "path"}, "etc/warewulf.crt", False),
    ({"type": "path"}, "/etc/../shadow", False),
    ({"type": "path"}, "/etc/./x", False),
    ({"type": "path"}, "/etc/x\n/y", False),
    ({"type": "path"}, "/etc/my cert.pem", False),
    ({"type": "file"}, "../slurm/slurm.conf", True),
    ({"type": "file"}, "/etc/slurm/slurm.conf", True),
    ({"type": "file"}, "slurm.conf\nx", False),
    ({"type": "file"}, "slurm/", False),
])
def test_types(spec: dict[str, Any], value: Any, ok: bool) -> None:
    assert (parse_type(spec["type"], spec).problem(value) is None) is ok


@pytest.mark.parametrize("spec,expect", [
    ({}, "must name a type"),
    ({"type": "string"}, "unknown type 'string'"),
    ({"type": "name", "min": 1}, "min and max belong to an integer"),
    ({"type": "choice"}, "needs 'choices'"),
    ({"type": "choice", "choices": ["a b"]}, "needs 'choices'"),
    ({"type": "integer", "empty": "yes"}, "empty must be true or false"),
])
def test_bad_type_declarations(spec: dict[str, Any], expect: str) -> None:
    with pytest.raises(ValueError, match=expect):
        parse_type(spec.get("type"), spec)


@pytest.mark.parametrize("old,new,expect", [
    ("cluster_name: {type: name, default: cluster,", "cluster_name: {default: cluster,",
     "field 'site.cluster_name.type' must name a type"),
    ("cluster_name: {type: name, default: cluster,", "cluster_name: {type: text, default: cluster,",
     "field 'site.cluster_name.type' names unknown type 'text'"),
    ("cluster_name: {type: name, default: cluster,", "cluster_name: {type: name, default: 'a b',",
     "field 'site.cluster_name.default' must be one word"),
    ("cluster_name: {type: name,", "Cluster-Name: {type: name,", "field 'site.Cluster-Name' must be a lower-case"),
])
def test_check_refuses_a_site_variable_without_a_valid_type(scratch: Path, old: str, new: str,
                                                            expect: str) -> None:
    meta = scratch / "defs/base/fragment.yaml"
    assert old in meta.read_text()
    meta.write_text(meta.read_text().replace(old, new))
    with pytest.raises(UserError, match=r"^[^\n]*$") as e:
        load_fragment(scratch / "defs/base")
    assert expect in str(e.value)
    p = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "check"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(scratch), "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and expect in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_every_declared_variable_has_a_type(project: Project) -> None:
    for frag in project.fragments.values():
        for var in frag.site:
            assert isinstance(var.type, SiteType) and var.type.spec, (frag.name, var.name)


def test_the_site_schema_agrees_with_the_types(project: Project, tmp_path: Path) -> None:
    schema = json.loads((ROOT / "docs/site.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for site in ("overlays/lab/site.yaml", "overlays/example/site.yaml"):
        assert not list(validator.iter_errors(yaml.safe_load((ROOT / site).read_text()))), site
    for bad in ({"mail_relay": "x\nmynetworks = 0.0.0.0/0"}, {"slurmd_timeout": 0},
                {"nodes": [{"name": "c1\nx", "address": "198.18.0.11"}]}, {"provision_ip": "1.2.3"}):
        assert list(validator.iter_errors({**LAB, **bad})), bad


def test_site_vars_show_the_type() -> None:
    p = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "site", "vars", "--json"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(ROOT), "PYTHONPATH": str(ROOT)})
    types = {v["name"]: v["type"] for v in json.loads(p.stdout)}
    assert types["mail_relay"] == "relay or empty" and types["nodes"] == "list of node"
    assert types["slurmd_timeout"] == "integer 1-65533"
    p = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "site", "vars"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(ROOT), "PYTHONPATH": str(ROOT),
                            "COLUMNS": "300"})
    assert "[host]:port" in p.stdout and "list of host" in p.stdout  # the doc's brackets are not markup


def test_site_check_refuses_an_injected_line(tmp_path: Path) -> None:
    path = _site(tmp_path, mail_relay="[smtp.example.org]:25\nmynetworks = 0.0.0.0/0")
    p = subprocess.run([sys.executable, "-m", "sms_services.cli.main", "site", "check", str(path)],
                       capture_output=True, text=True, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(ROOT), "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "field 'mail_relay'" in p.stderr, p.stderr


@pytest.mark.parametrize("node", [{"name": "c1", "address": "198.18.0.11", "a.b": 1},
                                  {"name": "c1", "address": "198.18.0.11", "x[1": 1},
                                  {"name": "c1", "address": "198.18.0.11", 7: "x"},
                                  {"name": "c1", "address": "198.18.0.11", "k\nSlurmUser=root": 1}])
def test_a_strange_node_key_is_one_line(project: Project, tmp_path: Path, node: dict) -> None:
    with pytest.raises(UserError) as e:
        _load(project, _site(tmp_path, nodes=[node]))
    assert "\n" not in str(e.value) and "field 'nodes[0]." in str(e.value) and "must be absent" in str(e.value)
