"""Munge: credentials made on one side decode on the other."""

from __future__ import annotations

from sms_services.probes.registry import Cluster, kind, ok


@kind("munge-roundtrip")
def munge_roundtrip(c: Cluster, p: dict) -> str:
    """A credential made on a compute node decodes on SMS-services, and one made there decodes on the node."""
    node = c.nodes[0]
    cred = ok(c.on_node(node, ["munge", "-n"]), f"munge -n on {node}")
    ok(c.on_sms(["unmunge"], stdin=cred), "unmunge on SMS-services of a credential from " + node)
    back = ok(c.on_sms(["munge", "-n"]), "munge -n on SMS-services")
    ok(c.on_node(node, ["unmunge"], stdin=back), f"unmunge on {node} of a credential from SMS-services")
    return f"credentials decode both ways ({node} <-> SMS-services)"
