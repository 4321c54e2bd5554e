"""Case photos on disk: ``data_dir/photos/{sha256}``, the id is the hash of the content.

Only JPEG, PNG and WebP, told by their first bytes (never by a file name or a client's
Content-Type), so nothing a browser would run is ever stored or served as an image. Files are
0600 in a 0700 directory and never executable; a photo is read in chunks and refused as soon
as it passes the cap, so nobody can make the server hold an unbounded upload. Two uploads of
the same picture are one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO

from ingest.datadir import FILE_MODE, private_dir

CHUNK = 64 * 1024
PHOTO_ID = re.compile(r"^[0-9a-f]{64}$")
SNIFF_BYTES = 12


class PhotoTooLarge(ValueError):
    """Over the cap (the API answers 413 ``too_large``)."""


class UnsupportedType(ValueError):
    """Not a JPEG, PNG or WebP (the API answers 415 ``unsupported_type``)."""


def sniff(head: bytes) -> str | None:
    """The image type of content starting with ``head`` (at least 12 bytes), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= SNIFF_BYTES and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class PhotoStore:
    """The photos directory, with the size cap of one photo."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def save(self, source: BinaryIO) -> str:
        """Read ``source`` in chunks and store it; its id. PhotoTooLarge past the cap,
        UnsupportedType if its first bytes are no image of ours. Blocking: call in a thread."""
        private_dir(self.directory)
        digest = hashlib.sha256()
        fd, tmp = _temporary(self.directory)
        size = 0
        head = b""
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise PhotoTooLarge(f"a photo may have at most {self.max_bytes} bytes")
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                        if len(head) >= SNIFF_BYTES and sniff(head) is None:
                            raise UnsupportedType("only JPEG, PNG and WebP photos")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if sniff(head) is None:  # shorter than a header
                raise UnsupportedType("only JPEG, PNG and WebP photos")
            photo_id = digest.hexdigest()
            os.replace(tmp, self.directory / photo_id)
            # The rename itself made durable before the case names the photo (a power cut
            # must not leave a case pointing at a file that is gone).
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return photo_id
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read(self, photo_id: str) -> tuple[bytes, str] | None:
        """The bytes and type of a stored photo; None if there is none (or the id is no id)."""
        if not PHOTO_ID.fullmatch(photo_id):
            return None
        try:
            data = (self.directory / photo_id).read_bytes()
        except FileNotFoundError:
            return None
        kind = sniff(data[:SNIFF_BYTES])
        return None if kind is None else (data, kind)


def _temporary(directory: Path) -> tuple[int, str]:
    """A new file for writing in ``directory``, 0600 (never executable) from its first moment."""
    for _ in range(100):
        path = directory / f".upload-{os.urandom(8).hex()}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        return fd, str(path)
    raise OSError("could not create a temporary photo file")
