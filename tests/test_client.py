"""Spec for the `send` client (engine.client): inputs, splitting, output shapes, exit status."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.client import collect_files, parse_target, send_paths, split_messages
from engine.config import ServerConfig
from engine.hl7.charset import peek_header
from engine.observability.metrics import Metrics
from engine.server import FrameHandler, MllpServer

pytestmark = pytest.mark.timeout(60)


def msh(control_id: str, kind: str = "VXU^V04^VXU_V04") -> str:
    return f"MSH|^~\\&|EHR|CLINIC|IZ|CAIR2|20240101||{kind}|{control_id}|P|2.5.1"


class ScriptedHandler:
    """Answers by control id prefix: ERR… → AE with two ERRs, QRY… → RSP with QAK, BAD… → junk."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[str, str]] = []  # (control id, peer)

    async def handle(self, payload: bytes, peer: str) -> bytes:
        control_id = peek_header(payload).control_id
        self.seen.append((control_id, peer))
        if self.delay:
            await asyncio.sleep(self.delay)
        head = f"MSH|^~\\&|IZ|CAIR2|EHR|CLINIC|20240101||ACK^V04^ACK|R-{control_id}|P|2.5.1\r"
        if control_id.startswith("ERR"):
            return (head + f"MSA|AE|{control_id}\r"
                    "ERR||PID^1^7|101^Required field missing^HL70357|E||||Birth date is required\r"
                    "ERR||RXA^1^5|103^Table value not found^HL70357|W||||Unknown CVX code\r"
                    ).encode()
        if control_id.startswith("QRY"):
            return (head.replace("ACK^V04^ACK", "RSP^K11^RSP_K11")
                    + f"MSA|AA|{control_id}\rQAK|Q1|NF|Z34^Request Immunization History\r"
                    ).encode()
        if control_id.startswith("BAD"):
            return b"this is not HL7"
        return (head + f"MSA|AA|{control_id}\r").encode()

    def reject_oversize(self, head: bytes, size: int) -> bytes | None:
        return None


