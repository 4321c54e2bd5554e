"""The disk spool: order, durability, torn tails, the cap, cleanup, threads, and a model check."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.sinks.records import HEADER_BYTES, MAGIC, encode_record
from ingest.sinks.spool import Spool, SpoolFull, SpoolLocked, segment_name


def batch(i: int, n: int = 3) -> list[str]:
    """``n`` lines; every batch of the same ``n`` encodes to the same size (below 100 000)."""
    return [
        f"river,device=rv-{i:05d} level_m={j}.{i:05d},seq={j}i {1_767_225_600_000 + j}"
        for j in range(n)
    ]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.lp"))


def drain(spool: Spool) -> list[list[str]]:
    out: list[list[str]] = []
    while (b := spool.peek()) is not None:
        out.append(list(b.lines))
        spool.commit(b)
    return out


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def open_spool(spool_dir: Path) -> Iterator[Callable[..., Spool]]:
    """Opens spools on ``spool_dir`` and closes whatever the test left open."""
    opened: list[Spool] = []

    def make(**kwargs: int) -> Spool:
        s = Spool(spool_dir, **kwargs)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_round_trip_in_order_across_segments(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(segment_bytes=1000)
    batches = [batch(i, n=1 + i % 7) for i in range(60)]
    for b in batches:
        spool.append(b)
    assert len(segment_files(spool.directory)) > 5  # rotation happened
    assert spool.batches == 60
    assert spool.lines == sum(len(b) for b in batches)
    assert not spool.is_empty

    assert drain(spool) == batches
    assert spool.peek() is None
    assert spool.is_empty and spool.batches == 0 and spool.lines == 0


def test_no_segment_grows_past_segment_bytes(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(segment_bytes=1000)
    for i in range(60):
        spool.append(batch(i))
    sizes = [p.stat().st_size for p in segment_files(spool.directory)]
    assert max(sizes) <= 1000
    assert sum(sizes) == spool.size_bytes


def test_peek_repeats_until_commit_and_commit_checks_the_batch(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool()
    spool.append(["a x=1"])
    spool.append(["b x=2"])
    first = spool.peek()
    assert first is not None and first == spool.peek()
    assert first.lines == ("a x=1",)
    spool.commit(first)
    with pytest.raises(ValueError, match="not the oldest"):
        spool.commit(first)  # twice
    second = spool.peek()
    assert second is not None and second.lines == ("b x=2",)
    assert spool.batches == 1


def test_reopen_resumes_exactly_the_uncommitted_batches(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(segment_bytes=700)
    batches = [batch(i, n=1 + i % 4) for i in range(30)]
    for lines in batches:
        spool.append(lines)
    for _ in range(11):
        b = spool.peek()
        assert b is not None
        spool.commit(b)
    spool.close()

    again = open_spool(segment_bytes=700)
    assert again.batches == 19
    assert again.lines == sum(len(lines) for lines in batches[11:])
    again.append(["late x=1"])
    assert drain(again) == [*batches[11:], ["late x=1"]]


def test_a_crash_between_replay_and_commit_replays_the_batch_again(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool()
    spool.append(["a x=1"])
    spool.append(["b x=2"])
    peeked = spool.peek()
    assert peeked is not None
    spool.close()  # "crashed" after writing the batch to InfluxDB, before commit

    again = open_spool()
    assert again.peek() == peeked  # at-least-once: the same batch, same place
    assert drain(again) == [["a x=1"], ["b x=2"]]


def test_opening_twice_is_refused(open_spool: Callable[..., Spool]) -> None:
    open_spool()
    with pytest.raises(SpoolLocked):
        open_spool()


@pytest.mark.parametrize(
    "cut",
    [1, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 5],
    ids=["one-byte", "in-header", "header-only", "in-body"],
)
def test_a_torn_tail_is_ignored_counted_and_cut(
    open_spool: Callable[..., Spool], spool_dir: Path, cut: int
) -> None:
    spool = open_spool()
    batches = [batch(i) for i in range(5)]
    for b in batches:
        spool.append(b)
    spool.close()
    (segment,) = segment_files(spool_dir)
    whole = segment.stat().st_size
    last = len(encode_record(batches[-1]))
    # A crash mid-append: only the first `cut` bytes of the last record reached the disk.
    os.truncate(segment, whole - last + cut)

    again = open_spool()
    assert again.torn_tails == 1
    assert again.corrupt_segments == 0
    assert again.batches == 4
    assert segment.stat().st_size == whole - last  # cut back to the last whole record
    again.append(["after x=1"])
    assert drain(again) == [*batches[:4], ["after x=1"]]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 4096,  # a filesystem that extended the file but not its data
        b"not a record at all\n",
        MAGIC + b"\xff\xff\xff\x7f" + b"\x01\x00\x00\x00" + b"\x00" * 4,  # huge length
        encode_record(["torn x=1"])[:-1] + b"X",  # whole length, wrong CRC
    ],
    ids=["zeros", "text", "huge-length", "bad-crc"],
)
def test_garbage_after_the_last_record_is_never_replayed(
    open_spool: Callable[..., Spool], spool_dir: Path, garbage: bytes
) -> None:
    spool = open_spool()
    batches = [batch(i) for i in range(3)]
    for b in batches:
        spool.append(b)
    spool.close()
    (segment,) = segment_files(spool_dir)
    with segment.open("ab") as f:
        f.write(garbage)

    again = open_spool()
    assert again.torn_tails == 1
    assert again.batches == 3
    again.append(["after x=1"])
    assert drain(again) == [*batches, ["after x=1"]]


def test_a_bad_record_in_an_older_segment_cuts_only_that_segment(
    open_spool: Callable[..., Spool], spool_dir: Path
) -> None:
    record = len(encode_record(batch(0)))
    spool = open_spool(segment_bytes=3 * record)
    batches = [batch(i) for i in range(9)]  # three segments of three
    for b in batches:
        spool.append(b)
    spool.close()
    first = segment_files(spool_dir)[0]
    data = bytearray(first.read_bytes())
    data[record + HEADER_BYTES + 3] ^= 0x01  # a bit flips in the second record's body
    first.write_bytes(bytes(data))

    again = open_spool(segment_bytes=3 * record)
    assert again.corrupt_segments == 1
    assert again.torn_tails == 0
    assert drain(again) == [batches[0], *batches[3:]]


def test_the_cap_refuses_without_writing(open_spool: Callable[..., Spool]) -> None:
    record = len(encode_record(batch(0)))
    spool = open_spool(max_bytes=4 * record + record // 2, segment_bytes=2 * record)
    for i in range(4):
        spool.append(batch(i))
    before = {p.name: p.read_bytes() for p in segment_files(spool.directory)}

    with pytest.raises(SpoolFull):
        spool.append(batch(4))
    assert spool.full_refusals == 1
    assert {p.name: p.read_bytes() for p in segment_files(spool.directory)} == before
    assert spool.batches == 4
    assert spool.size_bytes == 4 * record

    # Replaying the first segment deletes it, which makes room again.
    for _ in range(2):
        b = spool.peek()
        assert b is not None
        spool.commit(b)
    spool.append(batch(4))
    assert drain(spool) == [batch(2), batch(3), batch(4)]


def test_a_small_batch_that_fits_is_taken_when_a_large_one_is_refused(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(max_bytes=200)
    with pytest.raises(SpoolFull):
        spool.append(["m x=1 " + "9" * 300])
    spool.append(["m x=1"])
    assert spool.full_refusals == 1
    assert drain(spool) == [["m x=1"]]


def test_commit_deletes_replayed_segments(open_spool: Callable[..., Spool]) -> None:
    record = len(encode_record(batch(0)))
    spool = open_spool(segment_bytes=4 * record)
    for i in range(20):
        spool.append(batch(i))
    files = segment_files(spool.directory)
    assert len(files) == 5
    full = spool.size_bytes
    assert full == sum(p.stat().st_size for p in files)

    sizes = [full]
    for _ in range(20):
        b = spool.peek()
        assert b is not None
        spool.commit(b)
        sizes.append(spool.size_bytes)
        on_disk = sum(p.stat().st_size for p in segment_files(spool.directory))
        assert on_disk == spool.size_bytes
    assert not files[0].exists() and not files[3].exists()
    assert sizes[4] == full - 4 * record  # the first segment went with its fourth batch
    assert sizes == sorted(sizes, reverse=True)
    assert segment_files(spool.directory) == []  # the newest goes too once replayed
    assert spool.size_bytes == 0

    spool.append(["after x=1"])  # a fresh segment, numbered after the deleted ones
    (newest,) = segment_files(spool.directory)
    assert newest.name > files[-1].name
    assert drain(spool) == [["after x=1"]]


def test_replayed_segments_stay_gone_after_reopen(
    open_spool: Callable[..., Spool], spool_dir: Path
) -> None:
    record = len(encode_record(batch(0)))
    spool = open_spool(segment_bytes=2 * record)
    for i in range(6):
        spool.append(batch(i))
    for _ in range(6):
        b = spool.peek()
        assert b is not None
        spool.commit(b)
    spool.append(batch(6))
    spool.close()

    again = open_spool(segment_bytes=2 * record)
    assert drain(again) == [batch(6)]
    again.close()
    third = open_spool(segment_bytes=2 * record)
    assert third.is_empty and third.peek() is None


UNICODE_LINES = [
    'device_status,device=gate-07,village=双峰村 online=false,reason="断电 ⚡ \\"主闸\\"" 1',
    r"m\,easure\ ment,t\=ag=v\ a\,l\=ue f\ ield=1i 2",
    'gate,device=g1 note="back\\\\slash and \\"quote\\"",emoji="🌊🚗" 3',
    "tabs\tand\rcarriage returns x=1 4",
    "",  # an empty line among others stays a line
    "x" * 10_000 + " long=1 5",
    "Ω≈ç√∫ ñ=1 6",
]


def test_unicode_and_escaped_line_protocol_round_trip_byte_exact(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool()
    spool.append(UNICODE_LINES)
    spool.append(UNICODE_LINES[::-1])
    spool.close()
    again = open_spool()
    got = drain(again)
    assert got == [UNICODE_LINES, UNICODE_LINES[::-1]]
    assert [line.encode() for line in got[0]] == [line.encode() for line in UNICODE_LINES]


@pytest.mark.parametrize(
    "lines", [[], ["a x=1\nb x=2"], ["bad \ud800 surrogate"]], ids=["empty", "newline", "surr"]
)
def test_batches_that_would_not_read_back_are_refused_before_writing(
    open_spool: Callable[..., Spool], lines: list[str]
) -> None:
    spool = open_spool()
    with pytest.raises(ValueError):
        spool.append(lines)
    assert spool.is_empty and spool.size_bytes == 0
    assert segment_files(spool.directory) == []


def test_appends_and_commits_are_fsynced(
    open_spool: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrapper that only observes: it records which file was fsynced, then really fsyncs.
    synced: list[str] = []
    real_fsync = os.fsync

    def observing_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    spool = open_spool(segment_bytes=10_000)
    monkeypatch.setattr(os, "fsync", observing_fsync)
    directory = str(spool.directory.resolve())

    spool.append(["a x=1"])  # the first append makes a segment
    (segment,) = segment_files(spool.directory)
    assert synced.count(str(segment.resolve())) >= 1
    assert directory in synced  # the new segment's name is durable too
    # The record is in the file (flushed) when append returns, not just in a buffer.
    assert b"a x=1" in segment.read_bytes()

    synced.clear()
    spool.append(["b x=2"])  # same segment: one fsync of it, no directory needed
    assert synced == [str(segment.resolve())]

    synced.clear()
    b = spool.peek()
    assert b is not None
    spool.commit(b)
    assert str((spool.directory / "position.tmp").resolve()) in synced
    assert directory in synced


def test_concurrent_appender_and_replayer_lose_nothing_and_keep_order(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(segment_bytes=4096)  # many rotations and deletions while both run
    total = 3000
    expected = [[f"m,t=w i={i}i,j={j}i {i}" for j in range(1 + i % 5)] for i in range(total)]
    replayed: list[list[str]] = []
    errors: list[BaseException] = []
    appended = threading.Event()

    def appender() -> None:
        try:
            for lines in expected:
                spool.append(lines)
        except BaseException as e:
            errors.append(e)
        finally:
            appended.set()

    def replayer() -> None:
        try:
            while True:
                b = spool.peek()
                if b is None:
                    if appended.is_set() and spool.peek() is None:
                        return
                    continue
                replayed.append(list(b.lines))
                spool.commit(b)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=appender), threading.Thread(target=replayer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert replayed == expected
    assert spool.is_empty and spool.lines == 0
    assert segment_files(spool.directory) == []


# -- a model check: any interleaving of operations keeps exactly the uncommitted batches ---

_line = st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=30)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(_line, min_size=1, max_size=5)),
        st.tuples(st.just("peek"), st.none()),
        st.tuples(st.just("commit"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("tear"), st.binary(min_size=1, max_size=40)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, segment_bytes=st.sampled_from([1, 64, 300, 1 << 20]))
def test_any_sequence_of_operations_keeps_the_uncommitted_batches_in_order(
    ops: list[tuple[str, object]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d) / "spool"
        model: deque[list[str]] = deque()
        spool = Spool(directory, segment_bytes=segment_bytes)
        tears = 0
        try:
            for op, arg in ops:
                if op == "append":
                    assert isinstance(arg, list)
                    spool.append(arg)
                    model.append(arg)
                elif op == "peek":
                    b = spool.peek()
                    assert (list(b.lines) if b else None) == (model[0] if model else None)
                elif op == "commit":
                    b = spool.peek()
                    if b is not None:
                        spool.commit(b)
                        model.popleft()
                elif op == "reopen":
                    spool.close()
                    spool = Spool(directory, segment_bytes=segment_bytes)
                elif op == "tear":
                    # A crash mid-append: part of a record (here: junk) ends the newest segment.
                    assert isinstance(arg, bytes)
                    spool.close()
                    files = segment_files(directory)
                    if files:
                        with files[-1].open("ab") as f:
                            f.write(arg)
                        tears += 1
                    spool = Spool(directory, segment_bytes=segment_bytes)
                    assert spool.torn_tails == (1 if files else 0)
                assert spool.batches == len(model)
                assert spool.lines == sum(len(b) for b in model)
                assert spool.is_empty == (not model)
            assert drain(spool) == list(model)
            assert segment_files(directory) == []
            assert spool.size_bytes == 0
        finally:
            spool.close()


def test_segment_names_sort_in_sequence_order() -> None:
    names = [segment_name(n) for n in (9, 10, 123_456_789_012)]
    assert names == sorted(names)
    assert names[0] == "spool-00000000000000000009.lp"


def test_spool_files_are_private_whatever_the_umask(
    spool_dir: Path, open_spool: Callable[..., Spool]
) -> None:
    """Spooled points are acknowledged readings (plate hashes, places): 0600 in a 0700 dir."""
    old = os.umask(0o022)
    try:
        spool = open_spool(segment_bytes=1000)
        for i in range(20):
            spool.append(batch(i))
        spool.commit(spool.peek())  # writes the position file
    finally:
        os.umask(old)
    assert spool_dir.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in spool_dir.iterdir()}
    assert len(modes) >= 3 and set(modes.values()) == {0o600}, modes
