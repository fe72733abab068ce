"""Per-stage CPU cost of VXU intake, in process (no sockets): where a message's time goes.

Uses the same unique synthetic VXUs as `bench/vxu.py` (a new patient each, 1-3 doses; ids,
names, dates and lots differ per message, codes come from a small realistic set) and prints
CPU microseconds per message for each cumulative stage, then the whole pipeline into a fresh
SQLite file (and PostgreSQL with --postgres-url), the writer thread included:

    PYTHONPATH=. .venv/bin/python bench/stages.py [--messages 1500] [--postgres-url URL]

Figures are `time.process_time()` (all threads of this process), so a busy neighbour on a
shared machine inflates them less than wall time; compare stages within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import date

from bench.vxu import fresh_postgres, make_messages, native_status
from engine.config import Config
from engine.handlers import build_handlers
from engine.hl7.er7 import parse
from engine.mapping import VxuMapper
from engine.observability import logging as obs_logging
from engine.observability.metrics import Metrics
from engine.pipeline import Pipeline
from engine.responses import ResponseBuilder
from engine.validation import Validator

TODAY = date(2025, 6, 1)


def per_message(fn: Callable[[str], object], texts: list[str]) -> float:
    """CPU microseconds per call of `fn` over `texts`."""
    started = time.process_time()
    for item in texts:
        fn(item)
    return (time.process_time() - started) / len(texts) * 1e6


def pipeline_cost(url: str, messages: list[bytes]) -> tuple[float, float]:
    """(CPU us, wall us) per message through Pipeline.process into a fresh store."""
    cfg, metrics = Config(), Metrics()
    bundle = build_handlers(url, metrics)
    try:
        pipeline = Pipeline(accept=cfg.accept, responses=ResponseBuilder(cfg.identity),
                            metrics=metrics, handlers=bundle.handlers, journal=bundle.journal,
                            validator=Validator.load())
        for m in messages[:100]:  # warm-up: statement caches, first organization rows
            pipeline.process(m)
        rest = messages[100:]
        cpu, wall = time.process_time(), time.perf_counter()
        for m in rest:
            pipeline.process(m)
        return ((time.process_time() - cpu) / len(rest) * 1e6,
                (time.perf_counter() - wall) / len(rest) * 1e6)
    finally:
        bundle.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--postgres-url", default="",
                    help="also run the pipeline into a fresh database on this server, e.g. "
                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args(argv)
    obs_logging.configure("json", "warning")
    run = f"S{time.time_ns()}"
    messages = make_messages(args.messages, run)
    texts = [m.decode() for m in messages]
    validator, mapper = Validator.load(), VxuMapper.load()
    stages: list[tuple[str, Callable[[str], object]]] = [
        ("parse", parse),
        ("parse+validate", lambda t: validator.validate(parse(t), TODAY)),
        ("parse+map", lambda t: mapper.map(parse(t))),
    ]
    print(f"modules: {native_status()}")
    print(f"{len(texts)} unique synthetic VXUs, CPU us per message (process_time)")
    base = 0.0
    for name, fn in stages:
        per_message(fn, texts[:100])  # warm caches
        cost = per_message(fn, texts)
        base = base or cost
        print(f"  {name:22s} {cost:9.1f} us  ({cost / base:5.1f}x parse)")
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = pipeline_cost(f"sqlite:///{tmp}/stages.sqlite3", messages)
        print(f"  {'pipeline, SQLite':22s} {cpu:9.1f} us  (wall {wall:.1f} us)")
    if args.postgres_url:
        with fresh_postgres(args.postgres_url, "iz_stages") as (url, _name):
            cpu, wall = pipeline_cost(url, messages)
        print(f"  {'pipeline, PostgreSQL':22s} {cpu:9.1f} us  (wall {wall:.1f} us, "
              "this process only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
