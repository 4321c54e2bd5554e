"""The spool's record: one batch of line protocol on disk, whole or recognisably not.

A segment of the spool is a run of records, one per batch, with nothing between them::

    magic    4 bytes  b"CSP1"
    length   u32 LE   bytes in the body
    lines    u32 LE   lines in the batch
    crc      u32 LE   CRC32 of the 8 bytes of length and lines, then of the body
    body     length bytes: the batch's lines joined with "\\n", UTF-8 (no trailing newline)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import BinaryIO

MAGIC = b"CSP1"
_HEADER = struct.Struct("<4sIII")
HEADER_BYTES = _HEADER.size
_COUNTS = struct.Struct("<II")


def encode_record(lines: Sequence[str]) -> bytes:
    """One record (header and body) holding ``lines``."""
    if not lines:
        raise ValueError("an empty batch has nothing to spool")
    for line in lines:
        if "\n" in line:
            # The body separates lines with "\n"; such a line would come back as two.
            raise ValueError(f"a line to spool contains a newline: {line[:80]!r}")
    body = "\n".join(lines).encode("utf-8")
    if len(body) >= 2**32 or len(lines) >= 2**32:
        raise ValueError("a batch this large cannot be spooled as one record")
    counts = _COUNTS.pack(len(body), len(lines))
    crc = zlib.crc32(body, zlib.crc32(counts))
    return _HEADER.pack(MAGIC, len(body), len(lines), crc) + body


def read_record(f: BinaryIO, offset: int, limit: int) -> tuple[bytes, int] | None:
    """The body and line count of the whole record at ``offset``, or None if it is not one."""
    if offset + HEADER_BYTES > limit:
        return None
    f.seek(offset)
    header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    magic, length, count, crc = _HEADER.unpack(header)
    # Check the length against the file before reading, so garbage cannot ask for gigabytes.
    if magic != MAGIC or offset + HEADER_BYTES + length > limit:
        return None
    body = f.read(length)
    if len(body) < length or zlib.crc32(body, zlib.crc32(_COUNTS.pack(length, count))) != crc:
        return None
    return body, count
