"""Parse speed: our ER7 parser vs python-hl7 vs hl7apy on the same VXU, in the same run.

Prints per-parse times and ratios for three workloads:
  parse        parse the message (ours is lazy: segments only)
  parse+read   parse and read the ~30 values an intake handler reads
  parse+tree   parse and build the full field/rep/comp/sub tree of every segment

Run: python bench/parse.py [--seconds S] [FILE]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import hl7
from hl7apy import parser as hl7apy_parser

from engine.hl7 import parse

SHARED_VXU = (Path(__file__).resolve().parents[2] / "shared" / "messages" / "nist"
              / "NIST-IZ-AD-2.1_VXU_Z22_adult_NDC_hist.hl7")
FALLBACK_VXU = (
    "MSH|^~\\&|EHR|CLINIC|CAIR2|CAIR2|20240101120000-0800||VXU^V04^VXU_V04|CTL-1|P|2.5.1|||ER|AL"
    "|||||Z22^CDCPHINVS|CLINIC|CAIR2\r"
    "PID|1||12345^^^CLINIC^MR||TEST^ANN^Q^^^^L||20200101|F||2106-3^White^CDCREC|1 MAIN ST^^"
    "SACRAMENTO^CA^95814^USA^P||^PRN^PH^^^916^5551234|||||||||2186-5^Not Hispanic^CDCREC\r"
    "PD1|||||||||||02^Reminder/Recall - any method^HL70215|N|20240101|||A|20240101|20240101\r"
    "NK1|1|TEST^MOM^^^^^L|MTH^Mother^HL70063\r"
    "ORC|RE||9999^CLINIC|||||||||1234^PROVIDER^PAT^^^^^^^^^^MD\r"
    "RXA|0|1|20240101|20240101|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001||||||LOT1||MSD^Merck^MVX"
    "|||CP|A\r"
    "RXR|C28161^Intramuscular^NCIT|LD^Left Deltoid^HL70163\r"
    "OBX|1|CE|64994-7^Vaccine funding program eligibility category^LN|1|V01^Not VFC eligible^"
    "HL70064||||||F|||20240101|||VXC40^per immunization^CDCPHINVS\r"
)

READ_PATHS = [("MSH", 9, 1), ("MSH", 9, 2), ("MSH", 10, 1), ("MSH", 11, 1), ("MSH", 12, 1),
              ("MSH", 4, 1), ("MSH", 21, 1), ("PID", 3, 1), ("PID", 3, 4), ("PID", 3, 5),
              ("PID", 5, 1), ("PID", 5, 2), ("PID", 7, 1), ("PID", 8, 1), ("PID", 10, 1),
              ("PID", 11, 1), ("PID", 11, 3), ("PID", 11, 5), ("PID", 22, 1), ("ORC", 3, 1),
              ("RXA", 3, 1), ("RXA", 5, 1), ("RXA", 5, 3), ("RXA", 6, 1), ("RXA", 9, 1),
              ("RXA", 15, 1), ("RXA", 17, 1), ("RXA", 20, 1), ("RXA", 21, 1), ("RXR", 1, 1)]


def ours_parse(text: str) -> object:
    return parse(text)


def ours_read(text: str) -> object:
    msg = parse(text)
    out = []
    for seg_id, field, comp in READ_PATHS:
        seg = msg.first(seg_id)
        out.append(seg.value(field, comp) if seg is not None else "")
    return out


def ours_tree(text: str) -> object:
    return parse(text).tree()


def hl7_parse(text: str) -> object:
    return hl7.parse(text)


def hl7_read(text: str) -> object:
    msg = hl7.parse(text)
    out = []
    for seg_id, field, comp in READ_PATHS:
        try:
            out.append(msg.extract_field(seg_id, 1, field, 1, comp))
        except (KeyError, IndexError):
            out.append("")
    return out


def hl7apy_parse(text: str) -> object:
    return hl7apy_parser.parse_message(text, find_groups=False)


def measure(fn: Callable[[str], object], text: str, seconds: float) -> float:
    """Median seconds per call over several timed batches."""
    fn(text)
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn(text)
        elapsed = time.perf_counter() - start
        if elapsed > 0.05:
            break
        batch *= 2
    rounds = max(5, int(seconds / elapsed))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            fn(text)
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


def main() -> None:
    logging.disable(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    path = args.file or (SHARED_VXU if SHARED_VXU.exists() else None)
    text = path.read_text(encoding="utf-8") if path else FALLBACK_VXU
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    print(f"message: {path or 'embedded synthetic VXU'} ({len(text)} chars, "
          f"{text.count(chr(13)) + 1} segments)")
    rows = [
        ("parse", ours_parse, hl7_parse, hl7apy_parse),
        ("parse+read", ours_read, hl7_read, None),
        ("parse+tree", ours_tree, None, None),
    ]
    baseline = measure(hl7_parse, text, args.seconds)
    print(f"{'workload':<12} {'ours µs':>10} {'python-hl7 µs':>14} {'hl7apy µs':>10} "
          f"{'vs hl7.parse':>13} {'like-for-like':>14}")
    for name, ours, theirs, apy in rows:
        t_ours = measure(ours, text, args.seconds)
        t_theirs = measure(theirs, text, args.seconds) if theirs else None
        t_apy = measure(apy, text, args.seconds) if apy else None
        print(f"{name:<12} {t_ours * 1e6:>10.1f} "
              f"{(f'{t_theirs * 1e6:.1f}' if t_theirs else '-'):>14} "
              f"{(f'{t_apy * 1e6:.1f}' if t_apy else '-'):>10} "
              f"{baseline / t_ours:>12.1f}x "
              f"{(f'{t_theirs / t_ours:.1f}x' if t_theirs else '-'):>14}")
    print("target: ours 'parse' >= 20x python-hl7 hl7.parse on the same message")


if __name__ == "__main__":
    main()
