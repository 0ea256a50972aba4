"""Probe results for people (a table) and for CI (JSON, JUnit XML)."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sms_services.errors import UserError
from sms_services.probes import Result


def table(results: list[Result], title: str) -> Table:
    t = Table(title=title)
    for col in ("service", "probe", "phase", "result", "latency", "detail"):
        t.add_column(col, no_wrap=col not in ("detail",))
    for r in results:
        t.add_row(r.service, r.probe, r.phase, "[green]pass[/green]" if r.ok else "[red]FAIL[/red]",
                  f"{r.seconds * 1000:.0f} ms" + (f" (+{r.waited - r.seconds:.1f} s wait)"
                                                   if r.waited - r.seconds > 0.5 else ""),
                  r.detail)
    return t


def print_table(results: list[Result], title: str, console: Console) -> None:
    console.print(table(results, title))


def junit(results: list[Result], suite: str, path: Path, seconds: float) -> None:
    """One testcase per probe; classname is the service, so CI groups by service."""
    ts = ET.Element("testsuite", name=suite, tests=str(len(results)),
                    failures=str(sum(not r.ok for r in results)), errors="0", time=f"{seconds:.3f}")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{r.service}", name=f"{r.probe} ({r.phase})",
                             time=f"{r.waited:.3f}")
        if not r.ok:
            ET.SubElement(case, "failure", message=f"{r.service}: {r.detail}", type="ProbeFailed").text = (
                f"{r.attempts} attempt(s) over {r.waited:.1f} s; last: {r.detail}")
        else:
            ET.SubElement(case, "system-out").text = r.detail
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites")
    root.append(ts)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def passed_report(report: Path, content: str, image: Path) -> str:
    """How a passing verify report of exactly this image is recorded; one line why not otherwise.

    ``content`` is the image's content digest (signing.content_digest), which the
    report records and which signing does not change.
    """
    try:
        raw = report.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as err:
        raise UserError(f"{report}: not a readable verify report ({err})") from None
    if data.get("sif_content_sha256") != content:
        raise UserError(f"{report}: reports on another image than {image} (content digest differs); "
                        "verify this one first")
    if data.get("ok") is not True:
        failed = ", ".join(data.get("failed_services", [])) or "unknown"
        raise UserError(f"{report}: verify FAILED ({failed}); refusing {image}")
    return f"passed (report sha256:{hashlib.sha256(raw).hexdigest()[:16]})"
