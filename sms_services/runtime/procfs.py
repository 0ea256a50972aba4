"""The process table, read from /proc: small enough for the lease renewer to import (no
Apptainer, no YAML), and one parser of /proc/PID/stat for everything that needs it."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first), [] when it is gone.
    The name is cut at its last ')': a process may name itself with spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def ended(pid: int) -> bool:
    """Gone, or a zombie (it has exited; nobody reaped it yet)."""
    return proc_stat(pid)[:1] in ([], ["Z"])


def start_time(pid: int) -> str:
    """When ``pid`` started (field 22 of /proc/PID/stat), '' when it is gone: with the pid,
    it names a process across pid reuse."""
    fields = proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def comm(pid: int) -> str:
    """The process's name ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def parent(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (no pstree on a minimal host)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(parent(int(entry.name)), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
