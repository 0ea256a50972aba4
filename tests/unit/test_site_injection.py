"""No site value can add a line or a token to a rendered config (issue 10, item 4).

Property: a site value either is refused at load, in one line naming its field, or
renders every template (and site.env) with exactly the lines, and per line exactly
the spaces, quotes, backslashes and '#' that a known-good value of the same shape
gives. Random strings, strings that the types accept (from their own patterns)
and accepted values with an attack appended are drawn for every site variable.
"""

from __future__ import annotations

import ipaddress
import shlex
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sms_services.errors import UserError
from sms_services.inputs.fragment import SiteVar
from sms_services.inputs.project import Project
from sms_services.inputs.site import SITE_ENV, declared, load_site, render_site
from sms_services.inputs.sitetypes import PATTERNS, SiteType

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Project(ROOT)
RELEASE = "4.1"  # has every fragment with templates (slurmdbd too); checked below
FRAGS = PROJECT.sms_fragments(RELEASE)
EVERY = list(PROJECT.fragments.values())
DECL = declared(FRAGS)
LAB = yaml.safe_load((ROOT / "overlays/lab/site.yaml").read_text())

# A value per variable (and per list item) known to be good: the shape twin of a drawn value.
GOOD: dict[str, Any] = {
    **{name: var.default for name, (var, _) in DECL.items()}, **LAB, "ntp_servers": "ntp.example.org", "mail_relay": "[smtp.example.org]:25",
    "syslog_forward": "syslog.example.org:514", "wwclient_port": 9873,
    "wwclient_protocol": "ww4-provision", "wwclient_assetkey": "asset-1",
    "scheduler_parameters": "defer,max_rpc_cnt=150", "slurmctld_parameters": "enable_rpc_queue",
}
# What a value could use to start a line, a token, a string or a comment.
ATTACKS = ["\n", "\r", "\r\n", "\u2028", "\x0b", "\x85", '"', "'", "\\", "#", " ", "\t", ";", "$", "%", "}"]
MARKS = ' \t"\'\\#'
PAYLOADS = ["SlurmUser=root", "mynetworks = 0.0.0.0/0",
            '" template="x") action(type="omprog" binary="/bin/sh -c id") #', "%setup", "x"]


def test_every_template_is_covered() -> None:
    rendered = {t for f in FRAGS for t in f.templates.values()}
    assert rendered == {t for f in EVERY for t in f.templates.values()}
    assert set(DECL) == set(declared(EVERY))


def _valid(t: SiteType) -> st.SearchStrategy[Any]:
    """Values of the type, drawn from its own definition (so accepted ones get rendered)."""
    inside = st.integers(3, 254).map(lambda i: f"198.18.0.{i}")
    one: st.SearchStrategy[Any]
    if t.base in PATTERNS:
        one = st.from_regex(PATTERNS[t.base], fullmatch=True).filter(lambda s: s.isascii())
    elif t.base == "address":
        one = st.one_of(inside, st.ip_addresses().map(str))
    elif t.base == "network":
        one = st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
                        st.ip_addresses(v=4), st.integers(0, 32))
    elif t.base == "host":
        one = st.one_of(st.from_regex(PATTERNS["hostname"], fullmatch=True), st.ip_addresses().map(str))
    elif t.base == "integer":
        one = st.integers(t.min if t.min is not None else -10**6, t.max if t.max is not None else 10**6)
    elif t.base == "boolean":
        one = st.booleans()
    elif t.base == "choice":
        one = st.sampled_from(t.choices)
    else:  # node
        one = st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True), "address": inside},
            optional={"cpus": st.integers(1, 512), "memory": st.integers(1, 10**6)})
    return st.lists(one, max_size=3) if t.is_list else one


def _hostile(t: SiteType) -> st.SearchStrategy[Any]:
    """Random text, and accepted text with an attack appended or a payload spliced in."""
    text = st.one_of(
        st.text(max_size=40),
        st.builds(lambda good, sep, tail: f"{good}{sep}{tail}",
                  st.from_regex(PATTERNS["name"], fullmatch=True), st.sampled_from(ATTACKS),
                  st.sampled_from(PAYLOADS)),
    )
    if t.base == "node":
        item: st.SearchStrategy[Any] = st.builds(
            lambda node, extra: {**extra, **node},
            st.fixed_dictionaries(
                {"name": st.one_of(text, st.just("c9")), "address": st.one_of(text, st.just("198.18.0.99"))},
                optional={"cpus": st.one_of(text, st.integers()), "memory": st.one_of(text, st.integers())}),
            st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), text, max_size=1))
    else:
        item = st.one_of(text, st.integers(), st.booleans())
    return st.one_of(st.lists(item, max_size=3), item) if t.is_list else item


def _twin(name: str, var: SiteVar, value: Any) -> Any:
    """A known-good value of the same shape (list length, empty or not)."""
    if value == "":
        return ""
    if var.type.base == "boolean" and not var.type.is_list and isinstance(value, bool):
        return value  # a switch's lines are the template's; its value is never written out
    if var.type.is_list:
        if var.type.base == "node":
            return [{"name": f"n{i}", "address": f"198.18.0.{100 + i}"} for i in range(len(value))]
        return [GOOD[name]] * len(value)
    return GOOD[name]


def _render(values: dict[str, Any]) -> dict[str, str] | UserError:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.yaml"
        path.write_text(yaml.safe_dump(values, allow_unicode=True))
        try:
            return render_site(load_site(path, FRAGS, EVERY), FRAGS, RELEASE)
        except UserError as err:
            return err


def _shape(files: dict[str, str]) -> dict[str, list[tuple[int, ...]]]:
    """Per file, per line: how many of each mark (site.env: how many shell words, as it is
    quoted for the shell); the line count is the list's length."""
    out = {}
    for target, text in files.items():
        assert text.count("\n") == len(text.splitlines()), f"{target}: a line break other than \\n"
        lines = text.split("\n")
        if target == SITE_ENV:
            out[target] = [(len(shlex.split(line, comments=True)),) for line in lines]
        else:
            out[target] = [tuple(line.count(m) for m in MARKS) for line in lines]
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_site_value_adds_a_line_or_a_token(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(DECL)), label="variable")
    var = DECL[name][0]
    value = data.draw(st.one_of(_valid(var.type), _hostile(var.type)), label="value")
    dumped = yaml.safe_load(yaml.safe_dump({name: value}, allow_unicode=True))[name]
    if dumped != value:  # YAML cannot carry it (e.g. a lone \r folded); nothing to test
        return
    got = _render({**LAB, name: value})
    if isinstance(got, UserError):
        msg = str(got)
        # One line naming the field (or, for a cross-field check, the field it collides with).
        assert "\n" not in msg and "site.yaml: field '" in msg, msg
        assert name in msg, msg
        if var.secret:
            assert repr(value) not in msg
        return
    twin = _render({**LAB, name: _twin(name, var, value)})
    assert not isinstance(twin, UserError), twin
    assert _shape(got) == _shape(twin), (name, value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(DECL)), st.text(max_size=20), min_size=2))
def test_many_hostile_values_at_once_are_refused_or_harmless(values: dict[str, str]) -> None:
    values = {k: v for k, v in values.items() if yaml.safe_load(yaml.safe_dump(v)) == v}
    got = _render({**LAB, **values})
    if isinstance(got, UserError):
        assert "\n" not in str(got) and "field '" in str(got)
        return
    twin = _render({**LAB, **{k: _twin(k, DECL[k][0], v) for k, v in values.items()}})
    assert not isinstance(twin, UserError), twin
    assert _shape(got) == _shape(twin), values
