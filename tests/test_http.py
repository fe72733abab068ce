"""Spec for the operations HTTP side (engine.http): /metrics, /healthz, /readyz, robustness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from engine.config import HttpConfig
from engine.http import HttpServer
from engine.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def serving(ready: Callable[[], bool] = lambda: True) -> AsyncIterator[HttpServer]:
    metrics = Metrics(CollectorRegistry())
    metrics.connections.labels(outcome="accepted").inc()
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), metrics.registry, ready)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes, split status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return status, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def not_ready() -> bool:
    return False


def broken_ready() -> bool:
    raise RuntimeError("database check exploded")


ROUTES = [
    pytest.param(get("/healthz"), lambda: True, 200, b"ok\n", id="healthz"),
    pytest.param(get("/healthz?verbose=1"), lambda: True, 200, b"ok\n", id="query-ignored"),
    pytest.param(get("/readyz"), lambda: True, 200, b"ready\n", id="readyz-ready"),
    pytest.param(get("/readyz"), not_ready, 503, b"not ready\n", id="readyz-not-ready"),
    pytest.param(get("/readyz"), broken_ready, 503, b"not ready\n", id="readyz-check-raises"),
    pytest.param(get("/nowhere"), lambda: True, 404, b"not found\n", id="unknown-path"),
    pytest.param(get("/metrics", "POST"), lambda: True, 405, b"method not allowed\n",
                 id="post-not-allowed"),
    pytest.param(get("/healthz", "HEAD"), lambda: True, 200, b"", id="head-has-no-body"),
    pytest.param(b"\x00\x01\x02 garbage\r\n\r\n", lambda: True, 400, b"bad request\n",
                 id="garbage"),
    pytest.param(b"GET /healthz HTTP/9.9\r\n\r\n", lambda: True, 400, b"bad request\n",
                 id="unknown-version"),
    pytest.param(b"GET /healthz\r\n\r\n", lambda: True, 400, b"bad request\n",
                 id="http-0.9-style"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", lambda: True,
                 431, b"request head too large\n", id="head-too-large"),
]


@pytest.mark.parametrize(("request_bytes", "ready", "status", "body"), ROUTES)
def test_route(request_bytes: bytes, ready: Callable[[], bool], status: int,
               body: bytes) -> None:
    """Each request gets its documented status and body, then the connection closes."""
    async def scenario() -> None:
        async with serving(ready) as server:
            got_status, headers, got_body = await exchange(server.port, request_bytes)
            assert (got_status, got_body) == (status, body)
            assert headers["connection"] == "close"
    asyncio.run(scenario())


def test_metrics_are_prometheus_text() -> None:
    """/metrics serves the injected registry in the Prometheus text format."""
    async def scenario() -> None:
        async with serving() as server:
            status, headers, body = await exchange(server.port, get("/metrics"))
            assert status == 200
            assert headers["content-type"] == CONTENT_TYPE_LATEST
            assert b'iz_connections_total{outcome="accepted"} 1.0' in body
            assert int(headers["content-length"]) == len(body)
    asyncio.run(scenario())


def test_head_reports_the_length_of_the_body_it_omits() -> None:
    """HEAD carries the Content-Length GET would have."""
    async def scenario() -> None:
        async with serving() as server:
            _, headers, _ = await exchange(server.port, get("/healthz", "HEAD"))
            assert headers["content-length"] == "3"
    asyncio.run(scenario())


def test_client_leaving_mid_request_does_not_disturb_the_server() -> None:
    """A half-sent request followed by a hang-up leaves the server serving."""
    async def scenario() -> None:
        async with serving() as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /hea")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            status, _, _ = await exchange(server.port, get("/healthz"))
            assert status == 200
    asyncio.run(scenario())


def test_shutdown_closes_an_open_idle_connection() -> None:
    """Shutdown does not wait for a client that never sends its request."""
    async def scenario() -> None:
        async with serving() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await server.shutdown()
            async with asyncio.timeout(2):
                await reader.read(-1)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    asyncio.run(scenario())
