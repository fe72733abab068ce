"""Sans-I/O MLLP codec: tolerant framing with a size cap (no sockets, no asyncio).

An MLLP frame is ``0x0B <payload> 0x1C 0x0D``. `MllpDecoder` turns any chunking of a byte
stream into `Event`s; `encode_frame` wraps one payload. The shell (`engine.server`, the `send`
client, the bench) feeds whatever the transport hands it and acts on the events.

Decisions (what real senders do, and what tolerant engines such as HAPI and Mirth answer):

- Bytes outside a frame (stray LF after ``0x1C 0x0D``, NULs, keep-alive garbage) are skipped
  and reported as `SkippedBytes(count)`; they never cost the *next* frame (python-hl7's reader
  drops the next whole message in that case).
- A ``0x0B`` inside an open frame restarts the frame: the sender evidently gave up on the
  previous one (a reconnecting proxy, a retry after a local timeout), and ``0x0B`` is not legal
  HL7 text. The abandoned bytes, including the first ``0x0B``, are reported as
  ``SkippedBytes(count, in_frame=True)`` so the shell can count an interrupted frame.
- A lone ``0x1C`` not followed by ``0x0D`` is payload, except at end of stream when
  ``accept_lone_fs_at_eof`` is set (some senders close right after ``0x1C``): then the frame
  is delivered. Otherwise a frame still open at `close()` is a `TruncatedFrame`.
- A payload over ``max_frame_bytes`` is not buffered: the decoder keeps its first
  ``OVERSIZE_HEAD_BYTES`` (enough to read MSH and answer AR), counts and discards the rest,
  and reports `OversizeFrame(head, size)` when the frame ends. The stream stays usable.
- Scanning is linear: each byte is examined once, whatever the chunking (a 4 MiB frame fed in
  64 KiB chunks costs one pass, not a quadratic re-scan of the growing buffer).

The decoder never raises on input; every byte sequence yields events.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
TRAILER = END_BLOCK + CARRIAGE_RETURN

DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
OVERSIZE_HEAD_BYTES = 64 * 1024

_VT = 0x0B
_FS = 0x1C
_CR = 0x0D


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame's payload (without MLLP bytes)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizeFrame:
    """A complete frame whose payload exceeded the cap; `head` is its first bytes, `size` its length."""

    head: bytes
    size: int


@dataclass(frozen=True, slots=True)
class SkippedBytes:
    """Bytes discarded: outside any frame, or (`in_frame`) an open frame abandoned by a new 0x0B."""

    count: int
    in_frame: bool = False


@dataclass(frozen=True, slots=True)
class TruncatedFrame:
    """The stream ended while a frame of `size` payload bytes was still open."""

    size: int


Event = Frame | OversizeFrame | SkippedBytes | TruncatedFrame


def encode_frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP start/end bytes."""
    return START_BLOCK + payload + TRAILER


class MllpDecoder:
    """Incremental MLLP decoder: `feed` bytes as they arrive, `close` at end of stream."""

    __slots__ = ("_accept_lone_fs", "_buf", "_discarding", "_head", "_in_frame", "_last_fs",
                 "_max", "_size")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 accept_lone_fs_at_eof: bool = False) -> None:
        if max_frame_bytes < 0:
            raise ValueError("max_frame_bytes must be >= 0")
        self._max = max_frame_bytes
        self._accept_lone_fs = accept_lone_fs_at_eof
        self._in_frame = False
        self._buf = bytearray()
        self._size = 0  # payload bytes seen in the open frame (buffered or discarded)
        self._discarding = False
        self._head = bytearray()
        # The open frame's last byte was 0x1C: a 0x0D at the start of the next chunk ends it.
        self._last_fs = False

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not yet ended (the shell's slow-loris clock)."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Payload bytes currently held in memory for the open frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data`; return the events it completes, in stream order."""
        n = len(data)
        if not self._in_frame and n > 2 and data[0] == _VT:
            # The common case, one whole frame per read: no buffering, one copy.
            end = data.find(TRAILER, 1)
            if end == n - 2 and end - 1 <= self._max and data.find(START_BLOCK, 1, end) < 0:
                return [Frame(bytes(data[1:end]))]
        events: list[Event] = []
        pos = 0
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    events.append(SkippedBytes(n - pos))
                    break
                if start > pos:
                    events.append(SkippedBytes(start - pos))
                self._open()
                pos = start + 1
                continue
            if self._last_fs and data[pos] == _CR:
                # The trailer was split across chunks: 0x1C ended the previous one.
                self._finish(events, drop_last=True)
                pos += 1
                continue
            end = data.find(TRAILER, pos)
            limit = end if end >= 0 else n
            restart = data.find(START_BLOCK, pos, limit)
            if restart >= 0:
                events.append(SkippedBytes(self._size + (restart - pos) + 1, in_frame=True))
                self._open()
                pos = restart + 1
                continue
            if end >= 0 and self._size == 0 and end - pos <= self._max:
                events.append(Frame(bytes(data[pos:end])))
                self._reset()
                pos = end + 2
                continue
            self._append(data, pos, limit)
            if end >= 0:
                self._finish(events, drop_last=False)
                pos = end + 2
            else:
                pos = n
        return events

    def close(self) -> list[Event]:
        """End of stream: report a frame left open (or deliver it, see ``accept_lone_fs_at_eof``)."""
        events: list[Event] = []
        if self._in_frame:
            if self._accept_lone_fs and self._last_fs:
                self._finish(events, drop_last=True)
            else:
                events.append(TruncatedFrame(self._size))
                self._reset()
        return events

    def _open(self) -> None:
        self._reset()
        self._in_frame = True

    def _reset(self) -> None:
        self._in_frame = False
        if self._buf:
            self._buf = bytearray()
        self._size = 0
        self._discarding = False
        if self._head:
            self._head = bytearray()
        self._last_fs = False

    def _append(self, data: bytes, start: int, stop: int) -> None:
        count = stop - start
        if count <= 0:
            return
        self._size += count
        self._last_fs = data[stop - 1] == _FS
        if self._discarding:
            missing = OVERSIZE_HEAD_BYTES - len(self._head)
            if missing > 0:
                self._head += memoryview(data)[start:start + min(missing, count)]
            return
        # One byte of slack: a trailing 0x1C may turn out to be half of the trailer.
        if self._size > self._max + 1:
            missing = OVERSIZE_HEAD_BYTES - len(self._buf)
            head = self._buf[:OVERSIZE_HEAD_BYTES]
            if missing > 0:
                head += memoryview(data)[start:start + min(missing, count)]
            self._head = head
            self._buf = bytearray()
            self._discarding = True
            return
        self._buf += memoryview(data)[start:stop]

    def _finish(self, events: list[Event], *, drop_last: bool) -> None:
        size = self._size - 1 if drop_last else self._size
        if self._discarding:
            events.append(OversizeFrame(bytes(self._head[:size]), size))
        elif size > self._max:
            events.append(OversizeFrame(bytes(self._buf[:min(size, OVERSIZE_HEAD_BYTES)]), size))
        else:
            buf = self._buf
            if drop_last:
                del buf[-1:]
            events.append(Frame(bytes(buf)))
        self._reset()
