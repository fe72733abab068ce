"""Spec for the MLLP listener (engine.server) over real sockets on 127.0.0.1.

Order, pipelining, size cap, tolerance of odd chunking, connection limits, idle and slow-loris
timeouts, write back-pressure, graceful shutdown, TLS and mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from prometheus_client import CollectorRegistry

from engine.config import Config, ServerConfig, TlsConfig
from engine.hl7 import parse
from engine.hl7.charset import peek_header
from engine.mllp import Frame, MllpDecoder, encode_frame
from engine.observability.metrics import Metrics
from engine.server import FrameHandler, MllpServer, build_ssl_context

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


def message(control_id: str, extra: bytes = b"") -> bytes:
    return (b"MSH|^~\\&|EHR|CLINIC|IZ|CAIR2|20240101||VXU^V04^VXU_V04|" + control_id.encode()
            + b"|P|2.5.1\rPID|1||123^^^MR\r" + extra)


class AckHandler:
    """Fake pipeline: answers AA with MSA-2 = MSH-10; AR for oversize frames."""

    def __init__(self, delay: float | Callable[[], float] = 0.0, padding: int = 0,
                 fail: bool = False) -> None:
        self.delay = delay
        self.padding = padding
        self.fail = fail
        self.calls = 0
        self.finished = 0

    async def handle(self, payload: bytes, peer: str) -> bytes:
        self.calls += 1
        delay = self.delay() if callable(self.delay) else self.delay
        if delay:
            await asyncio.sleep(delay)
        if self.fail:
            raise RuntimeError("handler broke its contract")
        self.finished += 1
        return ack(peek_header(payload).control_id, "AA") + b"Z" * self.padding

    def reject_oversize(self, head: bytes, size: int) -> bytes | None:
        header = peek_header(head)
        return ack(header.control_id, "AR") if header.readable else None


def ack(control_id: str, code: str) -> bytes:
    return f"MSH|^~\\&|IZ|CAIR2|||20240101||ACK^V04^ACK|R{control_id}|P|2.5.1\r" \
           f"MSA|{code}|{control_id}\r".encode()


def msa(response: bytes) -> tuple[str, str]:
    seg = parse(response.decode()).first("MSA")
    assert seg is not None
    return seg.value(1), seg.value(2)


class Peer:
    """A test client: raw bytes out, decoded response payloads in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = MllpDecoder(max_frame_bytes=64 * 1024 * 1024)
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, ssl_ctx: ssl.SSLContext | None = None) -> Peer:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None,
            limit=1024 * 1024)
        return cls(reader, writer)

    async def send(self, payload: bytes) -> None:
        await self.send_raw(encode_frame(payload))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(1024 * 1024)
                if not data:
                    raise EOFError("server closed the connection")
                self.pending += [e.payload for e in self.decoder.feed(data)
                                 if isinstance(e, Frame)]
        return self.pending.pop(0)

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes (EOF or reset) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(handler: FrameHandler | None = None,
                  **overrides: Any) -> AsyncIterator[tuple[MllpServer, Metrics]]:
    config = ServerConfig(host=HOST, port=0, **overrides)
    metrics = Metrics(CollectorRegistry())
    server = MllpServer(config, handler or AckHandler(), metrics)
    await server.start()
    try:
        yield server, metrics
    finally:
        await server.shutdown()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


_loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop


