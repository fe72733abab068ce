"""Several engine processes behind one MLLP port (`server.workers` > 1).

Why: CPython runs one thread of Python at a time per process, and VXU intake is CPU work
(decode, validate, map, plan the rows) around short database waits, so one process tops out
at one core however many pipeline threads it has. `bench/vxu.py --workers N` measures what more
processes buy on the machine at hand.

How: this process, the supervisor, binds the MLLP socket and starts N worker processes
(`iz-engine serve --worker-fd FD ...`, the same configuration). The supervisor accepts each
connection itself and passes the connected socket to the next ready worker in turn over a
Unix socket pair (SCM_RIGHTS); the worker adopts it as if it had accepted it (TLS handshake
included). Round robin, because letting the workers accept from one shared socket was measured
to hand a burst of new connections — 8 EHR interfaces reconnecting at once — to whichever
worker woke first, leaving the others idle. A connection stays with its worker for its whole
life, so per-connection ordering is unchanged. Nothing else is shared in memory: every
invariant across messages (one log row per (sender, MSH-10), patient and event keys) already
lives in the database's unique constraints and locks, which is what makes workers safe.

The supervisor also
- upgrades an embedded SQLite schema once before any worker opens it (workers then find it
  current; PostgreSQL is upgraded by `iz-engine db upgrade` as always);
- serves `/metrics` (the workers' metrics summed through prometheus_client's multiprocess mode
  in a private directory), `/healthz`, and `/readyz` (every worker up);
- restarts a worker that dies after it was ready (a crash costs its in-flight senders one
  timeout and retransmission, which the store answers idempotently); a worker that fails
  before it is ready on its first start (bad database URL, schema not current) stops the
  whole service with exit status 2, since restarting cannot cure configuration, while a
  replacement that cannot start (the database is down just now) is retried with back-off;
- on SIGTERM/SIGINT forwards SIGTERM, so each worker shuts down gracefully as a lone engine
  does, and kills what is left after `server.shutdown_grace_s` plus a margin.

Workers learn of a vanished supervisor by end-of-file on their stdin (a pipe only the
supervisor holds) and then shut down gracefully too: no orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from engine.config import Config
from engine.observability.logging import get_logger
from engine.server import listen_backlog

log = get_logger("engine.workers")

READY_LINE = b"ready\n"
START_TIMEOUT_S = 120.0  # loading profiles, schedule and the store takes a few seconds
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
KILL_MARGIN_S = 5.0


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: socket.socket | None = None  # our end of the hand-off socket pair
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # restarts in a row that never became ready
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Runs `config.server.workers` engine processes on one listening socket (module doc)."""

    def __init__(self, config: Config, worker_args: Sequence[str]) -> None:
        """`worker_args`: the `serve` options every worker gets (config path, overrides)."""
        self.config = config
        self.worker_args = list(worker_args)
        self.workers = [_Worker(i) for i in range(config.server.workers)]
        self.metrics_dir = tempfile.mkdtemp(prefix="iz-engine-metrics-")
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self.sock: socket.socket | None = None
        self._next = 0
        self._acceptor: asyncio.Task[None] | None = None
        self._stopping = False
        self._failed: str | None = None
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    def ready(self) -> bool:
        return not self._stopping and all(w.ready for w in self.workers)

    def bind(self) -> None:
        """Bind and listen on server.host:port (this process accepts; workers are dealt the
        connections)."""
        cfg = self.config.server
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.sock = socket.create_server((cfg.host, cfg.port), family=family,
                                         backlog=listen_backlog(cfg))
        self.sock.setblocking(False)

    async def start(self) -> None:
        """Start every worker and wait until all are ready; raises RuntimeError if one fails."""
        for worker in self.workers:
            await self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if self._failed is not None:
                raise RuntimeError(self._failed)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("workers did not become ready in time")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        if self._failed is not None:
            raise RuntimeError(self._failed)
        self._acceptor = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        """Accept connections and hand each to the next ready worker (round robin)."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. out of descriptors: back off, keep serving
                log.warning("worker.accept_failed", error=type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            with conn:
                self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        count = len(self.workers)
        for step in range(count):
            worker = self.workers[(self._next + step) % count]
            if not worker.ready or worker.channel is None:
                continue
            try:
                socket.send_fds(worker.channel, [b"c"], [conn.fileno()])
            except OSError:  # going away, or its channel is full: try the next
                continue
            self._next = (self._next + step + 1) % count
            return
        # No worker can take it (all restarting): closing makes the sender retry.
        log.warning("worker.connection_dropped", reason="no_ready_worker")

    async def run_until(self, stop: asyncio.Event) -> str | None:
        """Supervise until `stop` is set or a worker cannot be (re)started; the failure."""
        while not stop.is_set() and self._failed is None:
            self._changed.clear()
            stopper = asyncio.ensure_future(stop.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait({stopper, changed}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, changed):
                task.cancel()
        return self._failed

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # never block the accept loop: a worker too stuck to drain its channel is skipped
        ours.setblocking(False)
        if worker.channel is not None:
            worker.channel.close()
        worker.channel = ours
        fd = theirs.fileno()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.metrics_dir)
        args = [sys.executable, "-m", "engine", "serve", *self.worker_args,
                "--worker-fd", str(fd), "--worker-port", str(self.port),
                "--worker-index", str(worker.index)]
        worker.ready = False
        worker.started_at = time.monotonic()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                pass_fds=(fd,), env=env)
        finally:
            theirs.close()  # the worker holds its end now
        worker.waiter = asyncio.ensure_future(self._watch(worker, worker.process))
        log.info("worker.started", worker=worker.index, pid=worker.process.pid)

    async def _watch(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if line == READY_LINE:
            worker.ready = True
            self._changed.set()
            log.info("worker.ready", worker=worker.index, pid=process.pid)
            await process.stdout.read()  # nothing more is expected; returns at exit
        code = await process.wait()
        mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        was_ready, worker.ready = worker.ready, False
        if self._stopping:
            self._changed.set()
            return
        if not was_ready and worker.restarts == 0:
            # the first start: configuration or the store is wrong, restarting cannot cure it
            self._failed = f"worker {worker.index} exited with status {code} while starting"
            log.error("worker.failed_to_start", worker=worker.index, status=code)
            self._changed.set()
            return
        # A replacement that cannot start (e.g. the database is down just now) is retried with
        # a growing pause: one crashed worker must not turn a database blip into an outage.
        log.warning("worker.exited", worker=worker.index, pid=process.pid, status=code,
                    was_ready=was_ready)
        worker.failures = 0 if was_ready else worker.failures + 1
        worker.restarts += 1
        await asyncio.sleep(min(RESTART_DELAY_S * 2 ** worker.failures, MAX_RESTART_DELAY_S))
        if not self._stopping:
            await self._spawn(worker)
        self._changed.set()

    async def shutdown(self) -> None:
        """SIGTERM every worker, wait out their grace period, kill stragglers, clean up."""
        self._stopping = True
        if self._acceptor is not None:  # no new connections from here on
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
        if self.sock is not None:
            self.sock.close()
        running = [w.process for w in self.workers
                   if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        grace = self.config.server.shutdown_grace_s + KILL_MARGIN_S
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=grace)
            for process in running:
                if process.returncode is None:
                    log.warning("worker.killed", pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for worker in self.workers:
            if worker.waiter is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(worker.waiter, timeout=5)
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
