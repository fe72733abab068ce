"""The operations HTTP side: ``/metrics``, ``/healthz``, ``/readyz`` on a tiny asyncio server.

No framework and no new dependency: three read-only routes do not earn one. HTTP/1.1 is
spoken just enough for Prometheus, load-balancer probes and curl: one request per
connection (``Connection: close``), ``GET`` and ``HEAD`` only, request head capped at
16 KiB and 10 s. Anything malformed gets ``400`` and the connection is closed; nothing
the client sends can raise out of the handler. (The SOAP transport will need a real HTTP
stack; it is a separate decision.)

- ``GET /metrics``: `prometheus_client.generate_latest` over the injected registry.
- ``GET /healthz``: 200 ``ok`` while the process serves requests at all (liveness).
- ``GET /readyz``: 200 when the injected ``ready()`` returns True, else 503 (a ``ready``
  that raises counts as not ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from engine.config import HttpConfig
from engine.observability.logging import get_logger

_log = get_logger("engine.http")

_MAX_HEAD_BYTES = 16 * 1024
_REQUEST_TIMEOUT_S = 10.0
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(1\.[01])\Z")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


class HttpServer:
    """Serves /metrics, /healthz and /readyz; `start`, then `shutdown`."""

    def __init__(self, config: HttpConfig, registry: CollectorRegistry,
                 ready: Callable[[], bool]) -> None:
        self.config = config
        self.registry = registry
        self.ready = ready
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        for sock in self.sockets:
            return int(sock.getsockname()[1])
        raise RuntimeError("HttpServer is not listening")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.config.host,
                                                  self.config.port, limit=_MAX_HEAD_BYTES)
        _log.info("http_listening", host=self.config.host, port=self.port)

    async def shutdown(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        # Give closing client handlers a moment so their transports are really gone.
        for _ in range(50):
            if not self._writers:
                break
            await asyncio.sleep(0.01)
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            status, headers, body, head_only = await self._respond(reader)
            writer.write(_render(status, headers, b"" if head_only else body, len(body)))
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                await writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            pass
        except Exception:  # never let a request take the server down
            _log.exception("http_handler_failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader
                       ) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _plain(408, "request timeout")
        except asyncio.LimitOverrunError:
            return _plain(431, "request head too large")
        except asyncio.IncompleteReadError:
            return _plain(400, "bad request")
        request_line = head.split(b"\r\n", 1)[0]
        match = _REQUEST_LINE.match(request_line)
        if match is None:
            return _plain(400, "bad request")
        method, target = match.group(1), match.group(2)
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            status, headers, body, _ = _plain(405, "method not allowed")
            return status, [*headers, ("Allow", "GET, HEAD")], body, False
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            return 200, [("Content-Type", CONTENT_TYPE_LATEST)], generate_latest(self.registry), \
                head_only
        if path == b"/healthz":
            return (*_plain(200, "ok")[:3], head_only)
        if path == b"/readyz":
            try:
                is_ready = bool(self.ready())
            except Exception:
                _log.warning("readiness_check_failed")
                is_ready = False
            return (*_plain(200 if is_ready else 503, "ready" if is_ready else "not ready")[:3],
                    head_only)
        return (*_plain(404, "not found")[:3], head_only)


def _plain(status: int, text: str) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    return status, [("Content-Type", _TEXT)], (text + "\n").encode(), False


def _render(status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
             *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
