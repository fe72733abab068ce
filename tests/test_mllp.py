"""Spec for the sans-I/O MLLP codec (engine.mllp): framing, tolerance, size cap, chunking."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mllp import (
    OVERSIZE_HEAD_BYTES,
    Event,
    Frame,
    MllpDecoder,
    OversizeFrame,
    SkippedBytes,
    TruncatedFrame,
    encode_frame,
)

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
NEXT = encode_frame(b"MSH|next")


def normalise(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent between-frame SkippedBytes: how many reads they span is not behaviour."""
    out: list[Event] = []
    for ev in events:
        if (isinstance(ev, SkippedBytes) and not ev.in_frame and out
                and isinstance(out[-1], SkippedBytes) and not out[-1].in_frame):
            out[-1] = SkippedBytes(out[-1].count + ev.count)
        else:
            out.append(ev)
    return out


def decode_chunks(chunks: Iterable[bytes], max_frame_bytes: int = 4 * 1024 * 1024,
                  lone_fs: bool = False) -> list[Event]:
    decoder = MllpDecoder(max_frame_bytes, lone_fs)
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return normalise(events)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _clean(payload: bytes) -> bytes:
    payload = payload.replace(VT, b"")
    while FS + CR in payload:
        payload = payload.replace(FS + CR, FS)
    return payload


payloads = st.binary(max_size=200).map(_clean)
garbage = st.binary(max_size=8).map(lambda b: b.replace(VT, b""))


# -- properties ----------------------------------------------------------------------------

@given(payload=payloads)
def test_encode_then_decode_round_trips(payload: bytes) -> None:
    """Any payload without MLLP control sequences comes back unchanged from its own frame."""
    assert decode_chunks([encode_frame(payload)]) == [Frame(payload)]


@given(frames=st.lists(st.tuples(garbage, payloads), max_size=6),
       cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_yields_the_same_frames(frames: list[tuple[bytes, bytes]],
                                             cuts: list[int]) -> None:
    """Splitting a stream of frames (with junk between them) anywhere yields the same frames."""
    stream = b"".join(junk + encode_frame(p) for junk, p in frames)
    expected = [Frame(p) for _, p in frames]
    got = [ev for ev in decode_chunks(split(stream, cuts)) if isinstance(ev, Frame)]
    assert got == expected


@settings(max_examples=300)
@given(stream=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=20),
       max_frame_bytes=st.sampled_from([0, 5, 64, 4 * 1024 * 1024]), lone_fs=st.booleans())
def test_garbage_never_raises_and_chunking_never_changes_events(
        stream: bytes, cuts: list[int], max_frame_bytes: int, lone_fs: bool) -> None:
    """Arbitrary bytes never raise, and every chunking gives the same events as one read."""
    whole = decode_chunks([stream], max_frame_bytes, lone_fs)
    assert decode_chunks(split(stream, cuts), max_frame_bytes, lone_fs) == whole


@settings(max_examples=50)
@given(stream=st.binary(min_size=1, max_size=120), lone_fs=st.booleans())
def test_byte_by_byte_gives_the_same_events_as_one_read(stream: bytes, lone_fs: bool) -> None:
    """Feeding one byte at a time is just another chunking."""
    one_by_one = [stream[i:i + 1] for i in range(len(stream))]
    assert decode_chunks(one_by_one, 16, lone_fs) == decode_chunks([stream], 16, lone_fs)


@given(stream=st.binary(max_size=300))
def test_every_byte_is_accounted_for(stream: bytes) -> None:
    """Frame bytes, skipped bytes and truncated bytes add up to the stream length."""
    total = 0
    for ev in decode_chunks([stream], 32):
        if isinstance(ev, Frame):
            total += len(ev.payload) + 3
        elif isinstance(ev, OversizeFrame):
            total += ev.size + 3
        elif isinstance(ev, SkippedBytes):
            total += ev.count
        else:
            total += ev.size + 1
    assert total == len(stream)


# -- hand-written edge cases -----------------------------------------------------------------

