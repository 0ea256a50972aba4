"""The types a site variable may have, and the checks that keep a value to one config token.

Site values are rendered into postfix, rsyslog, Slurm and chrony configs and
into ``site.env``. Quoting cannot protect every one of those formats, so every
value is held to a narrow type when the site is loaded: a name is one word, an
address parses as an address, and no accepted string contains a newline, a
quote, a backslash, a ``#`` or a space. A fragment declares the type of each
variable it reads (``type:`` in its ``site:`` entry, with ``min``/``max`` for
integers, ``choices`` for a choice and ``empty: true`` when an empty string
turns the feature off); ``list of T`` takes a YAML list of T.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIST = "list of "

# Regex bodies, anchored by fullmatch here and by ^...$ in the published JSON schema.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
_IPV4 = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
_PORT = r"[0-9]{1,5}"
PATTERNS = {
    "hostname": _HOSTNAME,
    "domain": _HOSTNAME,
    "name": r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
    "interface": r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}",
    "mac": r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}",
    # Printable ASCII without space, quotes, backslash or '#': safe bare in every format we render.
    "word": r"[!$%&()*+,./0-9:;<=>?@A-Z\[\]^_`a-z{|}~-]{1,128}",
    "host:port": rf"(?:{_HOSTNAME}|{_IPV4})(?::{_PORT})?",
    # Absolute; no segment starts with '.', so no '.' or '..' and nothing hidden.
    "path": r"(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}){1,32}",
    # A file on the admin's host, absolute or relative to the site file ('..' allowed: it is read, never written).
    "file": r"/?(?:[A-Za-z0-9_.+-]{1,255}/){0,32}[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,254}",
    "relay": rf"(?:\[(?:{_HOSTNAME}|{_IPV4})\]|{_HOSTNAME}|{_IPV4})(?::{_PORT})?",
}


@dataclass(frozen=True)
class SiteType:
    """A site variable's type, as declared in its fragment."""

    base: str
    is_list: bool = False
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] = ()
    empty: bool = False  # "" is accepted too (the feature is off)

    @property
    def spec(self) -> str:
        """The type as an admin reads it, e.g. ``integer 1-65535 or empty``."""
        text = self.base
        if self.base == "integer" and (self.min is not None or self.max is not None):
            text += f" {'' if self.min is None else self.min}-{'' if self.max is None else self.max}"
        if self.base == "choice":
            text += " (" + ", ".join(self.choices) + ")"
        text = (LIST + text) if self.is_list else text
        return text + (" or empty" if self.empty else "")

    def expected(self) -> str:
        """What a value must be, for a message: 'must be <expected>'."""
        one = _TYPES[self.base].what(self)
        text = f"a list of {one}" if self.is_list else one
        return text + (" (or \"\" for none)" if self.empty else "")

    def problem(self, value: Any) -> tuple[str, str] | None:
        """None if ``value`` is of this type, else (where below the field, what was expected)."""
        if self.empty and value == "":
            return None
        if not self.is_list:
            return _TYPES[self.base].check(value, self)
        if not isinstance(value, list):
            return "", self.expected()
        for i, item in enumerate(value):
            bad = _TYPES[self.base].check(item, self)
            if bad is not None:
                return f"[{i}]{bad[0]}", bad[1]
        return None

    def json_schema(self) -> dict[str, Any]:
        """The same type for editors (docs/site.schema.json)."""
        one = _TYPES[self.base].json(self)
        schema = {"type": "array", "items": one} if self.is_list else one
        return {"anyOf": [{"const": ""}, schema]} if self.empty else schema


@dataclass(frozen=True)
class _Kind:
    doc: str  # for the reference page and the README
    what: Callable[[SiteType], str]
    check: Callable[[Any, SiteType], tuple[str, str] | None]
    json: Callable[[SiteType], dict[str, Any]]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _match(kind: str, v: Any) -> bool:
    return _is_str(v) and len(v) <= 253 and re.fullmatch(PATTERNS[kind], v, re.ASCII) is not None


def _ports_ok(v: str) -> bool:
    """The port after the last ':' (if any, outside brackets) is 1-65535."""
    tail = v.rsplit("]", 1)[-1]
    return ":" not in tail or 0 < int(tail.rsplit(":", 1)[1]) < 65536


