"""Progress lines of the bench sessions (nox -s load, nox -s ha): each with the seconds since the start."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console


def elapsed_say(console: Console) -> Callable[[str], None]:
    start = time.monotonic()

    def say(line: str) -> None:
        console.print(f"[dim]{time.monotonic() - start:7.1f} s[/dim] {line}", highlight=False)
    return say
