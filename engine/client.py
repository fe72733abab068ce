"""The `iz-engine send` client: replay files of HL7 messages over MLLP and report the answers.

What integration staff get, and the decisions behind it:

- Inputs are files or folders. A folder contributes every regular file below it, recursively,
  in sorted path order, except hidden files and anything inside hidden folders (``.git``,
  editor swap files). A file named explicitly is always read. Extensions are not checked:
  test messages arrive as .hl7, .txt, .er7, .dat or nothing at all.
- A file holds one or more messages: each line beginning with ``MSH`` starts a new one.
  Segment endings CR, LF and CRLF are all accepted and sent as CR; blank lines are dropped;
  MLLP control bytes left in saved captures are removed; batch envelope segments
  (FHS/BHS/BTS/FTS) are dropped; other lines before the first MSH are ignored with a warning.
  Bytes are sent as they are in the file (no re-encoding), so MSH-18 stays truthful.
- ``concurrency`` connections are opened; a *file* is the unit of order: all its messages go,
  in file order, over one connection, one at a time (send, wait for the response, send the
  next), because a file often holds a sequence for one patient (VXU, then a QBP to check it).
  Files are handed to connections as they free up.
- Results are printed in input order (file order, then position in file), whatever the
  concurrency. Text mode prints one line per message — file, ``#index`` in the file, MSH-10,
  MSA-1, QAK-2 when present, elapsed time — and one indented line per ERR (ERR-3 code, ERR-4
  severity, ERR-2 location, ERR-8 text); then a summary on stderr (counts per MSA-1 and per
  ERR-3 code). ``as_json`` prints one JSON object per message on stdout with keys ``file``,
  ``index`` (1-based, within the file), ``control_id``, ``msa``, ``qak``, ``errors`` (list of
  ``{code, location, severity, text}``), ``elapsed_ms`` and ``error`` (null, or why there is
  no usable response), and no summary.
- Exit status: 2 when nothing could be attempted (bad target, missing path, no messages, the
  first connection refused), 1 when any message got no response or an unparseable one, else
  0 — an AE or AR is still a response; reading it is the point of the tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from engine.errors import HL7Error
from engine.hl7 import decode, parse
from engine.hl7.charset import peek_header
from engine.mllp import Frame, MllpDecoder, encode_frame

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_PROGRESS_INTERVAL_S = 0.1


class SendError(Exception):
    """Nothing could be attempted: reported as one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: where it came from and its bytes (segments ended by CR)."""

    file: str
    index: int
    payload: bytes
    control_id: str


@dataclass(frozen=True, slots=True)
class ErrSummary:
    code: str
    location: str
    severity: str
    text: str


@dataclass(slots=True)
class Result:
    """What came back for one message."""

    outgoing: Outgoing
    elapsed_ms: float = 0.0
    msa: str | None = None
    qak: str | None = None
    errors: list[ErrSummary] = field(default_factory=list)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.outgoing.file,
            "index": self.outgoing.index,
            "control_id": self.outgoing.control_id,
            "msa": self.msa,
            "qak": self.qak,
            "errors": [{"code": e.code, "location": e.location, "severity": e.severity,
                        "text": e.text} for e in self.errors],
            "elapsed_ms": round(self.elapsed_ms, 3),
            "error": self.error,
        }

    def as_text(self) -> str:
        parts = [f"{self.outgoing.file} #{self.outgoing.index}",
                 f"MSH-10={self.outgoing.control_id or '-'}"]
        if self.error is not None:
            parts.append(f"NO RESPONSE: {self.error}")
        else:
            parts.append(f"MSA-1={self.msa or '-'}")
            if self.qak is not None:
                parts.append(f"QAK-2={self.qak or '-'}")
        parts.append(f"{self.elapsed_ms:.1f} ms")
        lines = ["  ".join(parts)]
        lines += [f"    ERR {e.code or '-'} {e.severity or '-'} {e.location or '-'}  {e.text}"
                  for e in self.errors]
        return "\n".join(lines)


# -- inputs ----------------------------------------------------------------------------------

def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) → (host, port); raises SendError."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SendError(f"target must be HOST:PORT, got {target!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def collect_files(paths: list[Path]) -> list[Path]:
    """Files named, plus every non-hidden regular file under folders named (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = [p for p in path.rglob("*")
                     if p.is_file() and not any(part.startswith(".")
                                                for part in p.relative_to(path).parts)]
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        else:
            raise SendError(f"{path}: no such file or folder")
    return files


def split_messages(data: bytes) -> tuple[list[bytes], int]:
    """Split a file's bytes into messages (CR-terminated segments); also count ignored lines."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"")
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    messages: list[list[bytes]] = []
    ignored = 0
    for line in data.split(b"\r"):
        if not line.strip(b" \t\x00"):
            continue
        if line.startswith(b"MSH"):
            messages.append([line])
        elif line[:3] in _ENVELOPE:
            continue
        elif messages:
            messages[-1].append(line)
        else:
            ignored += 1
    return [b"".join(seg + b"\r" for seg in segs) for segs in messages], ignored


def load_messages(paths: list[Path], warn: TextIO) -> list[list[Outgoing]]:
    """Messages grouped per file (a file is the unit of order), files in input order."""
    groups: list[list[Outgoing]] = []
    for path in collect_files(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SendError(f"{path}: {exc.strerror or exc}") from None
        payloads, ignored = split_messages(data)
        if not payloads:
            print(f"warning: {path}: no MSH segment found, skipped", file=warn)
            continue
        if ignored:
            print(f"warning: {path}: {ignored} line(s) before the first MSH ignored", file=warn)
        groups.append([Outgoing(str(path), i, p, peek_header(p).control_id)
                       for i, p in enumerate(payloads, start=1)])
    return groups


# -- responses -------------------------------------------------------------------------------

def read_response(result: Result, response: bytes) -> None:
    """Fill MSA-1, QAK-2 and ERR summaries from the response bytes, or say why not."""
    try:
        message = parse(decode(response))
    except HL7Error as exc:
        result.error = f"unparseable response ({exc.text})"
        return
    msa = message.first("MSA")
    if msa is None:
        result.error = "response has no MSA segment"
        return
    result.msa = msa.value(1)
    qak = message.first("QAK")
    result.qak = qak.value(2) if qak is not None else None
    for err in message.all("ERR"):
        result.errors.append(ErrSummary(
            code=err.value(3, 1), location=err.field(2), severity=err.value(4),
            text=err.value(8) or err.value(3, 2)))


# -- transport -------------------------------------------------------------------------------

class _Connection:
    """One MLLP connection used strictly request → response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = MllpDecoder(_MAX_RESPONSE_BYTES)
        self._pending: list[bytes] = []

    @classmethod
    async def open(cls, host: str, port: int, tls: ssl.SSLContext | None = None) -> _Connection:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                host, port, limit=1024 * 1024, ssl=tls,
                server_hostname=host if tls is not None else None)
        return cls(reader, writer)

    async def exchange(self, payload: bytes, timeout: float) -> bytes:
        self._writer.write(encode_frame(payload))
        async with asyncio.timeout(timeout):
            await self._writer.drain()
            while not self._pending:
                data = await self._reader.read(1024 * 1024)
                if not data:
                    raise ConnectionError("server closed the connection")
                self._pending += [e.payload for e in self._decoder.feed(data)
                                  if isinstance(e, Frame)]
        return self._pending.pop(0)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Run:
    """Shared state of one `send` run: work queue, results in order, progress."""

    def __init__(self, groups: list[list[Outgoing]], out: TextIO, err: TextIO, as_json: bool,
                 progress: bool, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self.err = err
        self.tls = tls
        self.groups: Iterator[list[Outgoing]] = iter(groups)
        self.total = sum(len(g) for g in groups)
        self.order = [m for g in groups for m in g]
        self.done: dict[tuple[str, int], Result] = {}
        self.printed = 0
        self.out = out
        self.as_json = as_json
        self.progress = progress and not as_json
        self.timeout = timeout
        self.failed = 0
        self._last_progress = 0.0

    async def worker(self, host: str, port: int, conn: _Connection | None) -> None:
        try:
            for group in self.groups:
                for outgoing in group:
                    conn = await self._send_one(host, port, conn, outgoing)
        finally:
            if conn is not None:
                await conn.close()

    async def _send_one(self, host: str, port: int, conn: _Connection | None,
                        outgoing: Outgoing) -> _Connection | None:
        result = Result(outgoing)
        started = time.perf_counter()
        try:
            if conn is None:
                conn = await _Connection.open(host, port, self.tls)
            response = await conn.exchange(outgoing.payload, self.timeout)
        except (OSError, TimeoutError) as exc:
            result.error = _describe(exc)
            if conn is not None:
                await conn.close()
            conn = None
        else:
            read_response(result, response)
        result.elapsed_ms = (time.perf_counter() - started) * 1000
        self._record(result)
        return conn

    def _record(self, result: Result) -> None:
        if not result.answered:
            self.failed += 1
        self.done[(result.outgoing.file, result.outgoing.index)] = result
        while self.printed < len(self.order):
            key = (self.order[self.printed].file, self.order[self.printed].index)
            ready = self.done.get(key)
            if ready is None:
                break
            self._clear_progress()
            if self.as_json:
                print(json.dumps(ready.as_json(), ensure_ascii=False), file=self.out)
            else:
                print(ready.as_text(), file=self.out)
            self.printed += 1
        self.out.flush()
        self._show_progress()

    def _show_progress(self, force: bool = False) -> None:
        if not self.progress:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self.err.write(f"\r\x1b[K{len(self.done)}/{self.total} answered"
                       + (f", {self.failed} without response" if self.failed else ""))
        self.err.flush()

    def _clear_progress(self) -> None:
        if self.progress and self._last_progress:
            self.err.write("\r\x1b[K")
            self._last_progress = 0.0

    def summary(self, files: int, seconds: float) -> str:
        results = list(self.done.values())
        acks = Counter(r.msa or "?" for r in results if r.answered)
        codes = Counter(e.code or "?" for r in results for e in r.errors)
        parts = [f"{len(results)} message(s) from {files} file(s) in {seconds:.2f} s"]
        parts.append("MSA-1: " + (", ".join(f"{k} {v}" for k, v in sorted(acks.items()))
                                  or "none"))
        if codes:
            parts.append("ERR-3: " + ", ".join(f"{k} x{v}" for k, v in sorted(codes.items())))
        unusable = sum(1 for r in results if not r.answered)
        if unusable:
            parts.append(f"no usable response: {unusable}")
        return "; ".join(parts)


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Client TLS: verify the server against `ca_file` (default: the system's CAs) and, for
    mutual TLS, present `cert_file`/`key_file`."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


async def send_paths(target: str, paths: list[Path], concurrency: int, as_json: bool,
                     out: TextIO, progress: bool, timeout: float = DEFAULT_TIMEOUT_S,
                     err: TextIO | None = None, tls: ssl.SSLContext | None = None) -> int:
    """Send every message found under `paths` to `target`; print results; return exit status.

    Results go to `out`; warnings, progress and the summary to `err` (default stderr).
    With `tls`, every connection is TLS (see `tls_context`).
    """
    err = err if err is not None else sys.stderr
    try:
        host, port = parse_target(target)
        groups = load_messages(paths, err)
        if not groups:
            raise SendError("no messages found")
        try:
            first = await _Connection.open(host, port, tls)
        except (OSError, TimeoutError) as exc:
            raise SendError(f"cannot connect to {target}: {_describe(exc)}") from None
    except SendError as exc:
        print(f"error: {exc}", file=err)
        return 2
    run = _Run(groups, out, err, as_json, progress, timeout, tls)
    started = time.perf_counter()
    workers = max(1, min(concurrency, len(groups)))
    await asyncio.gather(run.worker(host, port, first),
                         *(run.worker(host, port, None) for _ in range(workers - 1)))
    run._clear_progress()
    if not as_json:
        print(run.summary(len(groups), time.perf_counter() - started), file=err)
    return 1 if run.failed else 0