def _address(v: Any) -> bool:
    # The character set first: ipaddress takes an IPv6 scope id ("fe80::1%<anything>").
    if not (_is_str(v) and re.fullmatch(r"[0-9A-Fa-f.:]{2,45}", v, re.ASCII)):
        return False
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def _network(v: Any) -> bool:
    if not (_is_str(v) and re.fullmatch(r"[0-9A-Fa-f.:]{2,45}/[0-9]{1,3}", v, re.ASCII)):
        return False
    try:
        ipaddress.ip_network(v)
        return True
    except ValueError:
        return False


def _scalar(test: Callable[[Any], bool], what: str) -> Callable[[Any, SiteType], tuple[str, str] | None]:
    return lambda v, t: None if test(v) else ("", what)


def _pattern_json(kind: str) -> Callable[[SiteType], dict[str, Any]]:
    return lambda t: {"type": "string", "maxLength": 253, "pattern": f"^(?:{PATTERNS[kind]})$"}


def _int_check(v: Any, t: SiteType) -> tuple[str, str] | None:
    ok = _is_int(v) and (t.min is None or v >= t.min) and (t.max is None or v <= t.max)
    return None if ok else ("", _int_what(t))


def _int_what(t: SiteType) -> str:
    if t.min is not None and t.max is not None:
        return f"an integer from {t.min} to {t.max}"
    if t.min is not None:
        return f"an integer of at least {t.min}"
    if t.max is not None:
        return f"an integer of at most {t.max}"
    return "an integer"


def _int_json(t: SiteType) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer"}
    if t.min is not None:
        out["minimum"] = t.min
    if t.max is not None:
        out["maximum"] = t.max
    return out


_NODE_KEYS = ("name", "address", "cpus", "memory")
_NODE_WHAT = "a node {name, address, cpus, memory}"


def _node_check(v: Any, t: SiteType) -> tuple[str, str] | None:
    if not isinstance(v, dict):
        return "", _NODE_WHAT
    extra = sorted(set(map(str, v)) - set(_NODE_KEYS))
    if extra:
        return f".{extra[0]}", f"absent: a node has only {', '.join(_NODE_KEYS)}"
    for key, kind in (("name", "nodename"), ("address", "address")):
        if key not in v:
            return f".{key}", "set: a node needs a name and an address"
        bad = _TYPES[kind].check(v[key], t)
        if bad:
            return f".{key}", bad[1]
    for key in ("cpus", "memory"):
        if key in v and not (_is_int(v[key]) and v[key] >= 1):
            return f".{key}", "a positive integer" + (" (MB)" if key == "memory" else "")
    return None


def _node_json(t: SiteType) -> dict[str, Any]:
    pos = {"type": "integer", "minimum": 1}
    return {"type": "object", "additionalProperties": False, "required": ["name", "address"],
            "properties": {"name": _TYPES["nodename"].json(t), "address": _TYPES["address"].json(t),
                           "cpus": pos, "memory": pos}}


def _kind(kind: str, doc: str, what: str) -> _Kind:
    return _Kind(doc, lambda t: what, _scalar(lambda v: _match(kind, v), what), _pattern_json(kind))


