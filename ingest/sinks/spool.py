"""An append-only spool on disk for batches InfluxDB could not take, replayed in order later.

Layout of the spool directory::

    spool-00000000000000000007.lp   segments, oldest first (20-digit sequence numbers)
    spool-00000000000000000008.lp   the newest one is the one appends go to
    position                        "v1 <segment> <offset>\\n": the next batch to replay
    lock                            flock()ed while a Spool has the directory open

A segment is a run of records, one per batch, with nothing between them (``records``).

Guarantees:

- ``append`` returns only after the record is flushed and fsync()ed (and the directory
  fsync()ed when it made a new segment), so a caller may acknowledge the messages behind a
  batch as soon as it returns. Appends rotate to a new segment past ``segment_bytes``.
- The spool never drops data to make room: past ``max_bytes`` on disk, ``append`` raises
  ``SpoolFull`` without writing anything and counts a refusal; the caller pushes back.
- What would not read back identically is refused with ``ValueError`` before anything is
  written: an empty batch, a line containing "\\n", text that is not encodable as UTF-8.
- A crash in the middle of an append leaves at most a torn record at the end of the newest
  segment. Opening the directory scans every record and checks its CRC, cuts the file back to
  its last whole record and counts ``torn_tails``; a bad record in an older segment (which a
  crash cannot produce: the disk changed it) cuts that segment the same way, counted in
  ``corrupt_segments`` and logged as an error. Garbage is never replayed.
- Replay is at-least-once: ``peek`` gives the oldest batch not yet committed, ``commit``
  persists the position after it (written to a temporary file, fsync()ed, renamed over
  ``position``, directory fsync()ed). A crash between a write to InfluxDB and ``commit``
  replays that batch again, which is harmless: InfluxDB keeps one point per series and
  timestamp, so the rewrite overwrites the point with itself. A lost or unreadable
  ``position`` file can only cause more of that, never a skip: a segment is deleted only
  after a position past it is durable.
- Fully replayed segments are deleted by ``commit``, so the disk is given back as replay
  goes on. ``size_bytes`` counts the segment files (what ``max_bytes`` caps), including the
  replayed part of the oldest segment until that segment is deleted.
- Memory stays bounded: opening reads one record at a time, ``peek`` reads one record.

Threads: one thread may append while another peeks and commits. A lock guards the shared
bookkeeping only; the file I/O of an append and of a replay happen outside it, so a slow
fsync on one side does not stall the other. A reader sees a record only once its append
has been fsync()ed.

Why one module (over 400 lines): append, peek, commit and the opening scan share one lock, one
position file and the one crash argument written above; the record format is ``records``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from ingest.datadir import FILE_MODE, create_private, private_dir
from ingest.sinks.records import HEADER_BYTES, encode_record, read_record

log = logging.getLogger(__name__)

_SEGMENT_NAME = re.compile(r"^spool-(\d{20})\.lp$")
_POSITION = "position"
_POSITION_TMP = "position.tmp"
_LOCK = "lock"

DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024


class SpoolError(Exception):
    """Something the spool cannot do."""


class SpoolFull(SpoolError):
    """The batch would take the spool past its size cap; nothing was written."""


class SpoolLocked(SpoolError):
    """Another Spool (in this process or another) has the directory open."""


class SpoolCorrupt(SpoolError):
    """A record that was whole when the spool was opened no longer reads back."""


@dataclass(frozen=True)
class SpoolPosition:
    """Where a spooled batch sits; opaque to callers."""

    segment: int
    offset: int
    end: int


@dataclass(frozen=True)
class SpooledBatch:
    """A batch read back from the spool, to be written and then committed."""

    lines: tuple[str, ...]
    position: SpoolPosition


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int = 0  # bytes of whole, fsync()ed records: readers never look past this
    batches: int = 0
    lines: int = 0


def segment_name(seq: int) -> str:
    """The file name of segment ``seq``."""
    return f"spool-{seq:020d}.lp"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A directory of append-only segment files holding whole batches; see the module doc."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.torn_tails = 0
        self.corrupt_segments = 0
        self.full_refusals = 0
        self.quarantined = 0  # corrupt segments set aside during replay (quarantine_head)

        self._lock = threading.Lock()  # the bookkeeping below
        self._write_lock = threading.Lock()  # one append at a time
        self._read_lock = threading.Lock()  # one peek/commit at a time
        self._segments: list[_Segment] = []  # oldest first; a spool has few (max / segment)
        self._read_seq = 0  # next batch to replay: segment, and offset in it ...
        self._read_offset = 0  # ... (segments numbered below _read_seq are all replayed)
        self._tail: _Segment | None = None  # where appends go; None: start a new one
        self._tail_file: BinaryIO | None = None
        self._appending = False  # an append is writing into _tail outside the lock
        self._next_seq = 0
        self._size_bytes = 0
        self._batches = 0
        self._lines = 0
        self._closed = False

        private_dir(self.directory)
        self._lock_fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"{self.directory} is in use by another spool") from None
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ----------------------------------------------------------------------------

    def _open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _POSITION_TMP).unlink()
        position = self._read_position()
        seqs = sorted(
            int(m.group(1))
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) is not None
        )
        read_seq, read_offset = position if position is not None else (0, 0)
        for i, seq in enumerate(seqs):
            path = self.directory / segment_name(seq)
            if seq < read_seq:
                path.unlink()  # replayed; its deletion was lost in a crash
                continue
            upto = read_offset if seq == read_seq else 0
            segment, before = self._scan(path, seq, last=i == len(seqs) - 1, upto=upto)
            if before is None:
                log.warning(
                    "spool position %d:%d is not a record boundary; replaying %s from its start",
                    seq,
                    read_offset,
                    path.name,
                )
                read_offset, before = 0, (0, 0)
            self._segments.append(segment)
            self._size_bytes += segment.size
            # Batches before the position in its segment are replayed already.
            self._batches += segment.batches - before[0]
            self._lines += segment.lines - before[1]
        self._read_seq, self._read_offset = read_seq, read_offset
        self._next_seq = max([read_seq + 1] + [s.seq + 1 for s in self._segments])
        if self._segments:
            self._tail = self._segments[-1]
        doomed, position_changed = self._collect_locked()
        if doomed or position is None or position_changed:
            self._write_position(self._read_seq, self._read_offset)
        for segment in doomed:
            segment.path.unlink()

    def _read_position(self) -> tuple[int, int] | None:
        try:
            text = (self.directory / _POSITION).read_text("ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("spool position unreadable (%s); replaying from the oldest segment", e)
            return None
        parts = text.split()
        if len(parts) == 3 and parts[0] == "v1" and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
        log.warning("spool position %r is not understood; replaying from the oldest segment", text)
        return None

    def _scan(
        self, path: Path, seq: int, *, last: bool, upto: int
    ) -> tuple[_Segment, tuple[int, int] | None]:
        """Check every record of a segment and cut off a bad tail.

        Also returns the batches and lines before offset ``upto``, or None if ``upto`` is not
        where a record starts (or ends the segment).
        """
        segment = _Segment(seq, path)
        before: tuple[int, int] | None = (0, 0) if upto == 0 else None
        with path.open("r+b") as f:
            file_size = os.fstat(f.fileno()).st_size
            offset = 0
            while (record := read_record(f, offset, file_size)) is not None:
                body, count = record
                offset += HEADER_BYTES + len(body)
                segment.batches += 1
                segment.lines += count
                if offset == upto:
                    before = (segment.batches, segment.lines)
            segment.size = offset
            if offset < file_size:
                if last:
                    self.torn_tails += 1
                    log.warning(
                        "spool %s: %d bytes of a torn append at the end ignored",
                        path.name,
                        file_size - offset,
                    )
                else:
                    self.corrupt_segments += 1
                    log.error(
                        "spool %s: unreadable record at offset %d; %d bytes after it dropped",
                        path.name,
                        offset,
                        file_size - offset,
                    )
                # Cut the file back so later appends follow the last whole record.
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        return segment, before

    # -- counters ---------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes in segment files on disk: what ``max_bytes`` caps."""
        with self._lock:
            return self._size_bytes

    @property
    def batches(self) -> int:
        """Batches spooled and not yet committed."""
        with self._lock:
            return self._batches

    @property
    def lines(self) -> int:
        """Lines spooled and not yet committed."""
        with self._lock:
            return self._lines

    @property
    def is_empty(self) -> bool:
        """Nothing waits to be replayed."""
        with self._lock:
            return self._batches == 0

    @property
    def segments(self) -> int:
        """Segment files on disk."""
        with self._lock:
            return len(self._segments)

    # -- appending --------------------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> None:
        """Write one batch durably (fsync()ed before returning); ``SpoolFull`` past the cap."""
        record = encode_record(lines)
        with self._write_lock:
            with self._lock:
                self._check_open()
                if self._size_bytes + len(record) > self.max_bytes:
                    self.full_refusals += 1
                    raise SpoolFull(
                        f"spool at {self._size_bytes} bytes; a {len(record)}-byte batch "
                        f"would pass the cap of {self.max_bytes}"
                    )
                tail = self._tail
                if tail is not None and tail.size and tail.size + len(record) > self.segment_bytes:
                    self._close_tail_locked()
                    tail = None
                new_seq = None
                if tail is None:
                    new_seq = self._next_seq
                    self._next_seq += 1
                self._appending = True
            try:
                if new_seq is not None:
                    tail = self._new_segment(new_seq)
                assert tail is not None
                self._write(tail, record)
            except BaseException:
                with self._lock:
                    self._appending = False
                raise
            with self._lock:
                tail.size += len(record)
                tail.batches += 1
                tail.lines += len(lines)
                self._size_bytes += len(record)
                self._batches += 1
                self._lines += len(lines)
                self._appending = False

    def _new_segment(self, seq: int) -> _Segment:
        segment = _Segment(seq, self.directory / segment_name(seq))
        f = os.fdopen(create_private(segment.path), "wb")
        try:
            os.fsync(f.fileno())
            # The file's name must survive a crash along with the records fsync()ed into it.
            _fsync_dir(self.directory)
        except BaseException:
            f.close()
            raise
        with self._lock:
            self._segments.append(segment)
            self._tail, self._tail_file = segment, f
        return segment

    def _write(self, tail: _Segment, record: bytes) -> None:
        f = self._tail_file
        if f is None:  # the tail segment came from a previous run: reopen it for appending
            f = self._tail_file = tail.path.open("ab")
        try:
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # Whatever reached the file is past tail.size, so no reader sees it; cut it off
            # if we can, and append to a fresh segment either way (after a failed fsync the
            # state of the file is unknown).
            with contextlib.suppress(OSError):
                f.truncate(tail.size)
            with self._lock:
                if self._tail is tail:
                    self._close_tail_locked()
            raise

    def _close_tail_locked(self) -> None:
        if self._tail_file is not None:
            with contextlib.suppress(OSError):
                self._tail_file.close()
        self._tail, self._tail_file = None, None

    # -- replaying --------------------------------------------------------------------------

    def peek(self) -> SpooledBatch | None:
        """The oldest batch not yet committed, or None; reads one record."""
        with self._read_lock:
            with self._lock:
                self._check_open()
                head = self._head_locked()
                if head is None:
                    return None
                segment, offset = head
                limit = segment.size
            with segment.path.open("rb") as f:
                record = read_record(f, offset, limit)
            if record is None:
                raise SpoolCorrupt(
                    f"spool {segment.path.name} offset {offset} no longer reads back; "
                    "reopening the spool drops the rest of that segment"
                )
            body, count = record
            lines = tuple(body.decode("utf-8").split("\n"))
            if len(lines) != count:
                raise SpoolCorrupt(f"spool {segment.path.name} offset {offset}: line count")
            end = offset + HEADER_BYTES + len(body)
            return SpooledBatch(lines, SpoolPosition(segment.seq, offset, end))

    def quarantine_head(self) -> str:
        """Set the oldest pending segment aside (renamed, kept for inspection); its name.

        For a segment that no longer reads back (``SpoolCorrupt`` from ``peek``): what is
        left of it cannot be replayed, and the segments after it must not wait for it.
        """
        with self._read_lock:
            with self._lock:
                self._check_open()
                head = self._head_locked()
                if head is None:
                    raise SpoolError("nothing pending to set aside")
                segment, offset = head
                if segment is self._tail:
                    self._close_tail_locked()
                self._segments.remove(segment)
                self._size_bytes -= segment.size
                left = self._count_from(segment, offset)
                self._batches -= left[0]
                self._lines -= left[1]
                self.quarantined += 1
                self._read_seq, self._read_offset = segment.seq + 1, 0
                self._next_seq = max(self._next_seq, self._read_seq)
            aside = segment.path.with_name("corrupt-" + segment.path.name)
            segment.path.replace(aside)
            self._write_position(segment.seq + 1, 0)
            return aside.name

    @staticmethod
    def _count_from(segment: _Segment, offset: int) -> tuple[int, int]:
        """Batches and lines of ``segment`` from ``offset`` on, by its totals less what reads
        back before ``offset`` (as counted when it was opened or written)."""
        before = [0, 0]
        with contextlib.suppress(OSError), segment.path.open("rb") as f:
            at = 0
            while at < offset and (record := read_record(f, at, offset)) is not None:
                body, count = record
                at += HEADER_BYTES + len(body)
                before[0] += 1
                before[1] += count
        return max(0, segment.batches - before[0]), max(0, segment.lines - before[1])

    def _head_locked(self) -> tuple[_Segment, int] | None:
        for segment in self._segments:
            if segment.seq < self._read_seq:
                continue
            offset = self._read_offset if segment.seq == self._read_seq else 0
            if offset < segment.size:
                return segment, offset
        return None

    def commit(self, batch: SpooledBatch) -> None:
        """Mark ``batch`` (from ``peek``) replayed, durably; delete segments fully replayed."""
        with self._read_lock:
            with self._lock:
                self._check_open()
                head = self._head_locked()
                pos = batch.position
                if head is None or (head[0].seq, head[1]) != (pos.segment, pos.offset):
                    raise ValueError("commit of a batch that is not the oldest one pending")
                self._read_seq, self._read_offset = pos.segment, pos.end
                self._batches -= 1
                self._lines -= len(batch.lines)
                doomed, _ = self._collect_locked()
                read_seq, read_offset = self._read_seq, self._read_offset
            # Only this thread writes the position and deletes segments; the position goes
            # first, so a crash in between leaves a replayed segment to delete, not a gap.
            self._write_position(read_seq, read_offset)
            for segment in doomed:
                segment.path.unlink()

    def _collect_locked(self) -> tuple[list[_Segment], bool]:
        """Take fully replayed segments off the list (not the one being appended to)."""
        doomed: list[_Segment] = []
        moved = False
        while self._segments:
            segment = self._segments[0]
            done = segment.seq < self._read_seq or (
                segment.seq == self._read_seq and self._read_offset >= segment.size
            )
            if not done or (segment is self._tail and self._appending):
                break
            self._segments.pop(0)
            self._size_bytes -= segment.size
            doomed.append(segment)
            if segment is self._tail:
                self._close_tail_locked()
            if segment.seq == self._read_seq:
                # Point past it, so the segment is known replayed even if its deletion is lost.
                self._read_seq, self._read_offset = segment.seq + 1, 0
                self._next_seq = max(self._next_seq, self._read_seq)
                moved = True
        return doomed, moved

    def _write_position(self, seq: int, offset: int) -> None:
        tmp = self.directory / _POSITION_TMP
        tmp.unlink(missing_ok=True)  # left by a crash; created anew, 0600
        with os.fdopen(create_private(tmp), "w", encoding="ascii") as f:
            f.write(f"v1 {seq} {offset}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.directory / _POSITION)
        _fsync_dir(self.directory)

    # -- closing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("the spool is closed")

    def close(self) -> None:
        """Close the files and release the directory; call when no append or peek runs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_tail_locked()
        os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
