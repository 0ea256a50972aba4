"""Probe kinds, registered in one place, and the runner that retries them.

goss-style: a probe is data in a fragment's ``fragment.yaml`` (``kind`` plus
parameters). Each kind is one function in a family module of this package,
registered with :func:`kind`, which declares its parameters (checked by
``smsctl check``) and what it *needs* from the target it runs against. A target
(the lab, a recorded production instance) says what it *provides*; a probe
whose needs are not provided is left out, so no list of "lab-only" kinds is kept
anywhere else.

An attempt either returns a short detail or raises :class:`ProbeFailed`; the
runner retries it until it passes or its deadline runs out, because services
come up asynchronously after ``instance start``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

from sms_services.inputs.fragment import Fragment, Probe

# What a probe may need beyond SMS-services and one compute node that answers.
PUBLIC_HOST = "public-host"  # a host on the public network to probe from (the lab's)
SMS_MGMT_CONTROL = "sms-mgmt-control"  # SMS-mgmt can be changed (the lab's stand-in)
IDLE_NODES = "idle-nodes"  # nodes free for test jobs (not on a busy live cluster unless asked)
NEEDS: dict[str, str] = {
    PUBLIC_HOST: "a host on the public network to probe from",
    SMS_MGMT_CONTROL: "an SMS-mgmt this run may change (a user added, files served)",
    IDLE_NODES: "compute nodes free to run test jobs",
}


class ProbeFailed(Exception):
    """One attempt failed; the message says what was seen."""


class Cluster(Protocol):
    """What probes need from a running target (the lab or a deployment)."""

    nodes: list[str]
    sms_fragments: tuple[Fragment, ...]
    sms_ip: str
    sms_public_ip: str
    public_host_ip: str
    mail_domain: str
    provides: frozenset[str]

    def on_node(self, node: str, command: list[str], stdin: str | None = None,
                timeout: float = 30) -> tuple[int, str, str]: ...
    def on_sms(self, command: list[str], stdin: str | None = None,
               timeout: float = 30) -> tuple[int, str, str]: ...
    def on_public(self, command: list[str], timeout: float = 30) -> tuple[int, str, str]: ...
    def mgmt_update(self) -> str: ...


@dataclass(frozen=True)
class Param:
    doc: str
    choices: tuple[str, ...] = ()  # empty: any non-empty string
    required: bool = False


@dataclass(frozen=True)
class Kind:
    name: str
    attempt: Callable[[Cluster, dict], str]
    doc: str
    params: dict[str, Param] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()


KINDS: dict[str, Kind] = {}


def kind(name: str, *, params: dict[str, Param] | None = None,
         needs: frozenset[str] | set[str] = frozenset()) -> Callable:
    """Register one probe kind; its docstring's first line documents it."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"probe kind {name}: unknown needs {sorted(unknown)}")

    def register(fn: Callable[[Cluster, dict], str]) -> Callable[[Cluster, dict], str]:
        if name in KINDS:
            raise ValueError(f"probe kind {name} registered twice")
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        KINDS[name] = Kind(name, fn, " ".join(doc.split()), dict(params or {}), frozenset(needs))
        return fn
    return register


def probe_problems(probe: Probe) -> list[str]:
    """What is wrong with one probe's declaration (unknown kind, parameter or value)."""
    k = KINDS.get(probe.kind)
    if k is None:
        return [f"unknown probe kind {probe.kind!r} (known: {', '.join(sorted(KINDS))})"]
    problems = []
    for key, value in probe.params.items():
        spec = k.params.get(key)
        if spec is None:
            problems.append(f"probe {probe.kind}: unknown parameter {key!r}"
                            + (f" (known: {', '.join(sorted(k.params))})" if k.params else " (it takes none)"))
        elif not isinstance(value, str) or not value or (spec.choices and value not in spec.choices):
            want = " or ".join(spec.choices) if spec.choices else "a non-empty string"
            problems.append(f"probe {probe.kind}: {key} is {value!r}, expected {want}")
    problems += [f"probe {probe.kind}: parameter {key!r} is required ({spec.doc})"
                 for key, spec in k.params.items() if spec.required and key not in probe.params]
    return problems


