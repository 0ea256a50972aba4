"""The Pacemaker configuration of an HA pair, as cibadmin XML (``smsctl ha config``).

Admins read what they apply, so the output is Pacemaker's own format, not ours:
the ``<configuration>`` sections cibadmin takes (``crm_config``, ``resources``,
``constraints``), each applied with ``cibadmin --modify --allow-create``, which
adds or updates the objects by id and leaves everything else in the CIB alone.

What it holds:
- fencing on (``stonith-enabled=true``) and one fencing device per host, never
  run on the host it fences; ``priority-fencing-delay`` with the resource's
  ``priority``, so that in a split the host running SMS-services wins the fencing race;
- the ``ocf:sms-services:instance`` resource (ha/ocf/sms-services/instance) with
  its parameters, a start timeout as long as the boot unit's (an e2fsck of a large
  overlay), a monitor that restarts a hung controller, and stickiness so that a
  host coming back does not pull SMS-services over (each move is a service gap);
- a clone of ``ocf:heartbeat:ethmonitor`` per bridge, which sets a node attribute
  while the bridge has carrier, and a location rule that keeps SMS-services off a
  host where any of them is down or unknown (it would start unreachable there).

Every value goes through xml.etree: a name or password with quotes, ``<`` or a
newline stays one attribute value and cannot add an element.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from sms_services.errors import UserError
from sms_services.inputs.yamlfile import Fields, load_mapping, one_line
from sms_services.runtime.deploy import INSTANCE_NAME

AGENT = ("ocf", "sms-services", "instance")  # class, provider, type: /usr/lib/ocf/resource.d/sms-services/instance
START_TIMEOUT_S = 1800  # the boot unit's TimeoutStartSec (30 min): a large overlay's e2fsck
STOP_TIMEOUT_S = 120
MONITOR_TIMEOUT_S = 60
BRIDGE_LOOKS, BRIDGE_LOOK_INTERVAL_S = 2, 5
BRIDGE_OP_TIMEOUT_S = 3 * BRIDGE_LOOKS * BRIDGE_LOOK_INTERVAL_S  # (the agent's own advice: at least looks x interval)
SECTIONS = ("crm_config", "resources", "constraints")
# What Linux allows as an interface name, minus what would need quoting anywhere.
BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
PARAM = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
FENCE_AGENT = re.compile(r"fence_[A-Za-z0-9_]{1,60}")


@dataclass
class HaNode:
    name: str
    fence_agent: str
    fence_params: dict[str, str] = field(default_factory=dict)


@dataclass
class HaConfig:
    instance: str
    smsctl: str
    nodes: list[HaNode]
    bridges: list[str]
    state_dir: str = "/var/lib/sms-services"
    config_dir: str = ""
    apptainer_config: str = ""
    resource: str = "sms-services"
    monitor_interval_s: int = 10
    ping_timeout_s: int = 5
    ready_timeout_s: int = 300  # the agent's start gives up (and the other host gets its turn) after it
    stickiness: int = 100
    fencing_delay_s: int = 5  # priority-fencing-delay: in a split, the host running SMS-services wins
    take_over: bool = True  # only ever rendered with fencing on: see the agent's take_over


def load_config(path: Path) -> HaConfig:
    """``ha.yaml``: one line naming the file and field for anything wrong."""
    f = Fields(load_mapping(path), path)
    f.unknown({"instance", "smsctl", "state_dir", "config_dir", "apptainer_config", "resource", "bridges",
               "monitor_interval", "ping_timeout", "ready_timeout", "stickiness", "fencing_delay", "nodes"})
    instance = f.str("instance", required=True)
    if not INSTANCE_NAME.fullmatch(instance):
        raise f.fail("instance", "must be an instance name (letters, digits, '.', '_', '-')")
    resource = f.str("resource", "sms-services")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}", resource) or resource.startswith("fence-"):
        raise f.fail("resource", "must be a CIB id: a letter or '_' first, then letters, digits, '.', '_' "
                                 "and '-' (and not fence-..., the fencing devices' ids)")
    paths = {}
    for key in ("smsctl", "state_dir", "config_dir", "apptainer_config"):
        value = f.str(key, "", required=key == "smsctl")
        if value and (not value.startswith("/") or not value.isprintable()):
            raise f.fail(key, f"must be an absolute path, found {one_line(value)!r}")
        paths[key] = value
    bridges = f.list_of_str("bridges", required=True)
    for i, bridge in enumerate(bridges):
        if not BRIDGE.fullmatch(bridge):
            raise f.fail(f"bridges[{i}]", f"must be an interface name (up to 15 letters, digits, _ . -), "
                                          f"found {one_line(bridge)!r}")
    if not bridges:
        raise f.fail("bridges", "is empty; name the provisioning and public bridges")
    if len(set(bridges)) != len(bridges):
        raise f.fail("bridges", "names a bridge twice")
    numbers = {}
    for key, default, low in (("monitor_interval", 10, 1), ("ping_timeout", 5, 1), ("ready_timeout", 300, 10),
                              ("stickiness", 100, 0), ("fencing_delay", 5, 0)):
        value = f.int(key, default)
        if value < low:
            raise f.fail(key, f"must be at least {low}")
        numbers[key] = value
    if numbers["ready_timeout"] >= START_TIMEOUT_S:
        # Counted after smsctl start returns: as long as the start timeout, it would never fire.
        raise f.fail("ready_timeout", f"must be below the resource's start timeout ({START_TIMEOUT_S} s)")
    nodes = []
    for n in f.list_of_mappings("nodes"):
        n.unknown({"name", "fence"})
        name = n.str("name", required=True)
        if not name.isprintable() or not name.strip():
            raise n.fail("name", f"must be a Pacemaker node name on one line, found {one_line(name)!r}")
        fence = n.mapping("fence", required=True)
        agent = fence.str("agent", required=True)
        if not FENCE_AGENT.fullmatch(agent):
            raise fence.fail("agent", f"must be a fence agent (fence_ipmilan, fence_sbd, ...), found "
                                      f"{one_line(agent)!r}")
        params = {}
        for key in fence.data:
            if key == "agent":
                continue
            if not isinstance(key, str) or not PARAM.fullmatch(key):
                raise fence.fail(str(key), "is not a fence agent parameter name (letters, digits, _ -)")
            params[key] = fence.str(key, required=True)
            if not params[key].isprintable():
                raise fence.fail(str(key), "must be one line of printable characters")
        nodes.append(HaNode(name, agent, params))
    if len(nodes) != 2:
        raise f.fail("nodes", f"must list the two hosts of the pair, found {len(nodes)}")
    if xml_id(nodes[0].name) == xml_id(nodes[1].name):  # also "a b" and "a-b": one fencing device id
        raise f.fail("nodes", f"names the host {one_line(nodes[0].name)!r} twice (or two names that differ "
                              "only in characters outside letters, digits, _ . -)")
    return HaConfig(instance=instance, smsctl=paths["smsctl"], nodes=nodes, bridges=bridges,
                    state_dir=paths["state_dir"] or "/var/lib/sms-services", config_dir=paths["config_dir"],
                    apptainer_config=paths["apptainer_config"], resource=resource,
                    monitor_interval_s=numbers["monitor_interval"], ping_timeout_s=numbers["ping_timeout"],
                    ready_timeout_s=numbers["ready_timeout"],
                    stickiness=numbers["stickiness"], fencing_delay_s=numbers["fencing_delay"])


def xml_id(*parts: str) -> str:
    """A CIB id from names: XML ids allow no spaces or quotes, so anything else becomes '-'."""
    text = "-".join(parts)
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", text)
    return text if re.match(r"[A-Za-z_]", text) else f"id-{text}"


def _nvpairs(parent: ET.Element, tag: str, set_id: str, pairs: dict[str, str]) -> None:
    attrs = ET.SubElement(parent, tag, id=set_id)
    for name, value in pairs.items():
        ET.SubElement(attrs, "nvpair", id=xml_id(set_id, name), name=name, value=value)


def _ops(parent: ET.Element, rid: str, ops: list[dict[str, str]]) -> None:
    el = ET.SubElement(parent, "operations")
    for op in ops:
        ET.SubElement(el, "op", id=xml_id(rid, op["name"], op["interval"]), **op)


def bridge_attribute(bridge: str) -> str:
    return f"sms-bridge-{bridge}"


def render(cfg: HaConfig) -> dict[str, ET.Element]:
    """The three sections, each an element cibadmin --modify --allow-create --scope SECTION takes."""
    crm = ET.Element("crm_config")
    # A split of a pair (the corosync link cut, both hosts alive) makes each fence the other:
    # fencing aimed at the host running the priority resource waits fencing_delay, so the
    # host that runs SMS-services wins and keeps it (also the delay a dead host's fencing pays).
    _nvpairs(crm, "cluster_property_set", "sms-services-options",
             {"stonith-enabled": "true", "priority-fencing-delay": f"{cfg.fencing_delay_s}s"})

    resources = ET.Element("resources")
    constraints = ET.Element("constraints")
    for node in cfg.nodes:
        fid = xml_id("fence", node.name)
        dev = ET.SubElement(resources, "primitive", id=fid, **{"class": "stonith", "type": node.fence_agent})
        _nvpairs(dev, "instance_attributes", xml_id(fid, "params"),
                 {**node.fence_params, "pcmk_host_list": node.name})
        _ops(dev, fid, [{"name": "monitor", "interval": "60s", "timeout": "20s"}])
        # A host never fences itself: its device runs on the other one.
        ET.SubElement(constraints, "rsc_location", id=xml_id(fid, "not-on", node.name), rsc=fid,
                      node=node.name, score="-INFINITY")

    rid = cfg.resource
    prim = ET.SubElement(resources, "primitive", id=rid,
                         **{"class": AGENT[0], "provider": AGENT[1], "type": AGENT[2]})
    params = {"name": cfg.instance, "smsctl": cfg.smsctl, "state_dir": cfg.state_dir,
              "take_over": "true" if cfg.take_over else "false", "ping_timeout": str(cfg.ping_timeout_s),
              "ready_timeout": str(cfg.ready_timeout_s)}
    if cfg.config_dir:
        params["config_dir"] = cfg.config_dir
    if cfg.apptainer_config:
        params["apptainer_config"] = cfg.apptainer_config
    _nvpairs(prim, "instance_attributes", xml_id(rid, "params"), params)
    # Stickiness: a host that comes back must not pull SMS-services over (a move is a gap).
    _nvpairs(prim, "meta_attributes", xml_id(rid, "meta"), {"resource-stickiness": str(cfg.stickiness),
                                                            "priority": "10"})
    _ops(prim, rid, [
        {"name": "start", "interval": "0s", "timeout": f"{START_TIMEOUT_S}s"},
        {"name": "stop", "interval": "0s", "timeout": f"{STOP_TIMEOUT_S}s"},
        {"name": "monitor", "interval": f"{cfg.monitor_interval_s}s", "timeout": f"{MONITOR_TIMEOUT_S}s",
         "on-fail": "restart"},
    ])

    # The bridges: ethmonitor sets sms-bridge-<bridge>=1 on a host while it has carrier.
    clone = ET.SubElement(resources, "clone", id=xml_id(rid, "bridges-clone"))
    group = ET.SubElement(clone, "group", id=xml_id(rid, "bridges"))
    for bridge in cfg.bridges:
        bid = xml_id(rid, "bridge", bridge)
        mon = ET.SubElement(group, "primitive", id=bid, **{"class": "ocf", "provider": "heartbeat",
                                                           "type": "ethmonitor"})
        # ethmonitor retries a down link repeat_count times, repeat_interval apart, inside one
        # monitor (its defaults: 5 x 10 s). Longer than the operation's timeout, a dead bridge
        # showed as a timed-out monitor, its restart's start timed out too, and the failure
        # count left the host ineligible after the bridge was back (seen in the lab). So: two
        # looks 5 s apart (a blip does not move SMS-services), timeouts well above that.
        _nvpairs(mon, "instance_attributes", xml_id(bid, "params"),
                 {"interface": bridge, "name": bridge_attribute(bridge), "link_status_only": "true",
                  "repeat_count": str(BRIDGE_LOOKS), "repeat_interval": str(BRIDGE_LOOK_INTERVAL_S)})
        _ops(mon, bid, [{"name": "start", "interval": "0s", "timeout": f"{BRIDGE_OP_TIMEOUT_S}s"},
                        {"name": "monitor", "interval": "5s", "timeout": f"{BRIDGE_OP_TIMEOUT_S}s"}])
    loc = ET.SubElement(constraints, "rsc_location", id=xml_id(rid, "needs-bridges"), rsc=rid)
    rule = ET.SubElement(loc, "rule", id=xml_id(rid, "needs-bridges-rule"), score="-INFINITY",
                         **{"boolean-op": "or"})
    for bridge in cfg.bridges:
        attr = bridge_attribute(bridge)
        ET.SubElement(rule, "expression", id=xml_id(rid, "bridge", bridge, "unknown"), attribute=attr,
                      operation="not_defined")
        ET.SubElement(rule, "expression", id=xml_id(rid, "bridge", bridge, "down"), attribute=attr,
                      operation="lte", value="0", type="integer")
    sections = {"crm_config": crm, "resources": resources, "constraints": constraints}
    # Ids made from names can meet ("br0" + "-params" is a bridge "br0-params"'s too): a
    # --modify would then merge two objects into one, so refuse rather than render.
    seen: set[str] = set()
    for el in (e for sec in sections.values() for e in sec.iter() if "id" in e.attrib):
        if el.attrib["id"] in seen:
            raise UserError(f"ha.yaml: two Pacemaker objects would have the id {el.attrib['id']!r}; "
                            "rename the resource, a bridge or a host")
        seen.add(el.attrib["id"])
    return sections


def to_text(sections: dict[str, ET.Element]) -> str:
    """One ``<configuration>`` document for people (no comment: the ``--`` of a cibadmin
    option is not allowed inside an XML comment; the CLI says how to apply it on stderr)."""
    root = ET.Element("configuration")
    for name in SECTIONS:
        root.append(sections[name])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def apply(sections: dict[str, ET.Element], *, cibadmin: str = "cibadmin",
          prefix: list[str] | None = None) -> None:
    """The whole ``<configuration>`` in one ``cibadmin --modify --allow-create`` (one CIB
    transaction: fencing is never switched on without its devices), through stdin: the
    fence devices' passwords must not show in any process's command line."""
    root = ET.Element("configuration")
    for name in SECTIONS:
        root.append(sections[name])
    cmd = [*(prefix or []), cibadmin, "--modify", "--allow-create", "--scope", "configuration", "--xml-pipe"]
    try:
        proc = subprocess.run(cmd, input=ET.tostring(root, encoding="unicode"), capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError:
        raise UserError("cibadmin: not found; install pacemaker-cli-utils (scripts/install-host.sh does)") from None
    except subprocess.TimeoutExpired:
        raise UserError("cibadmin --modify did not answer within 60 s; is the cluster up (crm_mon -1)?") from None
    if proc.returncode != 0:
        raise UserError(f"cibadmin --modify --scope configuration failed: "
                        f"{one_line((proc.stderr or proc.stdout).strip()[:300])}; nothing was applied")


CRM_EX_NOSUCH = 105  # crm_resource: the attribute (or resource) does not exist


@contextlib.contextmanager
def unmanaged(resource: str, *, crm_resource: str = "crm_resource") -> Iterator[None]:
    """Pacemaker leaves ``resource`` alone inside the block (is-managed=false), so a cutover
    that stops the instance is not "recovered" by the cluster; afterwards is-managed is as
    it was before (unset, true, or an admin's false) and the resource's history refreshed
    (the monitor failures of the gap are not failures)."""

    def crm(*args: str, missing_ok: bool = False) -> str | None:
        try:
            proc = subprocess.run([crm_resource, "--resource", resource, *args], capture_output=True,
                                  text=True, timeout=60)
        except FileNotFoundError:
            raise UserError("crm_resource: not found; install pacemaker-cli-utils") from None
        if proc.returncode == CRM_EX_NOSUCH and missing_ok:
            return None
        if proc.returncode != 0:
            raise UserError(f"crm_resource --resource {resource} {' '.join(args)} failed: "
                            f"{one_line((proc.stderr or proc.stdout).strip()[:300])}")
        return proc.stdout.strip()

    # Unset reads as nothing (Pacemaker 2.1.5: exit 0, no output) or as "no such" (105).
    before = crm("--meta", "--get-parameter", "is-managed", missing_ok=True) or None
    if before is not None and before.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        raise UserError(f"resource {resource}: is-managed is {one_line(before)!r}, not a boolean; set it to "
                        f"true or false first (crm_resource --resource {resource} --meta --set-parameter "
                        "is-managed --parameter-value true)")
    restore = (("--meta", "--delete-parameter", "is-managed") if before is None else
               ("--meta", "--set-parameter", "is-managed", "--parameter-value", before))
    # A hang-up or a kill of the admin's session must still hand the resource back:
    # left unmanaged, the survivor would never take over after a host death.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    crm("--meta", "--set-parameter", "is-managed", "--parameter-value", "false")
    try:
        yield
    finally:
        failed: UserError | None = None
        for step in (restore, ("--refresh",)):
            try:  # each step on its own; the first failure is reported after both were tried
                crm(*step)
            except UserError as err:
                failed = failed or UserError(f"{err}; set it by hand: crm_resource --resource {resource} "
                                             f"{' '.join(restore)}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if failed is not None:
            raise failed


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
