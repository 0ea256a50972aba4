"""A SIF's global header and object descriptors, read in Python, and the digest of what a signature covers.

The layout is Apptainer's sif library (github.com/apptainer/sif, ``pkg/sif``):
a 128-byte global header, a table of fixed-size descriptors, then the objects'
data. A signature (``pkg/integrity``) covers the header's launch script, magic,
version and image ID, and for each object of the signed group its descriptor
(type, id, link, size, times, name, type-specific "extra" fields) and its data.

Reading it here, rather than parsing ``apptainer sif list``, lets the content
digest cover exactly those bytes and lets a truncated file be named as such
before Apptainer says "EOF".
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from sms_services.errors import UserError

# launch script, magic, version, arch, id, created, modified, descriptors free/total/offset/size,
# data offset/size (pkg/sif/sif.go: header).
HEADER = struct.Struct("<32s10s3s3s16s8q")
# data type, used, id, group, link, offset, size, size with padding, created, modified, uid, gid,
# name, extra (pkg/sif/descriptor.go: rawDescriptor).
DESCRIPTOR = struct.Struct("<i?III7q128s384s")
MAGIC = b"SIF_MAGIC\x00"
VERSION = b"01\x00"
GROUP_MASK = 0xF0000000
SIGNATURE = 0x4005
DATA_TYPES = {0x4001: "Def.FILE", 0x4002: "Env.Vars", 0x4003: "JSON.Labels", 0x4004: "FS", SIGNATURE: "Signature",
              0x4006: "JSON.Generic", 0x4007: "Generic/Raw", 0x4008: "Cryptographic Message", 0x4009: "SBOM",
              0x400A: "OCI.RootIndex", 0x400B: "OCI.Blob"}
MAX_DESCRIPTORS = 1 << 16  # Apptainer makes 48; a huge count is a damaged or hostile header


@dataclass(frozen=True)
class Descriptor:
    data_type: int
    id: int
    group: int  # raw, with the group mask bit
    link: int  # raw, with the group mask bit when it links to a group
    offset: int
    size: int
    created: int
    uid: int
    gid: int
    name: bytes
    extra: bytes

    @property
    def kind(self) -> str:
        return DATA_TYPES.get(self.data_type, "Unknown")

    @property
    def is_signature(self) -> bool:
        return self.data_type == SIGNATURE

    @property
    def start(self) -> int:
        return self.offset

    @property
    def end(self) -> int:
        return self.offset + self.size

    def signed_fields(self) -> bytes:
        """The descriptor's fields a signature covers (pkg/sif: GetIntegrityReader), with the
        absolute id and group besides: neither changes when a signature is added or removed."""
        return (struct.pack("<i?IIIqqqq", self.data_type, True, self.id, self.group, self.link, self.size,
                            self.created, self.uid, self.gid) + self.name + self.extra)


@dataclass(frozen=True)
class Sif:
    path: Path
    launch: bytes
    magic: bytes
    version: bytes
    arch: bytes
    uuid: bytes
    objects: tuple[Descriptor, ...]

    @property
    def signatures(self) -> list[Descriptor]:
        return [o for o in self.objects if o.is_signature]

    def signed_header(self) -> bytes:
        """The header's fields a signature covers (launch script, magic, version, id), and the
        architecture: none of them changes when the image is signed again."""
        return self.launch + self.magic + self.version + self.arch + self.uuid


def read_sif(path: Path) -> Sif:
    """The header and used descriptors of ``path``; one line when it is not a whole SIF."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(HEADER.size)
            if len(raw) < HEADER.size:
                raise UserError(f"{path}: not a SIF (shorter than a SIF header)")
            launch, magic, version, arch, uuid, _c, _m, _free, total, d_off, d_size, _do, _ds = HEADER.unpack(raw)
            if magic != MAGIC:
                raise UserError(f"{path}: not a SIF (no SIF magic in its header)")
            if version != VERSION:
                shown = version.rstrip(bytes(1)).decode(errors="replace")
                raise UserError(f"{path}: SIF version {shown!r} unknown (only 01)")
            if not 0 <= total <= MAX_DESCRIPTORS or d_size < total * DESCRIPTOR.size or d_off < HEADER.size:
                raise UserError(f"{path}: damaged SIF header (descriptor table {total} x {DESCRIPTOR.size} "
                                f"bytes in {d_size} at {d_off})")
            if d_off + total * DESCRIPTOR.size > size:
                raise UserError(f"{path}: truncated SIF (its descriptor table ends past the end of the file)")
            fh.seek(d_off)
            table = fh.read(total * DESCRIPTOR.size)
    except OSError as err:
        raise UserError(f"{path}: cannot read the SIF ({err.strerror})") from None
    objects = []
    for fields in DESCRIPTOR.iter_unpack(table):
        dtype, used, oid, group, link, offset, osize, _pad, created, _mod, uid, gid, name, extra = fields
        if not used:
            continue
        if offset < 0 or osize < 0:
            raise UserError(f"{path}: damaged SIF (object {oid} has a negative offset or size)")
        if offset + osize > size:
            raise UserError(f"{path}: truncated SIF (object {oid} ends at byte {offset + osize}, "
                            f"the file at {size}); copy or pull it again")
        objects.append(Descriptor(dtype, oid, group, link, offset, osize, created, uid, gid, name, extra))
    return Sif(path, launch, magic, version, arch, uuid, tuple(sorted(objects, key=lambda o: o.id)))


def content_digest(path: Path) -> str:
    """sha256 over the header, every descriptor and every object's data, except signatures.

    Everything a signature covers (and a little more: objects no signature covers,
    the architecture), so two files with one digest carry the same signed content;
    adding or removing a signature does not change it, so a verify report made on
    the build-signed candidate still names the release-signed image.
    """
    sif = read_sif(path)
    h = hashlib.sha256(b"sms-services sif content 2\x00")
    h.update(sif.signed_header())
    with open(path, "rb") as fh:
        for obj in sif.objects:
            if obj.is_signature:
                continue
            h.update(obj.signed_fields())
            fh.seek(obj.offset)
            left = obj.size
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    raise UserError(f"{path}: truncated SIF (object {obj.id} ends past the end of the file)")
                h.update(chunk)
                left -= len(chunk)
    return "sha256:" + h.hexdigest()
