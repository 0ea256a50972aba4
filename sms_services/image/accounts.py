"""System accounts: what an image brings, and carrying them over to another image.

Debian suites number system accounts differently (munge, postfix and _chrony
are 99x on trixie and other numbers on sid), while the overlay's files and
SMS-mgmt's synced passwd keep the old numbers. A cutover across releases moves
both to the new image's numbers, by name.
"""

from __future__ import annotations

from pathlib import Path

from sms_services.apptainer import Apptainer, last_line
from sms_services.errors import UserError

Accounts = tuple[str, str, str]  # passwd, group, shadow


def image_accounts(apptainer: Apptainer, sif: Path) -> Accounts:
    """An image's own /etc/passwd, /etc/group and /etc/shadow (one exec, not three)."""
    files = ("/etc/passwd", "/etc/group", "/etc/shadow")
    res = apptainer.exec(sif, ["sh", "-c", 'for f; do cat "$f" || exit 1; echo "\f"; done', "sh", *files])
    parts = res.stdout.split("\f\n")
    if res.returncode != 0 or len(parts) != 4:
        raise UserError(f"{sif}: cannot read its accounts ({last_line(res.stderr)})")
    return parts[0], parts[1], parts[2]


def ids(text: str) -> dict[str, int]:
    """Name -> number of a passwd or group file."""
    out = {}
    for fields in (line.split(":") for line in text.splitlines()):
        if len(fields) > 2 and fields[2].isdigit():
            out[fields[0]] = int(fields[2])
    return out


def id_maps(old: Accounts, new: Accounts) -> tuple[dict[int, int], dict[int, int]]:
    """Old id -> new id, for the accounts both have under the same name."""
    maps = []
    for a, b in ((ids(old[0]), ids(new[0])), (ids(old[1]), ids(new[1]))):
        maps.append({a[n]: b[n] for n in a.keys() & b.keys() if a[n] != b[n]})
    return maps[0], maps[1]


def owner_of(passwd: str, name: str) -> tuple[int, int]:
    """(uid, gid) of account ``name``; (0, 0) when it has none."""
    for fields in (line.split(":") for line in passwd.splitlines()):
        if fields[0] == name and len(fields) > 3:
            return int(fields[2]), int(fields[3])
    return 0, 0


def merge(image: Accounts, current: Accounts) -> dict[str, str]:
    """The image's system accounts, plus every entry of ``current`` (the cluster's users
    synced from SMS-mgmt) whose name the image does not have: /etc path -> content."""
    out = {}
    for path, mine, theirs in zip(("/etc/passwd", "/etc/group", "/etc/shadow"), image, current, strict=True):
        names = {line.split(":")[0] for line in mine.splitlines()}
        extra = [line for line in theirs.splitlines() if line and line.split(":")[0] not in names]
        out[path] = mine.rstrip("\n") + "\n" + "".join(line + "\n" for line in extra)
    return out
