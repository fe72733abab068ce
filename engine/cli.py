"""The `iz-engine` command line: serve, send, validate, db, cdsi-check, schedule.

Each command loads configuration once, builds what it needs and hands each part its slice.
Exit codes: 0 success, 1 the work ran but found problems, 2 usage/configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from engine import config as config_mod
from engine.errors import ConfigError, StoreError
from engine.observability import logging as obs_logging
from engine.observability.metrics import Metrics
from engine.pipeline import Journal, MessageHandler, Pipeline, Request, Respond, build_pipeline
from engine.responses import ACKS_DIR, AckPolicy, ResponseBuilder, system_clock
from engine.validation import Validator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iz-engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the MLLP listener and the HTTP side")
    s.add_argument("--config", type=Path)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--http-port", type=int)
    s.add_argument("--database-url")
    s.add_argument("--as-of", help="fixed assessment date YYYY-MM-DD (test environments)")
    s.add_argument("--workers", type=int,
                   help="engine processes sharing the MLLP port (server.workers)")
    # Internal: how the supervisor (engine.workers) starts a worker process.
    s.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    s.add_argument("--worker-port", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)

    snd = sub.add_parser("send", help="replay message files/folders over MLLP")
    snd.add_argument("target", metavar="HOST:PORT")
    snd.add_argument("paths", nargs="+", type=Path)
    snd.add_argument("--concurrency", type=int, default=1)
    snd.add_argument("--json", action="store_true")
    snd.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")
    snd.add_argument("--tls-ca", default="", help="CA file to verify the server (implies --tls)")
    snd.add_argument("--tls-cert", default="",
                     help="client certificate for mutual TLS (implies --tls)")
    snd.add_argument("--tls-key", default="", help="the client certificate's key")

    v = sub.add_parser("validate", help="check messages offline and print the response")
    v.add_argument("paths", nargs="+", type=Path)
    v.add_argument("--json", action="store_true")
    v.add_argument("--config", type=Path)

    db = sub.add_parser("db", help="database schema")
    dbs = db.add_subparsers(dest="db_command", required=True)
    up = dbs.add_parser("upgrade", help="apply migrations")
    up.add_argument("--database-url")
    up.add_argument("--config", type=Path)
    purge = dbs.add_parser("purge-payloads",
                           help="drop raw message content older than the retention period")
    purge.add_argument("--older-than-days", type=int,
                       help="default: database.payload_retention_days")
    purge.add_argument("--database-url")
    purge.add_argument("--config", type=Path)

    c = sub.add_parser("cdsi-check", help="run CDC CDSi test cases through the forecaster")
    c.add_argument("cases", type=Path)
    c.add_argument("--json", action="store_true")

    sch = sub.add_parser("schedule", help="CDSi schedule data")
    schs = sch.add_subparsers(dest="schedule_command", required=True)
    imp = schs.add_parser("import", help="compile a CDC supporting-data release")
    imp.add_argument("src", type=Path)
    imp.add_argument("--dest", type=Path)
    return p


def _load_config(path: Path | None, err: TextIO) -> config_mod.Config | None:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=err)
        return None


def _policy(cfg: config_mod.Config) -> AckPolicy:
    path = Path(cfg.ack_policy)
    if not path.is_absolute() and not path.exists():
        path = ACKS_DIR.parent / cfg.ack_policy
    return AckPolicy.load(path)


def _validator(policy: AckPolicy) -> Validator:
    """The conformance validator, compiled once from profiles/ at start-up."""
    return Validator.load(severity_overrides=policy.severity_overrides)


def make_pipeline(cfg: config_mod.Config, metrics: Metrics,
                  handlers: Mapping[str, MessageHandler] | None = None,
                  journal: Journal | None = None) -> Pipeline:
    policy = _policy(cfg)
    clock = system_clock
    if cfg.as_of:
        fixed = date.fromisoformat(cfg.as_of)
        pipeline_today = lambda: fixed  # noqa: E731 - a one-line injected clock
    else:
        pipeline_today = None
    responses = ResponseBuilder(cfg.identity, clock=clock, policy=policy)
    pipeline = build_pipeline(cfg, metrics, responses=responses, handlers=handlers,
                              validator=_validator(policy), journal=journal)
    if pipeline_today is not None:
        pipeline.today = pipeline_today
    return pipeline


def _stop_event() -> asyncio.Event:
    """Set by SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _stop_on_stdin_eof(stop: asyncio.Event) -> None:
    """A worker's stdin is a pipe only its supervisor holds: end-of-file means it is gone."""
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside the
        # buffered reader would hold its lock and abort the interpreter at exit.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="iz-supervisor-watch", daemon=True).start()