def run_send(tmp_files: list[Path], handler: FrameHandler | None = None, *,
             concurrency: int = 1, as_json: bool = False, timeout: float = 10.0,
             target: str | None = None) -> tuple[int, str, str]:
    """Start a server with `handler`, send `tmp_files` to it, return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    async def scenario() -> int:
        server = MllpServer(ServerConfig(host="127.0.0.1", port=0), handler or ScriptedHandler(),
                            Metrics(CollectorRegistry()))
        await server.start()
        try:
            return await send_paths(target or f"127.0.0.1:{server.port}", tmp_files,
                                    concurrency, as_json, out, progress=False, timeout=timeout,
                                    err=err)
        finally:
            await server.shutdown()

    status = asyncio.run(scenario())
    return status, out.getvalue(), err.getvalue()


def write(path: Path, segments: list[str], ending: str = "\r") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(s + ending for s in segments).encode())
    return path


def two_messages(first: str, second: str) -> list[str]:
    return [msh(first), "PID|1||123^^^MR", msh(second), "PID|1||456^^^MR"]


# -- splitting and inputs ------------------------------------------------------------------

SPLITS = [
    pytest.param(b"MSH|a\rPID|1\rMSH|b\rPID|2\r", [b"MSH|a\rPID|1\r", b"MSH|b\rPID|2\r"], 0,
                 id="cr"),
    pytest.param(b"MSH|a\nPID|1\nMSH|b\n", [b"MSH|a\rPID|1\r", b"MSH|b\r"], 0, id="lf"),
    pytest.param(b"MSH|a\r\nPID|1\r\nMSH|b\r\n", [b"MSH|a\rPID|1\r", b"MSH|b\r"], 0, id="crlf"),
    pytest.param(b"MSH|a\r\nPID|1\nOBX|1\rMSH|b", [b"MSH|a\rPID|1\rOBX|1\r", b"MSH|b\r"], 0,
                 id="mixed-and-no-final-newline"),
    pytest.param(b"\n\nMSH|a\n\n  \nPID|1\n\n", [b"MSH|a\rPID|1\r"], 0, id="blank-lines"),
    pytest.param(b"\x0bMSH|a\rPID|1\r\x1c\r\x0bMSH|b\r\x1c\r", [b"MSH|a\rPID|1\r", b"MSH|b\r"],
                 0, id="saved-mllp-capture"),
    pytest.param(b"FHS|x\rBHS|y\rMSH|a\rBTS|1\rFTS|1\r", [b"MSH|a\r"], 0, id="batch-envelope"),
    pytest.param(b"# sample\rnotes\rMSH|a\r", [b"MSH|a\r"], 2, id="lines-before-msh"),
    pytest.param(b"no message here\r", [], 1, id="no-msh"),
    pytest.param(b"", [], 0, id="empty-file"),
]


@pytest.mark.parametrize(("data", "messages", "ignored"), SPLITS)
def test_split_messages(data: bytes, messages: list[bytes], ignored: int) -> None:
    """A new message starts at each MSH line; endings normalise to CR; noise is dropped."""
    assert split_messages(data) == (messages, ignored)


TARGETS = [
    pytest.param("localhost:2575", ("localhost", 2575), id="name"),
    pytest.param("10.0.0.1:1", ("10.0.0.1", 1), id="ipv4"),
    pytest.param("[::1]:2575", ("::1", 2575), id="ipv6"),
]


@pytest.mark.parametrize(("target", "expected"), TARGETS)
def test_parse_target(target: str, expected: tuple[str, int]) -> None:
    """HOST:PORT splits into host and port."""
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["localhost", ":2575", "host:", "host:port", "host:70000"])
def test_bad_target_exits_2(tmp_path: Path, target: str) -> None:
    """A target that is not HOST:PORT is a one-line error and exit status 2."""
    status, out, err = run_send([write(tmp_path / "a.hl7", [msh("C1")])], target=target)
    assert status == 2
    assert out == ""
    assert err.startswith("error: target must be HOST:PORT")


def test_folders_are_read_recursively_in_sorted_order_skipping_hidden(tmp_path: Path) -> None:
    """A folder contributes its non-hidden files, recursively, sorted by path."""
    for name in ("b.hl7", "a.txt", "sub/c", ".hidden.hl7", ".git/config", "sub/.swp"):
        write(tmp_path / name, [msh("X")])
    assert [p.relative_to(tmp_path).as_posix() for p in collect_files([tmp_path])] == \
        ["a.txt", "b.hl7", "sub/c"]


def test_a_hidden_file_named_explicitly_is_read(tmp_path: Path) -> None:
    """Naming a file is an explicit choice, hidden or not."""
    hidden = write(tmp_path / ".msg.hl7", [msh("X")])
    assert collect_files([hidden]) == [hidden]


def test_missing_path_exits_2(tmp_path: Path) -> None:
    """A path that does not exist is a one-line error and exit status 2."""
    status, _, err = run_send([tmp_path / "nope.hl7"])
    assert status == 2
    assert err.strip() == f"error: {tmp_path / 'nope.hl7'}: no such file or folder"


def test_no_messages_exits_2(tmp_path: Path) -> None:
    """Files without any MSH line leave nothing to send: exit status 2."""
    status, _, err = run_send([write(tmp_path / "notes.txt", ["hello"])])
    assert status == 2
    assert "error: no messages found" in err


# -- sending -------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"], ids=["cr", "lf", "crlf"])
def test_every_message_of_every_file_is_answered_in_order(tmp_path: Path, ending: str) -> None:
    """Several files with several messages each: one line per message, in input order, exit 0."""
    files = [write(tmp_path / "1.hl7", two_messages("A1", "A2"), ending),
             write(tmp_path / "2.hl7", two_messages("B1", "B2"), ending)]
    status, out, err = run_send(files)
    assert status == 0
    lines = out.splitlines()
    assert [line.split("  ")[:3] for line in lines] == [
        [f"{files[0]} #1", "MSH-10=A1", "MSA-1=AA"], [f"{files[0]} #2", "MSH-10=A2", "MSA-1=AA"],
        [f"{files[1]} #1", "MSH-10=B1", "MSA-1=AA"], [f"{files[1]} #2", "MSH-10=B2", "MSA-1=AA"]]
    assert "4 message(s) from 2 file(s)" in err
    assert "MSA-1: AA 4" in err


def test_segments_arrive_with_cr_endings(tmp_path: Path) -> None:
    """LF files are sent with CR segment endings, as MLLP peers expect."""
    received: list[bytes] = []

    class Recorder(ScriptedHandler):
        async def handle(self, payload: bytes, peer: str) -> bytes:
            received.append(payload)
            return await super().handle(payload, peer)

    run_send([write(tmp_path / "lf.hl7", two_messages("L1", "L2"), "\n")], Recorder())
    assert received == [f"{msh('L1')}\rPID|1||123^^^MR\r".encode(),
                        f"{msh('L2')}\rPID|1||456^^^MR\r".encode()]


def test_err_segments_are_summarised(tmp_path: Path) -> None:
    """ERR-3 code, ERR-4 severity, ERR-2 location and ERR-8 text are shown under the message."""
    status, out, err = run_send([write(tmp_path / "e.hl7", [msh("ERR1")])])
    assert status == 0
    assert out.splitlines()[1:] == [
        "    ERR 101 E PID^1^7  Birth date is required",
        "    ERR 103 W RXA^1^5  Unknown CVX code"]
    assert "MSA-1: AE 1" in err
    assert "ERR-3: 101 x1, 103 x1" in err


def test_qak_is_shown_for_query_responses(tmp_path: Path) -> None:
    """A response with QAK shows QAK-2 next to MSA-1."""
    _, out, _ = run_send([write(tmp_path / "q.hl7", [msh("QRY1", "QBP^Q11^QBP_Q11")])])
    assert "MSA-1=AA  QAK-2=NF" in out


def test_json_output_shape(tmp_path: Path) -> None:
    """--json prints exactly one object per message with the documented keys, and no summary."""
    files = [write(tmp_path / "j.hl7", [msh("ERR1"), msh("QRY1", "QBP^Q11^QBP_Q11"), msh("OK1")])]
    status, out, err = run_send(files, as_json=True)
    assert status == 0
    assert err == ""
    objects = [json.loads(line) for line in out.splitlines()]
    assert [set(o) for o in objects] == [{"file", "index", "control_id", "msa", "qak", "errors",
                                          "elapsed_ms", "error"}] * 3
    first, second, third = objects
    assert (first["file"], first["index"], first["control_id"], first["msa"], first["qak"]) == \
        (str(files[0]), 1, "ERR1", "AE", None)
    assert first["errors"][0] == {"code": "101", "location": "PID^1^7", "severity": "E",
                                  "text": "Birth date is required"}
    assert (second["index"], second["msa"], second["qak"], second["errors"]) == \
        (2, "AA", "NF", [])
    assert third["error"] is None
    assert all(isinstance(o["elapsed_ms"], float) for o in objects)


def test_concurrency_keeps_each_file_on_one_connection_in_order(tmp_path: Path) -> None:
    """With N connections, files run in parallel but a file's messages keep their order."""
    handler = ScriptedHandler(delay=0.005)
    files = [write(tmp_path / f"{f}.hl7", [msh(f"{f}-{i}") for i in range(5)])
             for f in "abcdef"]
    status, out, _ = run_send(files, handler, concurrency=3, as_json=True)
    assert status == 0
    assert [json.loads(line)["control_id"] for line in out.splitlines()] == \
        [f"{f}-{i}" for f in "abcdef" for i in range(5)]
    peers = {f: {peer for cid, peer in handler.seen if cid.startswith(f)} for f in "abcdef"}
    assert all(len(p) == 1 for p in peers.values())
    assert len(set().union(*peers.values())) == 3
    for f in "abcdef":
        assert [cid for cid, _ in handler.seen if cid.startswith(f)] == \
            [f"{f}-{i}" for i in range(5)]


