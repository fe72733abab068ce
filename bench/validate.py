"""Benchmark: validation overhead on a typical VXU (NIST AD-2.1), parse+ACK vs parse+validate+ACK.

Both loops run in the same process, interleaved in rounds so machine noise hits both alike; the
figure that matters is the ratio (target <= 1.5x). Run from the repo root:

    PYTHONPATH=. .venv/bin/python bench/validate.py [--n 2000] [--message PATH]
"""

from __future__ import annotations

import argparse
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from engine.config import IdentityConfig
from engine.hl7.charset import peek_header
from engine.hl7.er7 import parse
from engine.responses import ResponseBuilder
from engine.validation import Validator

DEFAULT = (Path(__file__).resolve().parents[2] / "shared" / "messages" / "nist"
           / "NIST-IZ-AD-2.1_VXU_Z22_adult_NDC_hist.hl7")
TODAY = date(2025, 6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--message", type=Path, default=DEFAULT)
    args = ap.parse_args()
    if args.message.is_file():
        text = args.message.read_bytes().decode("utf-8")
    else:  # ../shared absent: the synthetic clean VXU of the tests
        from tests.validation.messages import BASE_VXU
        text = BASE_VXU
    data = text.encode()
    zone = timezone(timedelta(hours=-8))
    builder = ResponseBuilder(IdentityConfig(), clock=lambda: datetime(2025, 6, 1, tzinfo=zone),
                              ids=lambda: "ACK1")
    t0 = time.perf_counter()
    validator = Validator.load()
    load_s = time.perf_counter() - t0

    def baseline() -> None:
        parse(text)
        builder.ack(peek_header(data), [])

    def validated() -> None:
        message = parse(text)
        result = validator.validate(message, TODAY)
        builder.ack(peek_header(data), list(result.issues))

    base_t = val_t = 0.0
    for _ in range(args.rounds):
        for fn, slot in ((baseline, 0), (validated, 1)):
            start = time.perf_counter()
            for _ in range(args.n):
                fn()
            elapsed = time.perf_counter() - start
            if slot:
                val_t += elapsed
            else:
                base_t += elapsed
    total = args.n * args.rounds
    per_base = base_t / total * 1e6
    per_val = val_t / total * 1e6
    print(f"message: {args.message.name if args.message.is_file() else 'synthetic BASE_VXU'} "
          f"({len(text.split(chr(13))) - 1} segments)")
    print(f"validator load (all 8 profiles, once at start-up): {load_s * 1000:.0f} ms")
    print(f"parse+ACK:          {per_base:8.1f} us/message")
    print(f"parse+validate+ACK: {per_val:8.1f} us/message")
    print(f"validation overhead ratio: {per_val / per_base:.2f}x (target <= 1.50x)")


if __name__ == "__main__":
    main()