CASES: list[tuple[str, bytes, list[Event], int, bool, bool]] = [
    # id, stream, expected events, max_frame_bytes, accept_lone_fs_at_eof, ends cleanly
    ("one-frame", VT + b"MSH|a" + FS + CR, [Frame(b"MSH|a")], 64, False, True),
    ("empty-frame", VT + FS + CR, [Frame(b"")], 64, False, True),
    ("stray-lf-between", VT + b"a" + FS + CR + b"\n" + VT + b"b" + FS + CR,
     [Frame(b"a"), SkippedBytes(1), Frame(b"b")], 64, False, True),
    ("nul-and-junk-before", b"\x00\x00xy" + VT + b"a" + FS + CR,
     [SkippedBytes(4), Frame(b"a")], 64, False, True),
    ("two-frames-one-read", VT + b"a" + FS + CR + VT + b"b" + FS + CR,
     [Frame(b"a"), Frame(b"b")], 64, False, True),
    ("vt-inside-frame-restarts", VT + b"ab" + VT + b"cd" + FS + CR,
     [SkippedBytes(3, in_frame=True), Frame(b"cd")], 64, False, True),
    ("lone-fs-inside-is-data", VT + b"a" + FS + b"b" + FS + CR, [Frame(b"a\x1cb")], 64, False,
     True),
    ("fs-ending-payload", VT + b"a" + FS + FS + CR, [Frame(b"a\x1c")], 64, False, True),
    ("cr-inside-is-data", VT + b"a\rb\r" + FS + CR, [Frame(b"a\rb\r")], 64, False, True),
    ("exactly-max-is-a-frame", VT + b"x" * 8 + FS + CR, [Frame(b"x" * 8)], 8, False, True),
    ("max-plus-one-is-oversize", VT + b"x" * 9 + FS + CR, [OversizeFrame(b"x" * 9, 9)], 8, False,
     True),
    ("oversize-then-good", VT + b"A" * 20 + FS + CR + VT + b"ok" + FS + CR,
     [OversizeFrame(b"A" * 20, 20), Frame(b"ok")], 8, False, True),
    ("trailing-garbage", VT + b"a" + FS + CR + b"\r\n", [Frame(b"a"), SkippedBytes(2)], 64, False,
     True),
    ("truncated-at-close", VT + b"abc", [TruncatedFrame(3)], 64, False, False),
    ("lone-fs-at-eof-without-option", VT + b"abc" + FS, [TruncatedFrame(4)], 64, False, False),
    ("lone-fs-at-eof-with-option", VT + b"abc" + FS, [Frame(b"abc")], 64, True, False),
    ("oversize-lone-fs-at-eof-with-option", VT + b"x" * 9 + FS, [OversizeFrame(b"x" * 9, 9)], 8,
     True, False),
    ("only-garbage", b"\n\x00junk", [SkippedBytes(6)], 64, False, True),
    ("nothing", b"", [], 64, False, True),
]

EDGE_PARAMS = [
    pytest.param(feed, stream, expected, max_bytes, lone_fs, id=f"{case_id}-{feed}")
    for case_id, stream, expected, max_bytes, lone_fs, clean in CASES
    for feed in ("whole", "byte-by-byte", "with-trailing-frame")
    # A stream that ends mid-frame cannot be followed by more data and stay the same case.
    if clean or feed != "with-trailing-frame"
]


@pytest.mark.parametrize(("feed", "stream", "expected", "max_frame_bytes", "lone_fs"),
                         EDGE_PARAMS)
def test_edge_case(feed: str, stream: bytes, expected: list[Event], max_frame_bytes: int,
                   lone_fs: bool) -> None:
    """Each edge case decodes to the same events whether fed whole, bytewise or followed by more."""
    if feed == "with-trailing-frame":
        stream += NEXT
        expected = [*expected, Frame(b"MSH|next")]
    chunks = [stream[i:i + 1] for i in range(len(stream))] if feed == "byte-by-byte" else [stream]
    assert decode_chunks(chunks, max_frame_bytes, lone_fs) == normalise(expected)


def test_oversize_frame_keeps_only_its_head() -> None:
    """An oversize frame reports its first 64 KiB and its full size, and buffers no more."""
    payload = bytes(range(32, 256)) * 1000
    decoder = MllpDecoder(max_frame_bytes=1024)
    data = encode_frame(payload)
    events: list[Event] = []
    peak = 0
    for i in range(0, len(data), 4096):
        events.extend(decoder.feed(data[i:i + 4096]))
        peak = max(peak, decoder.buffered)
    assert events == [OversizeFrame(payload[:OVERSIZE_HEAD_BYTES], len(payload))]
    assert peak <= 1025


def test_in_frame_tracks_an_open_frame() -> None:
    """`in_frame` is true from the start byte until the frame ends."""
    decoder = MllpDecoder()
    assert not decoder.in_frame
    decoder.feed(b"\n" + VT + b"MSH")
    assert decoder.in_frame
    decoder.feed(FS)
    assert decoder.in_frame
    decoder.feed(CR)
    assert not decoder.in_frame


def test_large_frame_in_chunks_is_linear() -> None:
    """A 4 MiB frame fed in 64 KiB chunks decodes in one pass, not a quadratic re-scan."""
    payload = b"x" * (4 * 1024 * 1024 - 16)
    data = encode_frame(payload) * 3
    decoder = MllpDecoder()
    started = time.perf_counter()
    events: list[Event] = []
    for i in range(0, len(data), 64 * 1024):
        events.extend(decoder.feed(data[i:i + 64 * 1024]))
    elapsed = time.perf_counter() - started
    assert events == [Frame(payload)] * 3
    assert elapsed < 1.0


def test_negative_cap_is_a_programming_error() -> None:
    """A negative size cap is rejected when the decoder is built."""
    with pytest.raises(ValueError):
        MllpDecoder(max_frame_bytes=-1)