def test_connection_refused_exits_2(tmp_path: Path) -> None:
    """Nobody listening is a one-line error and exit status 2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, out, err = run_send([write(tmp_path / "a.hl7", [msh("C1")])],
                                target=f"127.0.0.1:{port}")
    assert status == 2
    assert out == ""
    assert err.startswith(f"error: cannot connect to 127.0.0.1:{port}:")
    assert len(err.strip().splitlines()) == 1


def test_unparseable_response_exits_1(tmp_path: Path) -> None:
    """A response that is not HL7 is reported and makes the run fail."""
    status, out, _ = run_send([write(tmp_path / "b.hl7", [msh("BAD1"), msh("OK2")])])
    assert status == 1
    assert "NO RESPONSE: unparseable response" in out.splitlines()[0]
    assert "MSA-1=AA" in out.splitlines()[1]


def test_timeout_exits_1_and_carries_on(tmp_path: Path) -> None:
    """A response slower than the timeout is reported, and later messages are still sent."""
    status, out, _ = run_send([write(tmp_path / "s.hl7", [msh("S1"), msh("S2")])],
                              ScriptedHandler(delay=0.5), timeout=0.2, as_json=True)
    assert status == 1
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["error"] for o in objects] == ["timed out", "timed out"]


def test_server_dropping_the_connection_is_reported(tmp_path: Path) -> None:
    """A connection closed without an answer is "no response" for that message, exit 1."""
    class Dropper(ScriptedHandler):
        async def handle(self, payload: bytes, peer: str) -> bytes:
            raise RuntimeError("pipeline contract broken")

    status, out, _ = run_send([write(tmp_path / "d.hl7", [msh("D1")])], Dropper(), as_json=True)
    assert status == 1
    assert json.loads(out)["error"] == "server closed the connection"


def test_progress_is_written_to_err_only_when_asked(tmp_path: Path) -> None:
    """The progress line goes to the error stream, never into the results."""
    out, err = io.StringIO(), io.StringIO()
    files = [write(tmp_path / "p.hl7", [msh("P1")])]

    async def scenario() -> int:
        server = MllpServer(ServerConfig(host="127.0.0.1", port=0), ScriptedHandler(),
                            Metrics(CollectorRegistry()))
        await server.start()
        try:
            return await send_paths(f"127.0.0.1:{server.port}", files, 1, False, out,
                                    progress=True, err=err)
        finally:
            await server.shutdown()

    assert asyncio.run(scenario()) == 0
    assert "1/1 answered" in err.getvalue()
    assert "\x1b" not in out.getvalue()

