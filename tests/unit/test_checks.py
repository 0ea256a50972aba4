from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.image.checks import check_all
from sms_services.inputs.project import Project


def test_project_is_clean(project) -> None:
    assert [str(f) for f in check_all(project)] == []


def test_two_fragments_claiming_a_port(scratch: Path) -> None:
    meta = scratch / "defs/cron/fragment.yaml"
    meta.write_text(meta.read_text() + "ports: [{port: 6817, proto: tcp}]\n")
    findings = [str(f) for f in check_all(Project(scratch))]
    assert any("port 6817/tcp is also claimed by fragment" in f for f in findings)


def test_template_using_an_undeclared_variable(scratch: Path) -> None:
    tpl = scratch / "defs/chrony/templates/chrony.conf.j2"
    tpl.write_text(tpl.read_text() + "server {{ ntp_upstream_typo }}\n")
    findings = [str(f) for f in check_all(Project(scratch))]
    assert any("chrony.conf.j2: uses 'ntp_upstream_typo'" in f for f in findings)


def test_release_naming_a_missing_fragment(scratch: Path) -> None:
    rel = scratch / "releases.yaml"
    rel.write_text(rel.read_text().replace("with: [mariadb, slurmdbd]", "with: [slurmdbd]", 1))
    with pytest.raises(UserError, match="'requires' names 'mariadb', which is not in .*release 4.0"):
        check_all(Project(scratch))


def test_package_key_must_be_family_or_base(scratch: Path) -> None:
    meta = scratch / "defs/cron/fragment.yaml"
    meta.write_text(meta.read_text().replace("bookworm: [cron]", "bookwrom: [cron]"))
    findings = [str(f) for f in check_all(Project(scratch))]
    assert any("'packages.bookwrom' is neither a family nor a base" in f for f in findings)
