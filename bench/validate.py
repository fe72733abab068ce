"""Benchmark: validation overhead, parse+ACK vs parse+validate+ACK, on a stream of unique messages.

The headline is a stream of UNIQUE inbound messages: each round generates fresh synthetic VXUs
(`bench.vxu.make_messages`: a new patient each, 1-3 doses; ids, names, dates and lots differ,
codes come from a small realistic set) plus the inbound (VXU/QBP) NIST/CDC corpus messages of
../shared/messages, and times parse+ACK and parse+validate+ACK over that same list. Real
traffic repeats coded values and whole segments but not whole messages, and the validator
memoises pure per-segment and per-field checks, so a repeated message would flatter it; the
single repeated NIST AD-2.1 figure is printed as a secondary line, labelled as such.

Times are CPU (`time.process_time`), both loops in one process, interleaved in rounds so a busy
neighbour hits both alike; the figure that matters is the ratio (target <= 1.5x). Run from the
repo root:

    PYTHONPATH=. .venv/bin/python bench/validate.py [--n 2000] [--rounds 3] [--message PATH]

`--instructions` counts instead of timing (needs valgrind): the same workload (one warm-up
stream, then one stream of unique messages) runs three times under cachegrind, measuring
nothing, parse+ACK, and parse+validate+ACK over that stream; the differences are the
instructions per message of each, and their ratio is the overhead figure free of the noise
of a shared machine (instructions are not time: allocation and cache misses weigh
differently, so the timed figure stays the headline).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from bench.vxu import make_messages, native_status
from engine.config import IdentityConfig
from engine.hl7.charset import peek_header
from engine.hl7.er7 import parse
from engine.responses import ResponseBuilder
from engine.validation import Validator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "messages"
DEFAULT = SHARED / "nist" / "NIST-IZ-AD-2.1_VXU_Z22_adult_NDC_hist.hl7"
TODAY = date(2025, 6, 1)


def corpus() -> list[bytes]:
    """Inbound (VXU / QBP) messages of ../shared/messages ([] when ../shared is absent)."""
    if not SHARED.is_dir():
        return []
    out = []
    for path in sorted(SHARED.rglob("*.hl7")):
        data = path.read_bytes()
        head = data.split(b"\r", 1)[0]
        if head.startswith(b"MSH") and (b"|VXU^" in head or b"|QBP^" in head):
            out.append(data)
    return out


def cpu(fn: Callable[[bytes], object], items: list[bytes]) -> float:
    started = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - started


Step = Callable[[bytes], None]


def steps(validator: Validator) -> tuple[Step, Step]:
    """(parse+ACK, parse+validate+ACK) of one message, with a fixed clock and control id."""
    zone = timezone(timedelta(hours=-8))
    builder = ResponseBuilder(IdentityConfig(), clock=lambda: datetime(2025, 6, 1, tzinfo=zone),
                              ids=lambda: "ACK1")

    def baseline(data: bytes) -> None:
        parse(data.decode("utf-8", errors="replace"))
        builder.ack(peek_header(data), [])

    def validated(data: bytes) -> None:
        message = parse(data.decode("utf-8", errors="replace"))
        result = validator.validate(message, TODAY)
        builder.ack(peek_header(data), list(result.issues))
    return baseline, validated


MODES = ("none", "baseline", "validated")


def run_mode(mode: str, n: int) -> None:
    """One counted run: warm up on one stream, then run `mode` over another (unique) one."""
    baseline, validated = steps(Validator.load())
    nist = corpus()
    warm, stream = make_messages(n, "warm") + nist, make_messages(n, "counted") + nist
    cpu(validated, warm)  # every mode warms alike: only the counted loop differs
    if mode != "none":
        cpu(baseline if mode == "baseline" else validated, stream)


def count_instructions(n: int) -> None:
    """Run `run_mode` under cachegrind per mode and print instructions per message."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    count = n + len(corpus())
    refs = {}
    for mode in MODES:
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--n", str(n),
             "--run-mode", mode],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True,
            check=True)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if found is None:
            raise SystemExit(f"no instruction count in valgrind's output for {mode}")
        refs[mode] = int(found.group(1).replace(",", ""))
    base = (refs["baseline"] - refs["none"]) / count
    val = (refs["validated"] - refs["none"]) / count
    print(f"modules: {native_status()}")
    print(f"instructions per message ({n} synthetic VXUs + {count - n} corpus messages, "
          "after a warm-up stream of as many):")
    print(f"  parse+ACK:          {base:10,.0f}")
    print(f"  parse+validate+ACK: {val:10,.0f}   (validation {val - base:,.0f})")
    print(f"  validation overhead ratio: {val / base:.2f}x (target <= 1.50x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="unique synthetic VXUs per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--message", type=Path, default=DEFAULT,
                    help="the message of the secondary, repeated-message line")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions under valgrind instead of timing")
    ap.add_argument("--run-mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_mode:
        run_mode(args.run_mode, args.n)
        return
    if args.instructions:
        count_instructions(args.n)
        return
    t0 = time.process_time()
    validator = Validator.load()
    load_s = time.process_time() - t0
    baseline, validated = steps(validator)

    nist = corpus()
    validated(make_messages(1, "warm")[0])  # first-call costs (imports, shape cache) aside
    base_t = val_t = 0.0
    count = 0
    run = time.time_ns()
    for r in range(args.rounds):
        stream = make_messages(args.n, f"U{run}-{r}") + nist  # never seen before this round
        base_t += cpu(baseline, stream)
        val_t += cpu(validated, stream)
        count += len(stream)

    if args.message.is_file():
        one = args.message.read_bytes()
        name = args.message.name
    else:  # ../shared absent: the synthetic clean VXU of the tests
        from tests.validation.messages import BASE_VXU
        one, name = BASE_VXU.encode(), "synthetic BASE_VXU"
    rep_base = rep_val = 0.0
    for _ in range(args.rounds):
        rep_base += cpu(baseline, [one] * args.n)
        rep_val += cpu(validated, [one] * args.n)
    repeated = args.n * args.rounds

    per_base, per_val = base_t / count * 1e6, val_t / count * 1e6
    print(f"modules: {native_status()}")
    print(f"validator load (all 8 profiles, once at start-up): {load_s * 1000:.0f} ms CPU")
    print(f"HEADLINE - unique messages ({args.n} synthetic VXUs + {len(nist)} corpus messages "
          f"per round, {args.rounds} rounds), CPU us per message:")
    print(f"  parse+ACK:          {per_base:8.1f} us")
    print(f"  parse+validate+ACK: {per_val:8.1f} us   (validation {per_val - per_base:.1f} us)")
    print(f"  validation overhead ratio: {per_val / per_base:.2f}x (target <= 1.50x)")
    pb, pv = rep_base / repeated * 1e6, rep_val / repeated * 1e6
    print(f"secondary - one message repeated ({name}, warm caches, flatters the validator):")
    print(f"  parse+ACK {pb:.1f} us, parse+validate+ACK {pv:.1f} us, ratio {pv / pb:.2f}x")


if __name__ == "__main__":
    main()