_TYPES: dict[str, _Kind] = {
    "address": _Kind("an IPv4 or IPv6 address", lambda t: "an IP address like 198.18.0.2",
                     _scalar(_address, "an IP address like 198.18.0.2"),
                     lambda t: {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
    "network": _Kind("a network in CIDR form, host bits zero",
                     lambda t: "a network like 198.18.0.0/24 (host bits zero)",
                     _scalar(_network, "a network like 198.18.0.0/24 (host bits zero)"),
                     lambda t: {"type": "string", "pattern": r"^[0-9A-Fa-f.:]+/[0-9]{1,3}$"}),
    "hostname": _kind("hostname", "a host name: letters, digits and '-', dot-separated labels",
                      "a host name like sms-services or sms.example.org"),
    "nodename": _kind("hostname", "a host name (a node's)", "a host name like c1 or node001"),
    "domain": _kind("domain", "a DNS domain", "a DNS domain like cluster.example.org"),
    "host": _Kind("a host name or an IP address", lambda t: "a host name or an IP address",
                  _scalar(lambda v: _match("hostname", v) or _address(v), "a host name or an IP address"),
                  lambda t: {"type": "string", "anyOf": [{"pattern": f"^(?:{_HOSTNAME})$"},
                                                         {"format": "ipv4"}, {"format": "ipv6"}]}),
    "host:port": _Kind("a host name or IPv4 address with an optional :port",
                       lambda t: "host or host:port (port 1-65535) like syslog.example.org:514",
                       _scalar(lambda v: _match("host:port", v) and _ports_ok(v),
                               "host or host:port (port 1-65535) like syslog.example.org:514"),
                       _pattern_json("host:port")),
    "relay": _Kind("a mail relay as postfix's relayhost: host, [host], host:port or [host]:port",
                   lambda t: "a relay like [smtp.example.org]:25 or smtp.example.org",
                   _scalar(lambda v: _match("relay", v) and _ports_ok(v),
                           "a relay like [smtp.example.org]:25 or smtp.example.org"),
                   _pattern_json("relay")),
    "integer": _Kind("a whole number, within min and max when given", _int_what, _int_check, _int_json),
    "boolean": _Kind("true or false", lambda t: "true or false",
                     _scalar(lambda v: isinstance(v, bool), "true or false"),
                     lambda t: {"type": "boolean"}),
    "name": _kind("name", "one word: letters, digits, '_', '.', '-' (up to 63)",
                  "one word of letters, digits, '_', '.' and '-' (up to 63)"),
    "interface": _kind("interface", "a network interface name (up to 15 characters)",
                       "an interface name like eth1 (up to 15 characters)"),
    "mac": _kind("mac", "a hardware address like 02:00:c6:12:00:02",
                 "a hardware address like 02:00:c6:12:00:02 (quoted in YAML)"),
    "path": _kind("path", "an absolute path: '/'-separated names of letters, digits, '_', '.', '+', '-' "
                  "(none starting with '.')", "an absolute path like /etc/warewulf/tls/warewulf.crt"),
    "file": _kind("file", "a file on this host, absolute or relative to the site file: '/'-separated names of "
                  "letters, digits, '_', '.', '+', '-'", "a file path like slurm/slurm.conf or /etc/slurm/slurm.conf"),
    "word": _kind("word", "printable ASCII without spaces, quotes, '\\' or '#' (1-128), e.g. a password",
                  "printable ASCII without spaces, quotes, '\\' or '#' (1-128 characters)"),
    "choice": _Kind("one of the fragment's choices",
                    lambda t: "one of " + ", ".join(t.choices),
                    lambda v, t: None if _is_str(v) and v in t.choices else ("", "one of " + ", ".join(t.choices)),
                    lambda t: {"enum": list(t.choices)}),
    "node": _Kind("a compute node: {name: host name, address: IP address, cpus, memory (MB)}",
                  lambda t: _NODE_WHAT, _node_check, _node_json),
}
# Types a fragment may declare ("nodename" only serves "node").
TYPES = {k: v.doc for k, v in _TYPES.items() if k != "nodename"}
TYPE_SPECS = sorted([*TYPES, *(LIST + k for k in TYPES)])


def parse_type(spec: Any, fields: dict[str, Any]) -> SiteType:
    """A fragment's ``type`` and its options; ValueError says what is wrong (one line)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"must name a type ({', '.join(TYPES)}, or 'list of' one), found {spec!r}")
    is_list = spec.startswith(LIST)
    base = spec[len(LIST):] if is_list else spec
    if base not in TYPES:
        raise ValueError(f"names unknown type {spec!r} (known: {', '.join(TYPES)}, or 'list of' one)")
    lo, hi, choices, empty = (fields.get("min"), fields.get("max"), fields.get("choices"),
                              fields.get("empty", False))
    if (lo is not None or hi is not None) and base != "integer":
        raise ValueError("min and max belong to an integer")
    for v in (lo, hi):
        if v is not None and not _is_int(v):
            raise ValueError(f"min and max must be integers, found {v!r}")
    if choices is not None and base != "choice":
        raise ValueError("choices belong to a choice")
    if base == "choice":
        if not isinstance(choices, list) or not choices or not all(
                _is_str(c) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./:-]*", c) for c in choices):
            raise ValueError("a choice needs 'choices': a list of words")
    if not isinstance(empty, bool):
        raise ValueError(f"empty must be true or false, found {empty!r}")
    return SiteType(base, is_list, lo, hi, tuple(choices or ()), empty)


def shown(value: Any, secret: bool = False) -> str:
    """A value for a one-line message: repr (so a newline shows as \\n), cut short; never a secret."""
    if secret:
        return "a value (not shown: secret)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
