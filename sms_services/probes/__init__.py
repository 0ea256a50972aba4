"""Probes: proof that each service answers, seen from a compute node.

The kinds live in one module per family (munge, slurm, network, system) and
register themselves in :mod:`registry` when this package is imported.
"""

from sms_services.probes import munge, network, slurm, system  # noqa: F401  (registers the kinds)
from sms_services.probes.registry import (
    KINDS,
    NEEDS,
    Cluster,
    ProbeFailed,
    Result,
    failed_services,
    probe_name,
    probe_problems,
    run_all,
    to_json,
)

__all__ = ["KINDS", "NEEDS", "Cluster", "ProbeFailed", "Result", "failed_services", "probe_name",
           "probe_problems", "run_all", "to_json"]