def runnable(probe: Probe, provides: frozenset[str], site_values: Mapping[str, object] | None = None) -> bool:
    """The target meets the kind's needs, and the site turned on what the probe proves
    (``when``; a target without site values runs no switched probe)."""
    if probe.when and not (site_values or {}).get(probe.when):
        return False
    k = KINDS.get(probe.kind)
    return k is None or k.needs <= provides  # an unknown kind runs, and fails naming itself


@dataclass
class Result:
    service: str
    probe: str
    ok: bool
    seconds: float  # latency of the last attempt
    waited: float  # from the first attempt to the verdict
    attempts: int
    detail: str
    phase: str = "up"

    def to_dict(self) -> dict:
        return asdict(self)


def ok(rc_out_err: tuple[int, str, str], what: str) -> str:
    """The output of a command that must succeed; otherwise a failed attempt naming it."""
    rc, out, err = rc_out_err
    if rc != 0:
        raise ProbeFailed(f"{what} exited {rc}: {(err or out).strip().splitlines()[-1:] or ['no output']}")
    return out


def py(code: str, *args: str) -> list[str]:
    """A Python one-liner for a compute node (its image has python3)."""
    return ["python3", "-c", code, *args]


def probe_name(probe: Probe) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(probe.params.items()) if not k.startswith("_"))
    return probe.kind + (f"[{extra}]" if extra else "")


def run_one(c: Cluster, service: str, probe: Probe, deadline: float, phase: str = "up") -> Result:
    """Attempt until it passes or ``deadline`` (monotonic) passes; at least one attempt."""
    k = KINDS.get(probe.kind)
    name = probe_name(probe)
    if k is None:
        return Result(service, name, False, 0, 0, 0, f"unknown probe kind {probe.kind!r}", phase)
    start = time.monotonic()
    attempts = 0
    detail = ""
    while True:
        attempts += 1
        t = time.monotonic()
        try:
            detail = k.attempt(c, dict(probe.params))
            return Result(service, name, True, round(time.monotonic() - t, 3),
                          round(time.monotonic() - start, 3), attempts, detail, phase)
        except ProbeFailed as err:
            detail = str(err)
        except Exception as err:  # a probe bug must still name its service
            detail = f"{type(err).__name__}: {err}"
        if time.monotonic() + 0.5 > deadline:
            return Result(service, name, False, round(time.monotonic() - t, 3),
                          round(time.monotonic() - start, 3), attempts, detail, phase)
        time.sleep(0.5)


def run_all(c: Cluster, fragments: list[Fragment] | tuple[Fragment, ...], *, ready_timeout: float = 90,
            probe_timeout: float = 20, skip: set[str] | frozenset[str] = frozenset(),
            provides: frozenset[str] | None = None, phase: str = "up",
            say: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Every probe of every fragment the target can run, in dependency order.

    ``provides`` defaults to the target's own; ``skip`` leaves out kinds by name.
    The first probe gets ``ready_timeout`` (services are still starting); once
    one has passed, each further probe gets ``probe_timeout``.
    """
    have = c.provides if provides is None else provides
    site = getattr(c, "site", None)  # the lab and a deployment carry their site
    values = site.values if site is not None else {}
    results: list[Result] = []
    first = True
    for frag in fragments:
        for probe in frag.probes:
            if probe.kind in skip or not runnable(probe, have, values):
                continue
            budget = ready_timeout if first else probe_timeout
            res = run_one(c, frag.name, probe, time.monotonic() + budget, phase)
            first = first and not res.ok
            results.append(res)
            say(res)
    return results


def failed_services(results: list[Result]) -> list[str]:
    return sorted({r.service for r in results if not r.ok})


def to_json(results: list[Result], meta: dict) -> str:
    return json.dumps({**meta, "ok": all(r.ok for r in results),
                       "failed_services": failed_services(results),
                       "probes": [r.to_dict() for r in results]}, indent=2)
