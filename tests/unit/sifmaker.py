"""For the trust tests: SIF files made in the test, byte for byte in the layout of Apptainer's sif
library, and an Apptainer that answers ``verify`` as told."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from sms_services.apptainer import Result
from sms_services.trust.sif import DESCRIPTOR, HEADER, MAGIC, VERSION

LAUNCH = b"#!/usr/bin/env run-singularity\n"
DEFFILE, PARTITION, SIGNATURE = 0x4001, 0x4004, 0x4005
GROUP = 0xF0000000
# An object: (data type, group id (0: none), linked id, data, name, extra).
Obj = tuple[int, int, int, bytes, bytes, bytes]
IMAGE: list[Obj] = [
    (DEFFILE, 1, 0, b"bootstrap: scratch\n", b"deffile", b""),
    (PARTITION, 1, 0, b"squashfs root filesystem" * 40, b"rootfs", struct.pack("<iii", 1, 2, 2)),
]
SIGNED: list[Obj] = [*IMAGE, (SIGNATURE, 0, GROUP | 1, b"a DSSE envelope", b"", b"")]


def write_sif(path: Path, objects: list[Obj], *, launch: bytes = LAUNCH, uuid: bytes = b"\x07" * 16,
              slots: int = 8) -> Path:
    """A SIF: header, ``slots`` descriptors (the unused ones zero), then each object's data."""
    d_off = HEADER.size
    data_off = d_off + slots * DESCRIPTOR.size
    table, data = b"", b""
    for i, (dtype, group, link, body, name, extra) in enumerate(objects, start=1):
        table += DESCRIPTOR.pack(dtype, True, i, GROUP | group if group else GROUP, link, data_off + len(data),
                                 len(body), len(body), 1700000000, 1700000000, 0, 0, name, extra)
        data += body
    table += bytes(DESCRIPTOR.size * (slots - len(objects)))
    header = HEADER.pack(launch, MAGIC, VERSION, b"02\x00", uuid, 1700000000, 1700000000, slots - len(objects),
                         slots, d_off, slots * DESCRIPTOR.size, data_off, len(data))
    path.write_bytes(header + table + data)
    return path



class FakeApptainer:
    """Records every call; ``verify`` fails with ``verdict(args)`` as Apptainer's reason ('' = OK)."""

    binary = "apptainer"

    def __init__(self, verdict: Callable[[list[str]], str] = lambda args: "") -> None:
        self.calls: list[list[str]] = []
        self.verdict = verdict

    def run(self, args: list[str], *, timeout: float | None = None, **kw) -> Result:
        self.calls.append(args)
        if args[0] == "verify":
            err = self.verdict(args)
            return Result(255 if err else 0, "", f"INFO:    Verifying image\nFATAL:   {err}\n" if err else "")
        return Result(0, "", "")

    def did(self, verb: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == verb or c[:2] == ["sif", verb]]
