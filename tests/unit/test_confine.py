"""What `smsctl check` vouches for stays in the project (issue 10, item 7).

A template source outside its fragment (the host's /etc/passwd went into an
overlay), a target outside the overlay tree, and a newline in a release field
(a %setup section, run as root on the build host) are each refused by `check`
in one line, and the definition refuses any line break in a value it interpolates.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sms_services.errors import UserError
from sms_services.image.definition import Definition
from sms_services.image.render import render, render_context
from sms_services.inputs.project import Project

ROOT = Path(__file__).resolve().parents[2]


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sms_services.cli.main", "check"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "SMS_ROOT": str(root), "PYTHONPATH": str(ROOT)})


def refused(root: Path, *expect: str) -> None:
    p = check(root)
    assert p.returncode != 0, f"check said ok: {p.stdout}"
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    for e in expect:
        assert e in p.stderr, p.stderr


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_the_project_itself_passes(scratch: Path) -> None:
    p = check(scratch)
    assert p.returncode == 0 and p.stdout.startswith("ok:"), p.stderr


@pytest.mark.parametrize("src", ["/etc/passwd", "../../../etc/passwd", "../fragment.yaml", "./chrony.conf.j2",
                                 "chrony.conf.j2\n"])
def test_a_template_source_stays_in_templates(scratch: Path, src: str) -> None:
    edit(scratch / "defs/chrony/fragment.yaml", "  chrony.conf.j2: /etc/chrony/chrony.conf",
         f"  {src!r}: /etc/chrony/chrony.conf".replace("'", '"'))
    refused(scratch, "defs/chrony/fragment.yaml: field 'templates.", "must name a file under templates/")


def test_a_template_linked_out_of_the_fragment_is_refused(scratch: Path) -> None:
    tpl = scratch / "defs/chrony/templates/chrony.conf.j2"
    tpl.unlink()
    tpl.symlink_to("/etc/passwd")
    refused(scratch, "chrony.conf.j2: a link out of fragment chrony (to /etc/passwd)")


def test_a_templates_folder_linked_out_is_refused(scratch: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "chrony.conf.j2").write_text("server x\n")
    folder = scratch / "defs/chrony/templates"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere)
    refused(scratch, "templates: a link out of fragment chrony")


def test_a_file_linked_out_of_the_fragment_is_refused(scratch: Path) -> None:
    link = scratch / "defs/cron/files/etc/cron.d/stolen"
    link.symlink_to("/etc/shadow")
    refused(scratch, "stolen: a link out of fragment cron")


def test_a_link_inside_the_fragment_is_fine(scratch: Path) -> None:
    (scratch / "defs/cron/files/etc/cron.d/alias").symlink_to("sms-services-heartbeat")
    assert check(scratch).returncode == 0


@pytest.mark.parametrize("target", ["/etc/chrony/../../../tmp/x", "etc/chrony.conf", "/etc//chrony.conf",
                                    "/etc/chrony/./chrony.conf", "/etc/chrony/chrony.conf\n%setup",
                                    "/etc/chrony/chrony conf", "/etc/$(id)"])
def test_a_target_is_a_plain_absolute_path(scratch: Path, target: str) -> None:
    edit(scratch / "defs/chrony/fragment.yaml", "chrony.conf.j2: /etc/chrony/chrony.conf",
         f"chrony.conf.j2: {target!r}".replace("'", '"'))
    refused(scratch, "field 'templates.chrony.conf.j2' target must be an absolute path without '..'")


@pytest.mark.parametrize("old,new,expect", [
    ("state: [/var/lib/chrony]", "state: [/var/lib/../../etc]", "field 'state[0]' must be an absolute path"),
    ("secrets: [/etc/chrony/chrony.keys]", 'secrets: ["/x\\n%setup\\nrm -rf /"]', "field 'secrets[0]'"),
    ("debian: [chrony]", 'debian: ["chrony\\n%setup"]', "field 'packages.debian[0]' must be a package name"),
    ("binaries: [chronyd, chronyc]", "binaries: [\"chronyd'; reboot; '\"]", "field 'binaries[0]' must be a command"),
])
def test_other_fragment_fields_cannot_reach_the_definition(scratch: Path, old: str, new: str, expect: str) -> None:
    edit(scratch / "defs/chrony/fragment.yaml", old, new)
    refused(scratch, "defs/chrony/fragment.yaml", expect)


@pytest.mark.parametrize("old,new,expect", [
    ('mirror: "http://deb.debian.org/debian", slurm: "24.11"',
     'mirror: "http://deb.debian.org/debian\\n\\n%setup\\n    touch /tmp/pwned", slurm: "24.11"',
     "field 'bases.trixie.mirror' must be an http://"),
    ('mirror: "http://deb.debian.org/debian", slurm: "24.11"', 'mirror: "ftp://x/debian", slurm: "24.11"',
     "field 'bases.trixie.mirror'"),
    ("suite: trixie,", 'suite: "trixie\\n%setup",', "field 'bases.trixie.suite' must be a Debian suite"),
    ("suite: trixie,", 'suite: "trixie main",', "field 'bases.trixie.suite'"),
    ('osversion: "9",', 'osversion: "9 \\"",', "field 'bases.EL_9.osversion' must be an EL version"),
    ('slurm: "24.11"}', 'slurm: "24.11.0\\n%setup"}', "field 'bases.trixie.slurm' must be a Slurm major"),
    ('"3.5":  {slurm: "24.11",', '"3.5":  {slurm: "24.11.1\\n%setup",', "field 'releases.3.5.slurm'"),
    ('warewulf: "4.6", el: EL_9, debian: trixie}\n  "3.6"', 'warewulf: "4.6\\n", el: EL_9, debian: trixie}\n  "3.6"',
     "field 'releases.3.5.warewulf'"),
    ('  EL_9:     {', '  "EL 9":   {', "field 'bases.EL 9' must be a base name"),
    ("compute: [base, munge, slurm-common, slurmd]", 'compute: [base, "munge\\n%setup"]',
     "field 'defaults.compute[1]' must be a fragment name"),
    ('with: [mariadb, slurmdbd]}\n  "4.1"', 'with: ["mariadb slurmdbd"]}\n  "4.1"', "field 'releases.4.0.with[0]'"),
])
def test_every_release_field_is_checked(scratch: Path, old: str, new: str, expect: str) -> None:
    edit(scratch / "releases.yaml", old, new)
    refused(scratch, "releases.yaml", expect)


def test_a_script_line_that_starts_a_section_is_refused(scratch: Path) -> None:
    build = scratch / "defs/chrony/build.sh"
    build.write_text(build.read_text() + "%setup\n    touch /tmp/pwned-on-the-build-host\n")
    refused(scratch, "definition section %post: a line that starts a new section in '%setup'")


@pytest.mark.parametrize("part", ["header", "comment", "line", "arg"])
def test_the_definition_refuses_a_line_break_in_any_value(part: str) -> None:
    d = Definition(comments=["ok"], header={"Bootstrap": "debootstrap", "MirrorURL": "http://x"})
    post = d.section("post")
    post.lines.append("true")
    bad = "http://x\n%setup\ntouch /pwned"
    if part == "header":
        d.header["MirrorURL"] = bad
    elif part == "comment":
        d.comments.append(bad)
    elif part == "line":
        post.lines.append(f"echo {bad}")
    else:
        d.section("apprun", "x\n%setup").lines.append("true")
    with pytest.raises(UserError, match=r"^definition [^\n]*a line break"):
        d.text()


def test_the_guard_holds_against_a_value_that_slipped_past_validation(project: Project) -> None:
    import dataclasses

    variant = project.matrix.get("3.5").variant("debian")
    base = dataclasses.replace(variant.base, mirror="http://deb.debian.org/debian\n%setup\ntouch /x")
    ctx = render_context(project, dataclasses.replace(variant, base=base), commit="test")
    with pytest.raises(UserError, match="header 'MirrorURL'"):
        render(ctx).text()


def test_a_fragment_folder_linked_out_of_defs_is_refused(scratch: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil

    elsewhere = tmp_path_factory.mktemp("elsewhere") / "cron"
    shutil.move(scratch / "defs/cron", elsewhere)
    (scratch / "defs/cron").symlink_to(elsewhere)
    refused(scratch, "defs/cron: a link out of")


def test_a_link_loop_in_a_fragment_is_refused(scratch: Path) -> None:
    loop = scratch / "defs/cron/files/etc/loop"
    loop.symlink_to("loop")
    refused(scratch, "loop: a link out of fragment cron")
