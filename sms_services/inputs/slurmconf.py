"""What a site's own slurm.conf must say for SMS-services to run it.

Slurm itself checks the syntax (``runtime.init`` runs the image's scontrol on
it); these are the few settings that would pass Slurm's parser and still leave
a broken cluster: a controller host that is not SMS-services (slurmctld exits
"not a valid controller"), nodes asking a configless controller that is not
configless, state kept outside the paths the fragments declare as state, and
an Include of a file the site does not provide (scontrol waits a minute for it).
Only those keys are read; Slurm's own parser does the rest.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

SLURM_DIR = "/etc/slurm"
_LINE = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\S+)")
_INCLUDE = re.compile(r"^\s*include\s+(\S+)", re.I)


def settings(text: str) -> dict[str, str]:
    """Lower-cased key -> its first value, for ``key=value`` lines outside NodeName/PartitionName."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        m = _LINE.match(line)
        if m and m.group(1).lower() not in ("nodename", "partitionname", "nodeset", "downnodes", "frontendname"):
            out.setdefault(m.group(1).lower(), m.group(2))
    return out


def includes(text: str) -> list[str]:
    """The absolute paths slurm.conf's Include lines name (relative ones are beside it)."""
    found = []
    for line in text.splitlines():
        m = _INCLUDE.match(line.split("#", 1)[0])
        if m:
            name = m.group(1)
            found.append(name if name.startswith("/") else f"{SLURM_DIR}/{name}")
    return found


METRICS_SINCE = (25, 11)  # slurmctld's metrics/openmetrics plugin (slurm.schedmd.com/metrics.html)


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def serves_metrics(slurm: str) -> bool:
    """Whether a slurmctld of this version has metrics/openmetrics (unknown: no)."""
    have = _version(slurm)
    return have is not None and have >= METRICS_SINCE


def problems(files: dict[str, str], *, hostname: str, address: str, state: list[str],
             metrics: bool = False, slurm: str = "") -> list[str]:
    """One line per setting of the site's slurm.conf that cannot work under SMS-services.

    ``metrics``: the site's slurm_metrics switch; ``slurm``: the image's Slurm version
    (empty when unknown)."""
    conf = files.get(f"{SLURM_DIR}/slurm.conf")
    if conf is None:
        return []
    found = []
    keys = settings(conf)
    host = keys.get("slurmctldhost") or keys.get("controlmachine") or ""
    m = re.match(r"^([^(]+)(?:\(([^)]*)\))?$", host)
    name, addr = (m.group(1), m.group(2)) if m else ("", None)
    if name != hostname or (addr is not None and addr != address):
        found.append(f"slurm.conf: SlurmctldHost={host or '(none)'} must name SMS-services: "
                     f"{hostname} or {hostname}({address}) (the site's sms_hostname and provision_ip)")
    if "enable_configless" not in keys.get("slurmctldparameters", "").split(","):
        found.append("slurm.conf: SlurmctldParameters lacks enable_configless: the nodes take their "
                     "config from slurmctld (slurmd --conf-server); add it")
    where = keys.get("statesavelocation", "/var/spool/slurmctld")
    if not any(PurePosixPath(where).is_relative_to(s) for s in state):
        found.append(f"slurm.conf: StateSaveLocation={where} is outside the state paths the image keeps "
                     f"in the overlay ({', '.join(state)})")
    # Metrics settings may sit in an included file as well.
    every = dict(keys)
    for path in includes(conf):
        for key, value in settings(files.get(path, "")).items():
            every.setdefault(key, value)
    mtype = every.get("metricstype", "")
    if metrics and mtype != "metrics/openmetrics":
        found.append("slurm.conf: slurm_metrics is on but MetricsType is "
                     f"{mtype or '(unset)'}; add MetricsType=metrics/openmetrics or turn slurm_metrics off")
    if mtype and not serves_metrics(slurm):
        found.append(f"slurm.conf: MetricsType={mtype} needs Slurm 25.11 or later, the image's is "
                     f"{slurm or 'unknown (no sms-services.slurm.installed label)'}; "
                     "turn slurm_metrics off or use a release whose Slurm is newer")
    # Slurm 25.11 serves no metrics while PrivateData is set; later ones can be told to
    # (MetricsParameters=ignore_private_data) or to ask for a token (MetricsAuthUsers).
    private_ok = ("ignore_private_data" in every.get("metricsparameters", "").split(",")
                  or bool(every.get("metricsauthusers")))
    if mtype and every.get("privatedata") and not private_ok:
        found.append(f"slurm.conf: MetricsType={mtype} with PrivateData={every['privatedata']}: Slurm serves "
                     "no metrics while PrivateData is set; drop one of them (or, Slurm 26.05 and later, "
                     "add MetricsParameters=ignore_private_data)")
    for path in includes(conf):
        if path not in files:
            found.append(f"slurm.conf: Include {path}: the site does not provide it (list it in slurm_files)")
    return found
