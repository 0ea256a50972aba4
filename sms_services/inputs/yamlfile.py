"""Reading YAML with errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sms_services.errors import UserError


def load_mapping(path: Path) -> dict[str, Any]:
    """Load a YAML file whose top level must be a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}:{line}: malformed YAML ({err.problem}); fix the syntax") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: malformed YAML ({err}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping, found {type(data).__name__}")
    return data


def one_line(text: str) -> str:
    """``text`` with every unprintable character escaped, so a message stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class Fields:
    """Typed access to one mapping, so every bad field names file and key path."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str = "") -> None:
        self.data = data
        self.path = path
        self.prefix = prefix

    def _name(self, key: str) -> str:
        # A key is input too: a newline in it must not split the message.
        return one_line(f"{self.prefix}{key}")

    def fail(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.path}: field '{self._name(key)}' {problem}")

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"is not a known field (known: {', '.join(sorted(allowed))})")

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any, required: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(key, "is missing; add it")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be a {want}, found {type(value).__name__} {value!r}")
        return value

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key, (str, int, float), default, required)
        return value if value is None else str(value)

    def int(self, key: str, default: int | None = None, *, required: bool = False) -> int:
        return self._get(key, int, default, required)

    def bool(self, key: str, default: bool = False) -> bool:
        return self._get(key, bool, default, False)

    def list_of_str(self, key: str, *, required: bool = False) -> list[str]:
        value = self._get(key, list, [], required)
        for i, item in enumerate(value):
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise self.fail(f"{key}[{i}]", f"must be a string, found {item!r}")
        return [str(v) for v in value]

    def mapping(self, key: str, *, required: bool = False) -> Fields:
        value = self._get(key, dict, {}, required)
        return Fields(value, self.path, f"{self._name(key)}.")

    def list_of_mappings(self, key: str) -> list[Fields]:
        value = self._get(key, list, [], False)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"must be a mapping, found {item!r}")
            out.append(Fields(item, self.path, f"{self._name(key)}[{i}]."))
        return out
