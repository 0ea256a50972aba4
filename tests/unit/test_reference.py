"""One fragment schema: check validates with it, and the published files are generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sms_services.image.checks import check_all
from sms_services.inputs.project import Project
from sms_services.reference import generated, site_vars

ROOT = Path(__file__).resolve().parents[2]


def test_the_published_schemas_and_reference_are_in_step_with_the_code(project: Project) -> None:
    stale = [str(p) for p, text in generated(project).items() if (ROOT / p).read_text() != text]
    assert stale == [], f"regenerate with `smsctl schema --write`: {stale}"


@pytest.mark.parametrize("old,new,expect", [
    ("summary:", "sumary:", "field 'sumary' is not a known field"),
    ("{kind: ntp-query}", "{kind: ntp-query, server: x}", "field 'probes.0'"),
    ('mode: "0400"', "mode: 0400", "file_modes"),
])
def test_check_refuses_what_the_schema_refuses(scratch: Path, old: str, new: str, expect: str) -> None:
    meta = scratch / ("defs/munge/fragment.yaml" if "0400" in old else "defs/chrony/fragment.yaml")
    assert old in meta.read_text()
    meta.write_text(meta.read_text().replace(old, new, 1))
    try:
        findings = [str(f) for f in check_all(Project(scratch))]
    except Exception as err:  # the loader may refuse first, in one line of its own
        findings = [str(err)]
    assert any(expect in f and "fragment.yaml" in f for f in findings), findings


def test_site_vars_of_a_release_are_those_its_fragments_declare(project: Project) -> None:
    names_35 = {v["name"] for v in site_vars(project, "3.5")}
    names_41 = {v["name"] for v in site_vars(project, "4.1")}
    assert "slurmdbd_password" in names_41 - names_35
    assert {"provision_ip", "public_ip", "mail_relay"} <= names_35
