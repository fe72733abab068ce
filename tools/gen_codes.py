"""Generate `mappings/codes/` (code normalisation tables for intake) from the CDC code sets.

Owns the translation of the CDC IIS code tables in ../shared/codes (NDC unit-of-use and
unit-of-sale files, CPT→CVX, CVX→vaccine group, CVX and MVX lists) into small CSV files the
mapper (`engine.mapping`) and dose de-duplication (`engine.dedup`) read at start-up. The
output is committed; the engine never reads ../shared at run time. `SOURCE.json` records the
source snapshot and the SHA-256 of every input file.

Usage (from the repo root)::

    .venv/bin/python tools/gen_codes.py [--shared ../shared] [--out mappings/codes]

Deterministic: the same inputs give byte-identical files (rows sorted, no timestamps).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from engine.mapping import ndc11

SOURCE = {
    "repository": "immregistries/codebase (folder cdc-source/, verbatim CDC downloads)",
    "commit": "641f2ea42152f864dda760d9a3abda06fa9b6255",
    "commit_date": "2025-12-09",
}

# HL7 table 0162 (legacy route codes) → NCI Thesaurus route codes recommended by CDC IG 1.5
# (RXR-1). Not in the CDC downloads, so kept here as the one hand-maintained table.
ROUTE_HL70162_TO_NCIT = {
    "ID": ("C38238", "Intradermal"),
    "IM": ("C28161", "Intramuscular"),
    "IV": ("C38276", "Intravenous"),
    "NS": ("C38284", "Nasal"),
    "PO": ("C38288", "Oral"),
    "SC": ("C38299", "Subcutaneous"),
    "TD": ("C38305", "Transdermal"),
}


def _pipe_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.strip()]


def _xml_records(path: Path, record: str) -> list[dict[str, str]]:
    """CDC's <Name>field</Name><Value>v</Value> pair format, one dict per record element."""
    out = []
    for rec in ET.parse(path).getroot().iter(record):
        names = [(e.text or "").strip() for e in rec if e.tag == "Name"]
        values = [(e.text or "").strip() for e in rec if e.tag == "Value"]
        out.append(dict(zip(names, values, strict=False)))
    return out


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def generate(shared: Path, out: Path) -> list[Path]:
    codes = shared / "codes" / "cdc-iis-code-sets"
    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)

    ndc: dict[str, str] = {}
    # Unit-of-use then unit-of-sale: both packages of a product map to the same CVX.
    for name, cvx_col, ndc_col in (("NDC_Unit_use.txt", 11, 14), ("NDC_Unit_sale.txt", 12, 14)):
        for row in _pipe_rows(codes / name):
            if len(row) <= max(cvx_col, ndc_col):
                continue
            key, cvx = ndc11(row[ndc_col]), row[cvx_col]
            if key and cvx.isdigit():
                ndc.setdefault(key, cvx)
    files = {"ndc_cvx.csv": [["ndc11", "cvx"], *sorted([k, v] for k, v in ndc.items())]}

    cpt = {r.get("CPT Code", ""): r.get("CVX Code", "")
           for r in _xml_records(codes / "cpt.xml", "CPTInfo")}
    files["cpt_cvx.csv"] = [["cpt", "cvx"], *sorted([k, v] for k, v in cpt.items()
                                                    if k and v.isdigit())]

    groups: set[tuple[str, str]] = set()
    with (codes / "vac2vg.csv").open(encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            groups.add((rec["CVXCode"].strip(), rec["Vaccine Group Name"].strip()))
    files["cvx_group.csv"] = [["cvx", "vaccine_group"], *sorted([c, g] for c, g in groups)]

    with (codes / "cvx.csv").open(encoding="utf-8") as fh:
        cvx_rows = [[r["CVXCode"].strip(), r["ShortDescription"].strip(), r["Status"].strip()]
                    for r in csv.DictReader(fh)]
    files["cvx.csv"] = [["cvx", "short_description", "status"], *sorted(cvx_rows)]

    files["route_ncit.csv"] = [["hl70162", "ncit", "text"],
                               *sorted([k, c, t] for k, (c, t) in ROUTE_HL70162_TO_NCIT.items())]

    for name, rows in files.items():
        path = out / name
        path.write_text(_csv(rows), encoding="utf-8")
        written.append(path)

    inputs = ["NDC_Unit_use.txt", "NDC_Unit_sale.txt", "cpt.xml", "vac2vg.csv", "cvx.csv"]
    source = dict(SOURCE, generator="tools/gen_codes.py",
                  inputs={n: hashlib.sha256((codes / n).read_bytes()).hexdigest()
                          for n in inputs},
                  hand_maintained={"route_ncit.csv": "HL7 0162 → NCIT per CDC IG 1.5 RXR-1"})
    path = out / "SOURCE.json"
    path.write_text(json.dumps(source, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--shared", type=Path, default=root.parent / "shared")
    p.add_argument("--out", type=Path, default=root / "mappings" / "codes")
    args = p.parse_args(argv)
    if not (args.shared / "codes").is_dir():
        print(f"gen_codes: {args.shared}/codes not found", file=sys.stderr)
        return 2
    for path in generate(args.shared, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
