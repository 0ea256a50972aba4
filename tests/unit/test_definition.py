from sms_services.image.definition import lint

GOOD = """Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian

%files
defs/x/run.sh /usr/libexec/x

%post
echo hi

%apprun manifest
cat /m
"""


def messages(text: str) -> list[str]:
    return [p.message for p in lint(text)]


def test_good_definition_passes() -> None:
    assert messages(GOOD) == []


def test_duplicate_section() -> None:
    (msg,) = messages(GOOD + "\n%post\necho again\n")
    assert "'%post' appears twice (first at line 8)" in msg


def test_files_into_tmp() -> None:
    for dest in ("/tmp/x", "/var/tmp", "/var/tmp/a/b"):
        (msg,) = messages(GOOD.replace("/usr/libexec/x", dest))
        assert f"%files copies into {dest}" in msg


def test_unknown_bootstrap_agent() -> None:
    (msg,) = messages(GOOD.replace("debootstrap", "debootstrapp"))
    assert "unknown bootstrap agent 'debootstrapp'" in msg


def test_missing_headers() -> None:
    assert any("needs an 'OSVersion:'" in m for m in messages(GOOD.replace("OSVersion: bookworm\n", "")))
    assert any("needs a 'From:'" in m for m in messages("Bootstrap: localimage\n\n%post\ntrue\n"))
    assert any("no 'Bootstrap:'" in m for m in messages("%post\ntrue\n"))


def test_unknown_section_and_app_without_name() -> None:
    msgs = messages(GOOD + "\n%postt\nx\n\n%apprun\nx\n")
    assert any("unknown section '%postt'" in m for m in msgs)
    assert any("'%apprun' needs an app name" in m for m in msgs)