@pytest.fixture(autouse=True, params=_loop_factories())
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every behaviour holds on the stock asyncio loop and on uvloop (production's loop)."""
    global _loop_factory
    _loop_factory = request.param
    yield
    _loop_factory = asyncio.new_event_loop


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        runner.run(scenario())


# -- ordering ------------------------------------------------------------------------------

def test_many_messages_on_one_connection_are_answered_in_order() -> None:
    """A persistent connection gets one response per message, in the order sent."""
    async def scenario() -> None:
        async with serving() as (server, _):
            peer = await Peer.connect(server.port)
            for i in range(300):
                await peer.send(message(f"C{i}"))
                assert msa(await peer.receive()) == ("AA", f"C{i}")
            await peer.close()
    run(scenario)


def test_pipelined_frames_are_answered_in_order() -> None:
    """Frames written in one burst are answered in order even when the handler's latency varies."""
    async def scenario() -> None:
        rng = random.Random(7)
        async with serving(AckHandler(delay=lambda: rng.random() / 500)) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send_raw(b"".join(encode_frame(message(f"P{i}")) for i in range(100)))
            got = [msa(await peer.receive())[1] for _ in range(100)]
            assert got == [f"P{i}" for i in range(100)]
            await peer.close()
    run(scenario)


def test_concurrent_connections_each_keep_their_own_order() -> None:
    """Several connections interleave, yet each one sees its own responses in order."""
    async def one(port: int, n: int) -> None:
        peer = await Peer.connect(port)
        await peer.send_raw(b"".join(encode_frame(message(f"K{n}-{i}")) for i in range(50)))
        assert [msa(await peer.receive())[1] for _ in range(50)] == \
            [f"K{n}-{i}" for i in range(50)]
        await peer.close()

    async def scenario() -> None:
        async with serving(AckHandler(delay=0.001)) as (server, _):
            await asyncio.gather(*(one(server.port, n) for n in range(10)))
    run(scenario)


# -- framing tolerance ---------------------------------------------------------------------

def test_a_message_written_one_byte_at_a_time_is_answered() -> None:
    """Every byte arriving in its own read still makes one frame."""
    async def scenario() -> None:
        async with serving() as (server, _):
            peer = await Peer.connect(server.port)
            for byte in encode_frame(message("BYTEWISE")):
                await peer.send_raw(bytes([byte]))
                await asyncio.sleep(0.001)
            assert msa(await peer.receive()) == ("AA", "BYTEWISE")
            await peer.close()
    run(scenario)


def test_frames_split_at_every_byte_boundary_are_answered() -> None:
    """For every split point of a frame into two writes, the frame is answered."""
    async def scenario() -> None:
        async with serving() as (server, _):
            peer = await Peer.connect(server.port)
            frame = encode_frame(message("SPLIT"))
            for cut in range(1, len(frame)):
                await peer.send_raw(frame[:cut])
                await asyncio.sleep(0.002)
                await peer.send_raw(frame[cut:])
                assert msa(await peer.receive()) == ("AA", "SPLIT")
            await peer.close()
    run(scenario)


def test_stray_bytes_between_frames_are_skipped_and_counted() -> None:
    """LF and NUL between frames cost nothing but a counter."""
    async def scenario() -> None:
        async with serving() as (server, metrics):
            peer = await Peer.connect(server.port)
            await peer.send_raw(encode_frame(message("S1")) + b"\n\x00"
                                + encode_frame(message("S2")))
            assert [msa(await peer.receive())[1] for _ in range(2)] == ["S1", "S2"]
            assert sample(metrics, "iz_mllp_skipped_bytes_total") == 2
            await peer.close()
    run(scenario)


def test_a_new_start_byte_restarts_an_open_frame() -> None:
    """0x0B inside an open frame abandons it (counted); the restarted frame is answered."""
    async def scenario() -> None:
        async with serving() as (server, metrics):
            peer = await Peer.connect(server.port)
            await peer.send_raw(b"\x0b" + message("LOST")[:30] + encode_frame(message("KEPT")))
            assert msa(await peer.receive()) == ("AA", "KEPT")
            assert sample(metrics, "iz_frame_errors_total", reason="interrupted") == 1
            await peer.close()
    run(scenario)


def test_an_empty_frame_still_gets_exactly_one_response() -> None:
    """An empty frame goes to the handler like any other, keeping one response per frame."""
    async def scenario() -> None:
        async with serving() as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send_raw(encode_frame(b"") + encode_frame(message("AFTER-EMPTY")))
            assert msa(await peer.receive()) == ("AA", "")
            assert msa(await peer.receive()) == ("AA", "AFTER-EMPTY")
            await peer.close()
    run(scenario)


def test_logs_never_contain_message_content() -> None:
    """Whatever happens on a connection, the listener logs sizes and reasons, never payload bytes."""
    secret = b"ZEBULON^QUIXOTE"

    async def scenario() -> None:
        async with serving(max_frame_bytes=2048) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(message("PHI-1", b"PID|1||1||" + secret + b"\r"))
            await peer.receive()
            await peer.send(message("PHI-2", secret * 500))
            await peer.receive()
            await peer.send_raw(b"\x0b" + secret + b"\x0b" + secret)
            await peer.close()
            await eventually(lambda: server.connection_count == 0)

    with structlog.testing.capture_logs() as logs:
        run(scenario)
    assert logs, "expected the listener to log something"
    assert not [entry for entry in logs if "ZEBULON" in repr(entry)]


def test_oversize_frame_is_rejected_and_the_connection_survives() -> None:
    """A 10 MB frame gets the handler's AR, and the next message on the connection gets AA."""
    async def scenario() -> None:
        async with serving() as (server, metrics):
            peer = await Peer.connect(server.port)
            big = message("BIG", b"OBX|1|ST|||" + b"X" * (10 * 1024 * 1024) + b"\r")
            await peer.send(big)
            assert msa(await peer.receive()) == ("AR", "BIG")
            await peer.send(message("AFTER"))
            assert msa(await peer.receive()) == ("AA", "AFTER")
            assert sample(metrics, "iz_frame_errors_total", reason="too_large") == 1
            await peer.close()
    run(scenario)


def test_oversize_frame_without_msh_is_dropped_silently() -> None:
    """An oversize frame with no readable MSH has nobody to answer; the next message is answered."""
    async def scenario() -> None:
        async with serving(max_frame_bytes=1024) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(b"junk" * 1000)
            await peer.send(message("NEXT"))
            assert msa(await peer.receive()) == ("AA", "NEXT")
            await peer.close()
    run(scenario)


def test_client_closing_mid_frame_does_not_disturb_the_server() -> None:
    """A peer that vanishes mid-frame is counted as truncated; others are still served."""
    async def scenario() -> None:
        async with serving() as (server, metrics):
            quitter = await Peer.connect(server.port)
            await quitter.send_raw(b"\x0b" + message("HALF")[:20])
            await quitter.close()
            await eventually(lambda: sample(metrics, "iz_frame_errors_total",
                                            reason="truncated") == 1)
            peer = await Peer.connect(server.port)
            await peer.send(message("OK"))
            assert msa(await peer.receive()) == ("AA", "OK")
            await peer.close()
    run(scenario)


def test_client_closing_while_its_message_is_processed_does_not_disturb_the_server() -> None:
    """A peer that leaves before its answer is written costs nothing but the lost answer."""
    async def scenario() -> None:
        handler = AckHandler(delay=0.2)
        async with serving(handler) as (server, _):
            quitter = await Peer.connect(server.port)
            await quitter.send(message("GONE"))
            await eventually(lambda: handler.calls == 1)
            await quitter.close()
            await eventually(lambda: handler.finished == 1)
            peer = await Peer.connect(server.port)
            await peer.send(message("OK"))
            assert msa(await peer.receive()) == ("AA", "OK")
            await peer.close()
    run(scenario)


def test_half_closed_peer_still_gets_its_responses() -> None:
    """A peer that sends, then shuts its write side, receives every response before EOF."""
    async def scenario() -> None:
        async with serving(AckHandler(delay=0.01)) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send_raw(b"".join(encode_frame(message(f"H{i}")) for i in range(3)))
            peer.writer.write_eof()
            assert [msa(await peer.receive())[1] for _ in range(3)] == ["H0", "H1", "H2"]
            assert await peer.closed_by_server()
            await peer.close()
    run(scenario)


def test_a_handler_that_raises_drops_only_its_connection() -> None:
    """The handler contract says never raise; if it does, that peer is dropped, others served."""
    async def scenario() -> None:
        async with serving(AckHandler(fail=True)) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(message("BOOM"))
            assert await peer.closed_by_server()
            await peer.close()
            server.handler = AckHandler()
            other = await Peer.connect(server.port)
            await other.send(message("FINE"))
            assert msa(await other.receive()) == ("AA", "FINE")
            await other.close()
    run(scenario)


# -- limits and timeouts -------------------------------------------------------------------

def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_a_thousand_idle_connections_and_max_connections_is_enforced() -> None:
    """1,000 idle connections are held open; the 1,001st is closed at once and counted."""
    _raise_fd_limit(2 * 1000 + 200)

    async def scenario() -> None:
        async with serving(max_connections=1000) as (server, metrics):
            peers = [await Peer.connect(server.port) for _ in range(1000)]
            await eventually(lambda: server.connection_count == 1000)
            extra = await Peer.connect(server.port)
            assert await extra.closed_by_server()
            await extra.close()
            assert sample(metrics, "iz_connections_total", outcome="refused") == 1
            assert sample(metrics, "iz_active_connections") == 1000
            for i in (0, 499, 999):
                await peers[i].send(message(f"I{i}"))
                assert msa(await peers[i].receive()) == ("AA", f"I{i}")
            for peer in peers:
                await peer.close()
            await eventually(lambda: server.connection_count == 0)
    run(scenario)


def test_idle_connection_is_closed_after_idle_timeout() -> None:
    """No frame for idle_timeout_s closes the connection and counts it."""
    async def scenario() -> None:
        async with serving(idle_timeout_s=0.2) as (server, metrics):
            peer = await Peer.connect(server.port)
            started = time.monotonic()
            assert await peer.closed_by_server(timeout=3)
            assert 0.15 <= time.monotonic() - started < 2
            assert sample(metrics, "iz_connections_total", outcome="idle_timeout") == 1
            await peer.close()
    run(scenario)


def test_active_connection_is_not_idle() -> None:
    """Messages arriving more often than idle_timeout_s keep the connection open."""
    async def scenario() -> None:
        async with serving(idle_timeout_s=0.3) as (server, _):
            peer = await Peer.connect(server.port)
            for i in range(8):
                await asyncio.sleep(0.1)
                await peer.send(message(f"A{i}"))
                assert msa(await peer.receive()) == ("AA", f"A{i}")
            await peer.close()
    run(scenario)


def test_garbage_outside_frames_does_not_keep_a_connection_alive() -> None:
    """A peer dripping stray bytes (no frame ever starting) is still closed as idle."""
    async def scenario() -> None:
        async with serving(idle_timeout_s=0.3) as (server, metrics):
            peer = await Peer.connect(server.port)
            for _ in range(10):
                if peer.writer.is_closing():
                    break
                peer.writer.write(b"\n\x00junk")
                await asyncio.sleep(0.1)
            assert await peer.closed_by_server(timeout=2)
            assert sample(metrics, "iz_connections_total", outcome="idle_timeout") == 1
            await peer.close()
    run(scenario)


def test_slow_handler_does_not_count_as_idle() -> None:
    """A message that takes longer than idle_timeout_s to answer is still answered."""
    async def scenario() -> None:
        async with serving(AckHandler(delay=0.4), idle_timeout_s=0.1) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(message("SLOW"))
            assert msa(await peer.receive()) == ("AA", "SLOW")
            await peer.close()
    run(scenario)


def test_slow_loris_frame_is_cut_off_after_frame_timeout() -> None:
    """A frame trickling in slower than frame_timeout_s allows is closed even though bytes flow."""
    async def scenario() -> None:
        async with serving(frame_timeout_s=0.3, idle_timeout_s=30) as (server, metrics):
            peer = await Peer.connect(server.port)
            await peer.send_raw(b"\x0bMSH")
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                for byte in message("LORIS"):
                    await peer.send_raw(bytes([byte]))
                    await asyncio.sleep(0.05)
                    if peer.reader.at_eof() or time.monotonic() - started > 3:
                        break
            assert await peer.closed_by_server(timeout=3)
            assert time.monotonic() - started < 3
            assert sample(metrics, "iz_connections_total", outcome="frame_timeout") == 1
            await peer.close()
    run(scenario)


def test_peer_that_never_reads_is_disconnected_after_write_timeout() -> None:
    """A peer that never reads its ACKs is cut off, and the server stops reading from it meanwhile.

    The bound on handler calls is the memory bound: the server takes no more frames than its
    small queue while responses sit unsent, however much the peer pushes.
    """
    handler = AckHandler(padding=1024 * 1024)

    def flood(port: int) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(15)
        try:
            sock.connect((HOST, port))
            frame = encode_frame(message("FLOOD"))
            for _ in range(100_000):
                sock.sendall(frame)
            return "never cut off"
        except (ConnectionResetError, BrokenPipeError):
            return "cut off"
        except TimeoutError:
            return "blocked, never cut off"
        finally:
            sock.close()

    async def scenario() -> None:
        async with serving(handler, write_timeout_s=0.5) as (server, metrics):
            started = time.monotonic()
            outcome = await asyncio.to_thread(flood, server.port)
            assert outcome == "cut off"
            assert time.monotonic() - started < 10
            assert handler.calls < 100
            assert sample(metrics, "iz_connections_total", outcome="write_timeout") == 1
    run(scenario)


# -- shutdown ------------------------------------------------------------------------------

def test_graceful_shutdown_answers_the_in_flight_message() -> None:
    """A message being processed when shutdown starts is answered before the connection closes."""
    async def scenario() -> None:
        handler = AckHandler(delay=0.3)
        async with serving(handler, shutdown_grace_s=5) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(message("INFLIGHT"))
            await eventually(lambda: handler.calls == 1)
            stopping = asyncio.create_task(server.shutdown())
            assert msa(await peer.receive()) == ("AA", "INFLIGHT")
            assert await peer.closed_by_server()
            await stopping
            await peer.close()
    run(scenario)


def test_shutdown_stops_accepting_and_closes_idle_connections() -> None:
    """After shutdown no new connection is served and idle ones are closed promptly."""
    async def scenario() -> None:
        async with serving(shutdown_grace_s=5) as (server, _):
            port = server.port
            idle = await Peer.connect(port)
            await eventually(lambda: server.connection_count == 1)
            started = time.monotonic()
            await server.shutdown()
            assert time.monotonic() - started < 1
            assert await idle.closed_by_server(timeout=1)
            await idle.close()
            with pytest.raises(OSError):
                late = await Peer.connect(port)
                await late.close()
    run(scenario)


def test_shutdown_gives_up_after_the_grace_period() -> None:
    """A handler slower than shutdown_grace_s does not hold shutdown up."""
    async def scenario() -> None:
        handler = AckHandler(delay=3)
        async with serving(handler, shutdown_grace_s=0.2) as (server, _):
            peer = await Peer.connect(server.port)
            await peer.send(message("STUCK"))
            await eventually(lambda: handler.calls == 1)
            started = time.monotonic()
            await server.shutdown()
            assert time.monotonic() - started < 1.5
            assert await peer.closed_by_server(timeout=1)
            await peer.close()
    run(scenario)


def test_sigterm_triggers_graceful_shutdown() -> None:
    """SIGTERM during serve_forever answers the in-flight message, then serve_forever returns."""
    async def scenario() -> None:
        handler = AckHandler(delay=0.3)
        server = MllpServer(ServerConfig(host=HOST, port=0), handler, Metrics(CollectorRegistry()))
        await server.start()
        serving_task = asyncio.create_task(server.serve_forever())
        peer = await Peer.connect(server.port)
        await peer.send(message("TERM"))
        await eventually(lambda: handler.calls == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert msa(await peer.receive()) == ("AA", "TERM")
        async with asyncio.timeout(5):
            await serving_task
        await peer.close()
    run(scenario)


# -- TLS -----------------------------------------------------------------------------------

def client_context(certs: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    return ctx


def test_tls_context_is_none_when_tls_is_off() -> None:
    """No certificate configured means plain TCP."""
    assert build_ssl_context(TlsConfig()) is None


def test_tls_round_trip(certs: Path) -> None:
    """With a server certificate configured, MLLP runs over TLS."""
    tls = TlsConfig(cert_file=str(certs / "server.pem"), key_file=str(certs / "server.key"))

    async def scenario() -> None:
        async with serving(tls=tls) as (server, _):
            peer = await Peer.connect(server.port, client_context(certs, with_cert=False))
            for i in range(3):
                await peer.send(message(f"T{i}"))
                assert msa(await peer.receive()) == ("AA", f"T{i}")
            await peer.close()
    run(scenario)


MTLS_CASES = [
    pytest.param(True, True, id="client-cert-accepted"),
    pytest.param(False, False, id="no-client-cert-refused"),
]


@pytest.mark.parametrize(("with_cert", "answered"), MTLS_CASES)
def test_mutual_tls_requires_a_client_certificate(certs: Path, with_cert: bool,
                                                  answered: bool) -> None:
    """With require_client_cert, only peers presenting a certificate from the CA are served."""
    tls = TlsConfig(cert_file=str(certs / "server.pem"), key_file=str(certs / "server.key"),
                    ca_file=str(certs / "ca.pem"), require_client_cert=True)

    async def scenario() -> None:
        async with serving(tls=tls) as (server, _):
            try:
                peer = await Peer.connect(server.port, client_context(certs, with_cert))
            except (ssl.SSLError, ConnectionError):
                assert not answered
                return
            try:
                await peer.send(message("M1"))
                if answered:
                    assert msa(await peer.receive()) == ("AA", "M1")
                else:
                    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
                        await peer.receive(timeout=5)
            finally:
                await peer.close()
    run(scenario)


# -- with the real pipeline ----------------------------------------------------------------

def real_handler(config: Config, metrics: Metrics) -> tuple[FrameHandler, Callable[[], None]]:
    """The engine's own FrameHandler (pipeline, adapted by engine.service when it exists)."""
    pipeline_mod = pytest.importorskip("engine.pipeline")
    pipeline = pipeline_mod.build_pipeline(config, metrics)
    if hasattr(pipeline, "handle"):
        return pipeline, getattr(pipeline, "close", lambda: None)
    service = pytest.importorskip("engine.service")
    adapter = service.AsyncPipeline(pipeline)
    return adapter, adapter.close


async def one_exchange(server_config: ServerConfig, payload: bytes) -> bytes:
    metrics = Metrics(CollectorRegistry())
    handler, close = real_handler(Config(server=server_config), metrics)
    server = MllpServer(server_config, handler, metrics)
    await server.start()
    try:
        peer = await Peer.connect(server.port)
        try:
            await peer.send(payload)
            return await peer.receive()
        finally:
            await peer.close()
    finally:
        await server.shutdown()
        close()


def test_real_pipeline_answers_over_mllp() -> None:
    """The engine's own pipeline, behind the listener, answers a VXU with MSA-2 = its MSH-10."""
    async def scenario() -> None:
        response = await one_exchange(ServerConfig(host=HOST, port=0), message("E2E-1"))
        code, control_id = msa(response)
        assert control_id == "E2E-1"
        assert code in ("AA", "AE", "AR")
    run(scenario)


def test_real_pipeline_rejects_an_oversize_frame_with_ar() -> None:
    """The real pipeline answers an oversize frame AR, addressed by the frame's MSH-10."""
    async def scenario() -> None:
        response = await one_exchange(
            ServerConfig(host=HOST, port=0, max_frame_bytes=2048),
            message("E2E-BIG", b"OBX|1|ST|||" + b"X" * 5000 + b"\r"))
        assert msa(response) == ("AR", "E2E-BIG")
    run(scenario)


def test_threaded_adapter_answers_every_frame_in_order_and_closes_cleanly() -> None:
    """AsyncPipeline with a thread pool: one answer per frame, in order, on 4 connections;
    `close` finishes queued work and stops its threads; it refuses work afterwards."""
    import threading

    pipeline_mod = pytest.importorskip("engine.pipeline")
    service = pytest.importorskip("engine.service")
    config, metrics = Config(), Metrics(CollectorRegistry())
    adapter = service.AsyncPipeline(pipeline_mod.build_pipeline(config, metrics), threads=3)

    async def scenario() -> None:
        server = MllpServer(ServerConfig(host=HOST, port=0), adapter, metrics)
        await server.start()
        try:
            async def one(c: int) -> None:
                peer = await Peer.connect(server.port)
                try:
                    ids = [f"T{c}-{i}" for i in range(20)]
                    for control_id in ids:
                        await peer.send(message(control_id))
                    assert [msa(await peer.receive())[1] for _ in ids] == ids
                finally:
                    await peer.close()
            await asyncio.gather(*(one(c) for c in range(4)))
        finally:
            await server.shutdown()
    try:
        run(scenario)
    finally:
        adapter.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("iz-pipeline")]
    with pytest.raises(RuntimeError):
        asyncio.run(adapter.handle(message("LATE"), "peer"))


def test_threaded_adapter_passes_a_handler_crash_to_the_caller() -> None:
    """If `process` ever raised, the awaiting task gets the exception (the server drops the
    peer) and the pool thread survives to answer the next frame."""
    service = pytest.importorskip("engine.service")

    class Flaky:
        calls = 0

        def process(self, payload: bytes, peer: str = "") -> bytes:
            self.calls += 1
            if self.calls == 1:
                raise ValueError("boom")
            return b"ok:" + payload

    adapter = service.AsyncPipeline(Flaky(), threads=1)

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await adapter.handle(b"a", "p")
        assert await adapter.handle(b"b", "p") == b"ok:b"
    try:
        run(scenario)
    finally:
        adapter.close()
