"""VXU intake throughput: our engine (validated, stored, durable) vs python-hl7's echo server.

Runs, in one invocation and with the same client: (1) python-hl7's MLLP server in a
subprocess whose handler only does `hl7.parse` + `create_ack()` (no validation, no storage),
(2) this engine in a subprocess, as `serve` wires it (validator + VXU handler + message
journal), against a fresh PostgreSQL database, and (3) the same against a fresh SQLite file.
The client opens 8 MLLP connections and sends unique synthetic VXUs (new patient, 1–3 doses
each), one outstanding message per connection; it prints msg/s, p50/p99 latency and each
engine's ratio against the echo server.

Every server runs in its own process, apart from the client, so the bench also reports CPU
time per message — the server process (all its threads), the client (this process), and
PostgreSQL (the bench database's backends plus the shared WAL writer, checkpointer and
background writer) — and how busy the whole machine was. On a small shared box throughput is mostly a question of who gets
the cores; CPU per message is the fairer comparison between servers.

Usage (from the repo root)::

    PYTHONPATH=. .venv/bin/python bench/vxu.py [--messages 3000] [--connections 8]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--skip-sqlite]
        [--workers 1,2]   (engine worker processes; each count is its own row)

Durability is never traded for speed: SQLite runs with WAL + synchronous=FULL and PostgreSQL
with synchronous_commit=on; every AA is sent after its transaction committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SB, EB, CR = b"\x0b", b"\x1c", b"\r"

ECHO_SERVER = """
import asyncio, sys, hl7, hl7.mllp
async def handle(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()
async def main():
    server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def letters(n: int) -> str:
    """A letters-only rendering of n (names never carry digits; matching drops them)."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(65 + r) + out
        if n == 0:
            return out


def native_status() -> str:
    """Which build ran: the parser and the validator compiled (mypyc, setup.py) or not."""
    import engine.hl7.er7
    import engine.validation.validator
    compiled = [m.__name__ for m in (engine.hl7.er7, engine.validation.validator)
                if not (m.__file__ or "").endswith(".py")]
    return f"compiled (mypyc): {', '.join(compiled)}" if compiled else "interpreted"


def make_messages(count: int, run: str) -> list[bytes]:
    """Unique, valid VXU^V04 Z22 messages: one new patient each, 1–3 administered doses."""
    out = []
    vaccines = [("08", "HepB", "MSD"), ("20", "DTaP", "PMC"), ("10", "IPV", "PMC"),
                ("03", "MMR", "MSD"), ("140", "Flu", "PMC")]
    for i in range(count):
        doses = []
        for d in range(1 + i % 3):
            cvx, name, mvx = vaccines[(i + d) % len(vaccines)]
            doses += [
                f"ORC|RE||{run}-{i}-{d}^EHR|||||||^Clerk^Cara||^Doc^Dan^^^^^^^L",
                f"RXA|0|1|2024{1 + d:02d}15||{cvx}^{name}^CVX|0.5|mL^mL^UCUM||00^New "
                f"immunization record^NIP001|7^Nurse^Nia^^^^^^EHR^L^^^PRN|^^^SITE1||||"
                f"LOT{i}{d}|20301231|{mvx}^Maker^MVX|||CP|A",
                "RXR|C28161^Intramuscular^NCIT|LD^Left Deltoid^HL70163",
                "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|V02^VFC "
                "eligible - Medicaid^HL70064||||||F|||20240115|||VXC40^Eligibility captured at "
                "the immunization level^CDCPHINVS",
                "OBX|2|CE|69764-9^Document type^LN|2|253088698300028811170411^Td VIS^cdcgs1vis"
                "||||||F",
                "OBX|3|TS|29769-7^Date VIS presented^LN|2|20240115||||||F",
            ]
        segs = [
            f"MSH|^~\\&|BENCH|ORG{i % 5}|IIS|CAIR2|20240115120000-0800||VXU^V04^VXU_V04|"
            f"{run}-{i}|P|2.5.1|||ER|AL|||||Z22^CDCPHINVS|ORG{i % 5}",
            f"PID|1||MR{i}^^^ORG{i % 5}^MR||Fam{letters(i)}^Giv{letters(i)}^M^^^^L|Mother^Mae^^^^^M|"
            f"2015{1 + i % 12:02d}{1 + i % 28:02d}|{'FM'[i % 2]}||2106-3^White^CDCREC|"
            f"{i} Main St^^Town^CA^90001^USA^H||^PRN^PH^^^555^{5550000 + i % 10000}|||||||||"
            "2186-5^Not Hispanic or Latino^CDCREC",
            "PD1|||||||||||02^Reminder/Recall - any method^HL70215|N|20240115|||A|20240115|"
            "20240115",
            "NK1|1|Mother^Mae^^^^^L|MTH^Mother^HL70063",
            *doses,
        ]
        out.append(("\r".join(segs) + "\r").encode())
    return out


async def _connection(port: int, messages: list[bytes], latencies: list[float],
                      acks: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for message in messages:
            started = time.perf_counter()
            writer.write(SB + message + EB + CR)
            await writer.drain()
            frame = await reader.readuntil(EB + CR)
            latencies.append(time.perf_counter() - started)
            at = frame.find(b"MSA|")
            code = frame[at + 4:at + 6].decode() if at >= 0 else "??"
            acks[code] = acks.get(code, 0) + 1
    finally:
        writer.close()
        await writer.wait_closed()


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) and its live descendants
    (an engine with several workers), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / TICK
    return own + sum(process_cpu(int(child)) for child in children)


POSTGRES_SHARED = ("walwriter", "checkpointer", "background writer")


def postgres_cpu(database: str | None) -> float:
    """CPU seconds of PostgreSQL's work for `database`: its backends plus the WAL writer,
    checkpointer and background writer they share (other databases' backends excluded)."""
    if database is None:
        return 0.0
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() != "postgres":
                    continue
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f" {database} " in title or any(t in title for t in POSTGRES_SHARED):
                total += process_cpu(int(proc.name))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def drive(port: int, messages: list[bytes], connections: int,
          server_pid: int | None = None, database: str | None = None) -> dict[str, object]:
    latencies: list[float] = []
    acks: dict[str, int] = {}

    async def run() -> float:
        shares = [messages[i::connections] for i in range(connections)]
        started = time.perf_counter()
        await asyncio.gather(*(_connection(port, s, latencies, acks) for s in shares))
        return time.perf_counter() - started

    server0 = process_cpu(server_pid) if server_pid else 0.0
    client0, pg0, busy0 = time.process_time(), postgres_cpu(database), machine_busy()
    elapsed = asyncio.run(run())
    client = time.process_time() - client0
    server = (process_cpu(server_pid) - server0) if server_pid else 0.0
    pg = postgres_cpu(database) - pg0
    busy1 = machine_busy()
    n = len(messages)
    q = statistics.quantiles(latencies, n=100)
    return {"rate": n / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000, "acks": acks,
            "server_ms": server / n * 1000, "client_ms": client / n * 1000,
            "db_ms": pg / n * 1000,
            "busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100}


def warmup_messages(messages: list[bytes], count: int = 40) -> list[bytes]:
    """Copies of the first messages under other control ids and identifiers."""
    return [m.replace(b"|P|2.5.1|", b"W|P|2.5.1|").replace(b"||MR", b"||WMR")
            .replace(b"|Fam", b"|Wfam")
            for m in messages[:count]]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("server did not start")


def serve_engine(url: str, port: int, threads: int = 0, writers: int = 0) -> None:
    """Child process: the engine as `serve` wires it (validator + store handlers + journal)."""
    from engine.config import Config, ServerConfig
    from engine.handlers import build_handlers
    from engine.observability import logging as obs_logging
    from engine.observability.metrics import Metrics
    from engine.pipeline import Pipeline
    from engine.responses import ResponseBuilder
    from engine.server import MllpServer, install_event_loop_policy
    from engine.service import AsyncPipeline

    obs_logging.configure("json", "warning")
    cfg = Config(server=ServerConfig(port=port))
    metrics = Metrics()
    # Only tuning that was asked for is passed, so the bench also drives older builds.
    tuning: dict[str, Any] = {k: v for k, v in (("pipeline_threads", threads),
                                                 ("writers", writers)) if v}
    bundle = build_handlers(url, metrics, **tuning)
    validator = None
    try:
        from engine.validation import Validator

        validator = Validator.load()
    except ImportError:
        pass
    pipeline = Pipeline(accept=cfg.accept, responses=ResponseBuilder(cfg.identity),
                        metrics=metrics, handlers=bundle.handlers, journal=bundle.journal,
                        validator=validator)
    frontend = AsyncPipeline(pipeline, threads=bundle.executor_threads)
    install_event_loop_policy()

    async def main() -> None:
        server = MllpServer(cfg.server, frontend, metrics)
        await server.start()
        await server.serve_forever()

    try:
        asyncio.run(main())
    finally:
        frontend.close()
        bundle.close()


def run_server(cmd: list[str], port: int, messages: list[bytes], connections: int,
               database: str | None = None) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        # Warm up (imports, statement caches, first connections) outside the measurement.
        drive(port, warmup_messages(messages), connections)
        return drive(port, messages, connections, proc.pid, database)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def fresh_postgres(server_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(URL, name) of a new, migrated database on `server_url`'s server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from engine.store.migrate import upgrade

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--postgres-url",
                   default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="engine pipeline threads (default: the engine's own choice)")
    p.add_argument("--writers", type=int, default=0,
                   help="store writer threads (default: the engine's own choice)")
    p.add_argument("--workers", default="1",
                   help="engine worker processes; a comma list (e.g. 1,2) runs each in turn")
    p.add_argument("--serve", nargs=4, metavar=("URL", "PORT", "THREADS", "WRITERS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve_engine(args.serve[0], int(args.serve[1]), int(args.serve[2]),
                     int(args.serve[3]))
        return 0

    results: dict[str, dict[str, object]] = {}
    port = free_port()
    results["python-hl7 echo"] = run_server(
        [sys.executable, "-c", ECHO_SERVER, str(port)], port,
        make_messages(args.messages, f"E{uuid.uuid4().hex[:6]}"), args.connections)

    counts = [int(w) for w in str(args.workers).split(",")]

    def engine_cmd(url: str, port: int, workers: int, tmp: str) -> list[str]:
        if workers == 1:  # in this file, so tuning flags and older builds work
            return [sys.executable, __file__, "--serve", url, str(port), str(args.threads),
                    str(args.writers)]
        config = Path(tmp) / "bench-config.yaml"
        config.write_text("logging: {format: json, level: warning}\n", encoding="utf-8")
        return [sys.executable, "-m", "engine", "serve", "--config", str(config),
                "--workers", str(workers), "--port", str(port),
                "--http-port", str(free_port()), "--database-url", url]

    def row(backend: str, workers: int) -> str:
        return f"engine + {backend}" + (f" x{workers}" if workers > 1 else "")

    for workers in counts:
        if args.skip_postgres:
            break
        with fresh_postgres(args.postgres_url, "iz_bench") as (url, name):
            port = free_port()
            with tempfile.TemporaryDirectory() as tmp:
                results[row("PostgreSQL", workers)] = run_server(
                    engine_cmd(url, port, workers, tmp), port,
                    make_messages(args.messages, f"P{uuid.uuid4().hex[:6]}"),
                    args.connections, database=name)

    for workers in counts:
        if args.skip_sqlite:
            break
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            results[row("SQLite", workers)] = run_server(
                engine_cmd(f"sqlite:///{tmp}/bench.sqlite3", port, workers, tmp), port,
                make_messages(args.messages, f"S{uuid.uuid4().hex[:6]}"),
                args.connections)

    echo = float(results["python-hl7 echo"]["rate"])  # type: ignore[arg-type]
    echo_cpu = float(results["python-hl7 echo"]["server_ms"])  # type: ignore[arg-type]
    print(f"modules: {native_status()}")
    print(f"{args.messages} unique VXUs over {args.connections} MLLP connections, "
          f"{os.cpu_count()} CPUs")
    print(f"{'server':<22}{'msg/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'vs echo':>9}"
          f"{'srv cpu':>9}{'cli cpu':>9}{'pg cpu':>8}{'per cpu':>9}{'busy':>6}  acks")
    for label, r in results.items():
        rate = float(r["rate"])  # type: ignore[arg-type]
        cost = float(r["server_ms"]) + float(r["db_ms"])  # type: ignore[arg-type]
        print(f"{label:<22}{rate:>7.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}"
              f"{rate / echo:>8.2f}x{r['server_ms']:>7.2f}ms{r['client_ms']:>7.2f}ms"
              f"{r['db_ms']:>6.2f}ms{echo_cpu / cost if cost else 0:>8.2f}x"
              f"{r['busy']:>5.0f}%  {r['acks']}")
    print("cpu columns: CPU milliseconds per message (server process, bench client, "
          "PostgreSQL backends of the bench database + WAL writer/checkpointer/bgwriter); "
          "busy: share of all CPUs in use during the run (any process); per cpu: messages "
          "per CPU-second (server + PostgreSQL) relative to the echo server's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