class _StoreProbe:
    """Readiness of the store, refreshed off the event loop (a probe must never block MLLP).

    Every `interval_s` a pool connection runs `SELECT 1` on the default executor; `/readyz`
    reads the last verdict. Until the first probe returns, the store counts as ready: `serve`
    opened it moments ago.
    """

    def __init__(self, engine: Any, interval_s: float = 2.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.ok = True
        self._task: asyncio.Task[None] | None = None

    def _ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # any failure means "not ready"; the store logs its own errors
            return False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ping = loop.run_in_executor(None, self._ping)
            try:  # a database that does not answer at all is as unready as one that refuses
                self.ok = await asyncio.wait_for(asyncio.shield(ping), self.interval_s * 2)
            except TimeoutError:
                self.ok = False
                self.ok = await ping  # one ping at a time, however long this one takes
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


RETENTION_INTERVAL_S = 3600.0


async def _retention(repository: Any, days: int) -> None:
    """Hourly: drop raw payloads older than `days` (database.payload_retention_days)."""
    log = obs_logging.get_logger("engine.cli")
    loop = asyncio.get_running_loop()
    while True:
        try:
            dropped = await loop.run_in_executor(
                None, repository.purge_payloads, _retention_cutoff(days))
            if dropped:
                log.info("store.payloads_purged", messages=dropped, older_than_days=days)
        except Exception as exc:  # the store may be down: try again next round
            log.warning("store.purge_failed", error=type(exc).__name__)
        await asyncio.sleep(RETENTION_INTERVAL_S)


async def _serve(cfg: config_mod.Config, worker_fd: int | None = None,
                 worker_index: int = 0, worker_port: int = 0) -> int:
    """One engine process: MLLP + pipeline + store; with `worker_fd`, a worker of
    `engine.workers.Supervisor` taking the connections it hands over on that channel (no
    HTTP side of its own)."""
    from engine.handlers import build_handlers
    from engine.http import HttpServer
    from engine.server import MllpServer
    from engine.service import AsyncPipeline
    from engine.workers import READY_LINE

    log = obs_logging.get_logger("engine.cli")
    metrics = Metrics()
    try:
        bundle = build_handlers(cfg.database.url, metrics)
    except StoreError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    pipeline = make_pipeline(cfg, metrics, handlers=bundle.handlers, journal=bundle.journal)
    frames = AsyncPipeline(pipeline, threads=bundle.executor_threads)
    sock = socket.socket(fileno=worker_fd) if worker_fd is not None else None
    server = MllpServer(cfg.server, frames, metrics,
                        handoff=(sock, worker_port) if sock is not None else None)
    probe = _StoreProbe(bundle.writer.engine)  # workers: the supervisor probes for all
    http = (HttpServer(cfg.http, metrics.registry,
                       ready=lambda: probe.ok and not server.closing) if sock is None
            else None)
    try:
        await server.start()
        if http is not None:
            await http.start()
    except OSError as exc:
        print(f"serve: cannot listen ({exc.strerror})", file=sys.stderr)
        await server.shutdown()
        frames.close()
        bundle.close()
        return 2
    stop = _stop_event()
    if http is not None:
        probe.start()
    retention = None
    if cfg.database.payload_retention_days and worker_index == 0:  # one purger is enough
        retention = asyncio.get_running_loop().create_task(
            _retention(bundle.repository, cfg.database.payload_retention_days))
    if sock is not None:
        _stop_on_stdin_eof(stop)
        log.info("engine.worker_started", worker=worker_index, mllp_port=server.port)
        os.write(sys.stdout.fileno(), READY_LINE)
    else:
        log.info("engine.started", mllp_port=server.port,
                 http_port=http.port if http is not None else None,
                 database=cfg.database.url.split("://")[0])
    await stop.wait()
    log.info("engine.stopping")
    await probe.stop()
    if retention is not None:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
    await server.shutdown()
    if http is not None:
        await http.shutdown()
    frames.close()
    bundle.close()
    log.info("engine.stopped")
    return 0


async def _supervise(cfg: config_mod.Config, worker_args: Sequence[str]) -> int:
    """`server.workers` engine processes on one port, plus the HTTP side (engine.workers)."""
    from engine.http import HttpServer
    from engine.store.db import is_sqlite
    from engine.store.migrate import upgrade
    from engine.workers import Supervisor

    log = obs_logging.get_logger("engine.cli")
    if is_sqlite(cfg.database.url):
        # Measured (bench/vxu.py --workers 1,2): two processes writing one SQLite file were
        # slower than one (0.77x vs 0.90x of the echo server, p99 187 ms). SQLite has one
        # writer: two processes split the group-commit batches (twice the fsyncs per message)
        # and meet in its sleep-and-retry busy handler; queueing them on a file lock instead
        # was tried and was no better (0.71x). Allowed, but said out loud.
        log.warning("workers.sqlite_contention", workers=cfg.server.workers,
                    advice="use one worker with SQLite; several pay off with PostgreSQL")
        try:  # once, before several processes open the file
            upgrade(cfg.database.url)
        except Exception as exc:
            print(f"serve: cannot open the registry store ({type(exc).__name__})",
                  file=sys.stderr)
            return 2
    from engine.store.db import make_engine

    supervisor = Supervisor(cfg, worker_args)
    store = make_engine(cfg.database.url, pool_size=1)
    probe = _StoreProbe(store)
    http = HttpServer(cfg.http, supervisor.registry,
                      ready=lambda: supervisor.ready() and probe.ok)
    try:
        supervisor.bind()
        await http.start()
    except OSError as exc:
        print(f"serve: cannot listen ({exc.strerror})", file=sys.stderr)
        await supervisor.shutdown()
        return 2
    stop = _stop_event()
    try:
        await supervisor.start()
    except RuntimeError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        await supervisor.shutdown()
        await http.shutdown()
        return 2
    log.info("engine.started", mllp_port=supervisor.port, http_port=http.port,
             workers=len(supervisor.workers), database=cfg.database.url.split("://")[0])
    probe.start()
    failed = await supervisor.run_until(stop)
    log.info("engine.stopping")
    await probe.stop()
    await supervisor.shutdown()
    await http.shutdown()
    store.dispose()
    if failed is not None:
        print(f"serve: {failed}", file=sys.stderr)
        return 2
    log.info("engine.stopped")
    return 0


def cmd_serve(args: argparse.Namespace, err: TextIO) -> int:
    cfg = _load_config(args.config, err)
    if cfg is None:
        return 2
    server = cfg.server
    if args.host:
        server = replace(server, host=args.host)
    if args.port is not None:
        server = replace(server, port=args.port)
    http = cfg.http if args.http_port is None else replace(cfg.http, port=args.http_port)
    database = cfg.database if not args.database_url else replace(cfg.database,
                                                                  url=args.database_url)
    if args.as_of:
        try:
            date.fromisoformat(args.as_of)
        except ValueError:
            print("serve: --as-of must be YYYY-MM-DD", file=err)
            return 2
    if args.workers is not None:
        server = replace(server, workers=args.workers)
        if not 1 <= args.workers <= 64:
            print("serve: --workers must be 1..64", file=err)
            return 2
    cfg = replace(cfg, server=server, http=http, database=database,
                  as_of=args.as_of or cfg.as_of)
    obs_logging.configure(cfg.logging.format, cfg.logging.level)
    from engine.server import install_event_loop_policy

    install_event_loop_policy()
    if args.worker_fd is not None:
        return asyncio.run(_serve(cfg, args.worker_fd, args.worker_index, args.worker_port))
    if cfg.server.workers > 1:
        worker_args = [*(("--config", str(args.config)) if args.config else ()),
                       *(("--database-url", args.database_url) if args.database_url else ()),
                       *(("--as-of", args.as_of) if args.as_of else ())]
        return asyncio.run(_supervise(cfg, worker_args))
    return asyncio.run(_serve(cfg))


def cmd_send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from engine.client import send_paths, tls_context

    if args.concurrency < 1:
        print("send: --concurrency must be at least 1", file=err)
        return 2
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        try:
            tls = tls_context(args.tls_ca, args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            print(f"send: cannot load the TLS files ({type(exc).__name__}: "
                  f"{getattr(exc, 'strerror', None) or exc})", file=err)
            return 2
    return asyncio.run(send_paths(args.target, list(args.paths), args.concurrency, args.json,
                                  out, progress=err.isatty() and not args.json, tls=tls))


MESSAGE_SUFFIXES = frozenset({".hl7", ".er7", ".txt", ".msg", ""})


def _payloads(path: Path, data: bytes) -> list[bytes]:
    """The messages in a file; a message file with no MSH at all is validated as one message
    (the engine would receive those bytes and answer them), other files are skipped."""
    from engine.client import split_messages

    payloads, _ignored = split_messages(data)
    if not payloads and path.suffix.lower() in MESSAGE_SUFFIXES and data.strip():
        return [data]
    return payloads


class DryRunVxuHandler:
    """`validate`'s stand-in for the VXU handler: answers from validation, stores nothing.

    Findings that need the registry (204 unknown ORC-3, 205 reused control id) can only come
    from `serve`; everything the profiles and business rules decide is the same.
    """

    def handle(self, request: Request, respond: Respond) -> bytes:
        return respond(list(request.validation.issues) if request.validation else [], None)


def cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json

    cfg = _load_config(args.config, err)
    if cfg is None:
        return 2
    obs_logging.configure(cfg.logging.format, "warning")  # the report is the output here
    metrics = Metrics()
    pipeline = make_pipeline(cfg, metrics, handlers={"VXU": DryRunVxuHandler()})
    from engine.client import SendError, collect_files

    try:
        files = collect_files(list(args.paths))
    except SendError as exc:
        print(f"validate: {exc}", file=err)
        return 2
    worst = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"validate: {path}: {exc.strerror}", file=err)
            worst = 2
            continue
        for index, payload in enumerate(_payloads(path, data), start=1):
            response = pipeline.process(payload, peer="validate")
            text = response.decode("utf-8", errors="replace")
            report = _report(pipeline, payload)
            msa = next((seg.split("|")[1] for seg in text.split("\r") if seg.startswith("MSA|")),
                       "")
            if msa != "AA":
                worst = max(worst, 1)
            if args.json:
                print(json.dumps({"file": str(path), "index": index, "msa": msa,
                                  "response": text.split("\r")[:-1], "report": report}),
                      file=out)
            else:
                print(f"== {path} #{index}: {msa}", file=out)
                print(text.replace("\r", "\n"), end="", file=out)
                if report:
                    print(report, file=out)
    return worst


def _report(pipeline: Pipeline, payload: bytes) -> str:
    """The validator's readable report (rule, location, value) when a validator is present."""
    if pipeline.validator is None:
        return ""
    from engine.errors import HL7Error
    from engine.hl7 import decode, parse, peek_header
    from engine.pipeline import accept_issues
    from engine.validation import format_report

    header = peek_header(payload)
    if accept_issues(header, pipeline.accept):
        return ""  # rejected before validation: the response says why
    try:
        message = parse(decode(payload, header))
    except HL7Error:  # the response already reports why it could not be read
        return ""
    result = pipeline.validator.validate(message, pipeline.today())
    return format_report(result, message)


def cmd_db(args: argparse.Namespace, err: TextIO) -> int:
    try:
        from engine.store.migrate import upgrade
    except ImportError:
        print("db upgrade: the registry store is not part of this build yet", file=err)
        return 2
    cfg = _load_config(args.config, err)
    if cfg is None:
        return 2
    url = args.database_url or cfg.database.url
    if args.db_command == "purge-payloads":
        return _purge_payloads(url, args.older_than_days
                               if args.older_than_days is not None
                               else cfg.database.payload_retention_days, err)
    upgrade(url)
    print(f"database at {url.split('://')[0]} is up to date", file=err)
    return 0


def _purge_payloads(url: str, days: int, err: TextIO) -> int:
    from engine.handlers import REGISTRY_AUTHORITY
    from engine.store.db import make_engine
    from engine.store.repository import Repository

    if days <= 0:
        print("db purge-payloads: give --older-than-days N (N >= 1) or set "
              "database.payload_retention_days", file=err)
        return 2
    engine = make_engine(url, pool_size=1)
    try:
        # purging reads no vaccine data: no vaccine-group table needed
        repository = Repository(engine, vaccine_groups=lambda _cvx: frozenset(),
                                registry_authority=REGISTRY_AUTHORITY)
        dropped = repository.purge_payloads(_retention_cutoff(days))
    finally:
        engine.dispose()
    print(f"dropped the raw content of {dropped} message(s) older than {days} day(s)",
          file=err)
    return 0


def _retention_cutoff(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def cmd_cdsi_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        from engine.forecast.cdsi_check import format_report, run_cases
    except ImportError:
        print("cdsi-check: the forecaster is not part of this build yet", file=err)
        return 2
    if not args.cases.exists():
        print(f"cdsi-check: {args.cases}: file not found", file=err)
        return 2
    report = run_cases(args.cases)
    print(format_report(report, args.json), file=out)
    return 0


def cmd_schedule(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        from engine.forecast.schedule_import import import_release
    except ImportError:
        print("schedule import: the forecaster is not part of this build yet", file=err)
        return 2
    if not args.src.is_dir():
        print(f"schedule import: {args.src}: not a directory", file=err)
        return 2
    dest = args.dest
    if dest is None:
        from engine.forecast.schedule import PACKAGED_SCHEDULE

        dest = Path(__file__).resolve().parent / "forecast" / "data" / PACKAGED_SCHEDULE
    summary = import_release(args.src, dest)
    print(summary, file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    if args.command == "serve":
        return cmd_serve(args, err)
    if args.command == "send":
        return cmd_send(args, out, err)
    if args.command == "validate":
        return cmd_validate(args, out, err)
    if args.command == "db":
        return cmd_db(args, err)
    if args.command == "cdsi-check":
        return cmd_cdsi_check(args, out, err)
    if args.command == "schedule":
        return cmd_schedule(args, out, err)
    return 2


if __name__ == "__main__":
    sys.exit(main())
