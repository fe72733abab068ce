"""Generate `profiles/` (the conformance profiles as data) from NIST's IG R1.5 XML and CDC code tables.

Owns the translation from the NIST "ConformanceProfile" / "ConformanceContext" /
"ValueSetLibrary" XML (in ../shared/profiles-reference) and the CDC CVX/MVX/trade-name/NDC
tables (in ../shared/codes) into the project's own JSON form, read at start-up by
`engine.validation`. The output is committed; the engine never reads ../shared at run time.

Usage (from the repo root)::

    .venv/bin/python tools/gen_profiles.py [--shared ../shared] [--out profiles]

Deterministic: same inputs give byte-identical files (sorted keys, no timestamps other than the
source dates recorded in each file's ``_source``). `profiles/cair2.yaml` is hand-written and
never touched here. See profiles/README.md for the output format.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

NIST_SOURCE = {
    "repository": "haffo/hit-iz-tool",
    "branch": "apps/nist",
    "commit": "d329cbbd2d878e0c24a3c02396ffdafe5b248417",
    "commit_date": "2019-03-12",
    "base_path": "hit-iz-resource/src/main/resources/Global/",
    "profiles_last_change": "b835d384dcbe35d998841ca5b24dc4e5b5eb1281 (2018-07-11)",
    "constraints_last_change": "efa1185230579954e76a488476500ee0e01fa08f (2018-07-11)",
    "valuesets_last_change": "b835d384 (2018-07-11); Z22/Z32/Z42 libraries c9755ce8 (2018-11-07)",
}
CODES_SOURCE = {
    "repository": "immregistries/codebase (folder cdc-source/, verbatim CDC downloads)",
    "commit": "641f2ea42152f864dda760d9a3abda06fa9b6255",
    "commit_date": "2025-12-09",
    "cvx_date": "2025-12-09",
    "mvx_date": "2025-01-06",
    "tradename_date": "2025-12-09",
    "ndc_files": "NDC_Unit_use.txt, NDC_Unit_sale.txt",
    "ndc_mvx_files": "NDC_Linker.txt (sale id | use id -> MVX) over NDC_Unit_{sale,use}.txt",
}

# MVX codes of one company, from the notes of CDC's mvx.csv (acquisitions, renamings, inactive
# predecessors). Hand-maintained: the notes are free text. Used by the NDC -> MVX rule: an NDC
# whose CDC maker is one of these codes accepts any code of the same company as RXA-17. A code
# may sit in two companies (Novartis sold its flu vaccines to Seqirus, the rest to GSK); the
# relation is not transitive (a GSK NDC accepts NOV but not SEQ). Checked against mvx.csv.
MVX_COMPANIES: tuple[tuple[str, ...], ...] = (
    ("PFR", "WAL", "WA", "LED", "PRX"),  # Pfizer includes Wyeth-Lederle, Praxis
    ("PMC", "PSC", "ACA", "CON", "IM"),  # Sanofi: Protein Sciences, Acambis, Connaught, Merieux
    ("SEQ", "CSL", "NOV"),               # Seqirus: Novartis flu vaccines, CSL vaccines
    ("SKB", "IDB", "NOV"),               # GSK: ID Biomedical; Novartis' other vaccines
    ("NOV", "CHI", "CMP", "EVN", "PWJ"),  # Novartis: Chiron, Celltech Medeva, Evans, PowderJect
    ("MED", "ASZ", "AVI"),               # MedImmune (AstraZeneca), Aviron
    ("MIP", "PAX", "CNJ", "VXG"),        # Emergent: PaxVax, Cangene, VaxGen
    ("JSN", "JNJ", "CRU"),               # Janssen, Johnson and Johnson, Crucell
    ("VAL", "INT"),                      # Valneva / Intercell
    ("TVA", "BRR"),                      # Teva / Barr
    ("MBL", "MA"),                       # Massachusetts Biologic Laboratories, formerly MA
    ("MSP", "MCM"),                      # Merck-Sanofi partnership (MCM renamed MSP, labeler 63361)
)
# A partnership's products may be reported under either partner (one way only: a Merck NDC
# still does not accept Sanofi).
MVX_PARTNERS = {"MSP": ("MSD", "PMC"), "MCM": ("MSD", "PMC")}


# profile id -> file stem in profiles-reference; inbound first.
PROFILES = {
    "Z22": "VXU-Z22", "Z34": "QBP-Z34", "Z44": "QBP-Z44",
    "Z23": "ACK-Z23", "Z31": "RSP-Z31", "Z32": "RSP-Z32", "Z33": "RSP-Z33", "Z42": "RSP-Z42",
}
INBOUND = ("Z22", "Z34", "Z44")

# Value sets replaced by the project's own CDC-table form (codes.json): the NIST library
# snapshots of these code systems are from 2018.
REPLACED_BY_CODES = {"CVX", "MVX", "NDC_Use", "NDC_Sale"}


def _int_or_star(text: str | None) -> int | str:
    if text is None or text == "":
        return 0
    return "*" if text == "*" else int(text)


def _field_entry(el: ET.Element, n: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "n": n,
        "name": el.get("Name", ""),
        "usage": el.get("Usage", "O"),
        "datatype": el.get("Datatype", ""),
        "minlen": _int_or_star(el.get("MinLength")),
        "maxlen": _int_or_star(el.get("MaxLength")),
    }
    if el.tag == "Field":
        entry["min"] = _int_or_star(el.get("Min"))
        entry["max"] = _int_or_star(el.get("Max"))
    if el.get("Binding"):
        entry["binding"] = el.get("Binding")
        entry["binding_strength"] = el.get("BindingStrength", "")
        if el.get("BindingLocation"):
            entry["binding_location"] = el.get("BindingLocation")
    return entry


def _structure(el: ET.Element, flavours: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for child in el:
        if child.tag == "Segment":
            ref = child.get("Ref", "")
            out.append({"segment": flavours[ref], "flavour": ref, "usage": child.get("Usage"),
                        "min": _int_or_star(child.get("Min")),
                        "max": _int_or_star(child.get("Max"))})
        elif child.tag == "Group":
            name = child.get("Name", "").split(".")[-1]
            out.append({"group": name, "usage": child.get("Usage"),
                        "min": _int_or_star(child.get("Min")),
                        "max": _int_or_star(child.get("Max")),
                        "children": _structure(child, flavours)})
    return out


def _expr(el: ET.Element) -> dict[str, Any]:
    """One NIST assertion/condition element as a small JSON expression tree."""
    tag = el.tag
    if tag in ("AND", "OR", "IMPLY"):
        return {"op": tag, "args": [_expr(c) for c in el]}
    if tag == "NOT":
        return {"op": "NOT", "args": [_expr(c) for c in el]}
    out: dict[str, Any] = {"op": tag}
    for key, value in sorted(el.attrib.items()):
        out[key[0].lower() + key[1:]] = value
    if tag == "Plugin":
        out["text"] = (el.text or "").strip()
    return out


def _context_entries(section: ET.Element | None, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if section is None:
        return out
    for ctx in section:
        for by in ctx:
            of = by.get("ID") or by.get("Name") or ""
            for item in by:
                desc = " ".join((item.findtext("Description") or "").split())
                entry: dict[str, Any] = {"context": ctx.tag.lower(), "of": of,
                                         "id": item.get("ID", ""), "target": item.get("Target", ""),
                                         "description": desc}
                if kind == "predicate":
                    entry["true_usage"] = item.get("TrueUsage")
                    entry["false_usage"] = item.get("FalseUsage")
                    cond = item.find("Condition")
                    entry["condition"] = _expr(cond[0]) if cond is not None and len(cond) else None
                else:
                    ass = item.find("Assertion")
                    entry["assertion"] = _expr(ass[0]) if ass is not None and len(ass) else None
                out.append(entry)
    return out


def _hl7apy_fieldcounts() -> dict[str, int]:
    """Base-standard field counts per segment from hl7apy's v2.5.1 definitions (cross-check)."""
    try:
        from hl7apy import load_library
    except ImportError:  # the cross-check is optional: generation must not depend on it
        return {}
    lib = load_library("2.5.1")
    counts: dict[str, int] = {}
    for name, definition in lib.ELEMENTS["Segment"].items():
        if len(name) == 3:
            counts[name] = len(definition[1])
    return counts


def build_profile(shared: Path, pid: str, base_counts: dict[str, int]) -> dict[str, Any]:
    stem = PROFILES[pid]
    ref = shared / "profiles-reference"
    prof = ET.parse(ref / "profiles" / f"{stem}_Profile.xml").getroot()
    cons = ET.parse(ref / "constraints" / f"{stem}_Constraints.xml").getroot()
    msg = prof.find("Messages/Message")
    assert msg is not None
    flavours = {s.get("ID", ""): s.get("Name", "") for s in prof.iter("Segment") if s.get("Name")}
    segments: dict[str, Any] = {}
    crosscheck: list[str] = []
    for seg in prof.find("Segments") or []:
        fields = [_field_entry(f, i) for i, f in enumerate(seg.findall("Field"), start=1)]
        entry: dict[str, Any] = {"name": seg.get("Name"), "fields": fields}
        dyn = seg.find("DynamicMapping/Mapping")
        if dyn is not None:
            entry["dynamic"] = {"position": int(dyn.get("Position", "0")),
                                "reference": int(dyn.get("Reference", "0")),
                                "cases": {c.get("Value", ""): c.get("Datatype", "")
                                          for c in dyn.findall("Case")}}
        segments[seg.get("ID", "")] = entry
        base = base_counts.get(seg.get("Name", ""))
        if base is not None and base != len(fields):
            crosscheck.append(f"{seg.get('ID')}: NIST lists {len(fields)} fields, "
                              f"hl7apy v2.5.1 base has {base}")
    datatypes: dict[str, Any] = {}
    for dt in prof.find("Datatypes") or []:
        datatypes[dt.get("ID", "")] = {
            "name": dt.get("Name"),
            "components": [_field_entry(c, i) for i, c in enumerate(dt.findall("Component"), 1)]}
    meta = prof.find("MetaData")
    cmeta = cons.find("MetaData")
    return {
        "_source": {
            **NIST_SOURCE,
            "profile_file": f"profiles-reference/profiles/{stem}_Profile.xml",
            "constraints_file": f"profiles-reference/constraints/{stem}_Constraints.xml",
            "valueset_file": f"profiles-reference/valuesets/{stem}_ValueSetLibrary.xml",
            "profile_metadata": dict(sorted((meta.attrib if meta is not None else {}).items())),
            "constraints_metadata": dict(sorted((cmeta.attrib if cmeta is not None else {}).items())),
            "generator": "tools/gen_profiles.py",
            "hl7apy_crosscheck": crosscheck,
        },
        "id": pid,
        "direction": "inbound" if pid in INBOUND else "outbound",
        "message": {"type": msg.get("Type"), "event": msg.get("Event"),
                    "structure": msg.get("StructID"), "description": msg.get("Description")},
        "structure": _structure(msg, flavours),
        "segments": segments,
        "datatypes": datatypes,
        "predicates": _context_entries(cons.find("Predicates"), "predicate"),
        "constraints": _context_entries(cons.find("Constraints"), "constraint"),
    }


def build_valuesets(shared: Path) -> dict[str, Any]:
    """Union of the eight libraries; the first library (Z22, newest) wins on a clash."""
    sets: dict[str, Any] = {}
    no_validation: set[str] = set()
    for pid in PROFILES:
        path = shared / "profiles-reference" / "valuesets" / f"{PROFILES[pid]}_ValueSetLibrary.xml"
        root = ET.parse(path).getroot()
        nv = root.find("NoValidation")
        if nv is not None:
            no_validation.update(e.text or "" for e in nv)
        for group in root.findall("ValueSetDefinitions"):
            for vs in group:
                bid = vs.get("BindingIdentifier", "")
                if bid in sets or bid in REPLACED_BY_CODES:
                    continue
                codes = sorted({(e.get("Value", ""), e.get("CodeSystem", ""))
                                for e in vs.findall("ValueElement")
                                if e.get("Usage", "R") != "E"})
                sets[bid] = {"name": vs.get("Name", ""), "library": PROFILES[pid],
                             "extensibility": vs.get("Extensibility", "Closed"),
                             "stability": vs.get("Stability", ""),
                             "codes": [c for c, _ in codes],
                             "code_systems": sorted({s for _, s in codes if s})}
    return {"_source": {**NIST_SOURCE, "files": "profiles-reference/valuesets/*_ValueSetLibrary.xml",
                        "note": "CVX, MVX, NDC_Use, NDC_Sale come from codes.json (CDC tables)",
                        "generator": "tools/gen_profiles.py"},
            "no_validation": sorted(no_validation - {""}),
            "sets": dict(sorted(sets.items()))}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]


def build_codes(shared: Path) -> dict[str, Any]:
    base = shared / "codes" / "cdc-iis-code-sets"
    cvx = {r["CVXCode"]: {"status": r["Status"], "short": r["ShortDescription"]}
           for r in _csv_rows(base / "cvx.csv")}
    mvx = {r["MVX_CODE"]: {"status": r["Status"], "name": r["Manufacturer Name"]}
           for r in _csv_rows(base / "mvx.csv")}
    cvx_mvx: dict[str, set[str]] = {}
    for r in _csv_rows(base / "tradename.csv"):
        if r["CVXCode"] and r["MVX Code"]:
            cvx_mvx.setdefault(r["CVXCode"], set()).add(r["MVX Code"])
    ndc: dict[str, str] = {}
    # NDC files: pipe-delimited, no header; the 10-4-2 dashed NDC and the CVX sit at fixed
    # positions that differ between the use and sale layouts, so find them by shape.
    dashed = re.compile(r"\d{5}-\d{4}-\d{2}\Z")
    for name in ("NDC_Unit_use.txt", "NDC_Unit_sale.txt"):
        for line in (base / name).read_text(encoding="utf-8", errors="replace").splitlines():
            cols = [c.strip() for c in line.split("|")]
            code = next((c for c in cols if dashed.match(c)), "")
            cvx_col = next((c for c in cols[10:] if c.isdigit() and 1 <= len(c) <= 3), "")
            if code and cvx_col:
                ndc[code] = cvx_col
                ndc[code.replace("-", "")] = cvx_col
    ndc_mvx = _ndc_mvx(base, set(mvx))
    same: dict[str, set[str]] = {}
    for company in MVX_COMPANIES:
        for code in company:
            same.setdefault(code, set()).update(company)
    for code, partners in MVX_PARTNERS.items():
        same.setdefault(code, {code}).update(partners)
    unknown = sorted({c for cs in same.values() for c in cs} - set(mvx))
    if unknown:
        raise SystemExit(f"MVX_COMPANIES/MVX_PARTNERS name codes not in mvx.csv: {unknown}")
    return {"_source": {**CODES_SOURCE, "generator": "tools/gen_profiles.py",
                        "files": "codes/cdc-iis-code-sets/{cvx,mvx,tradename}.csv + NDC_Unit_*.txt"
                                 " + NDC_Linker.txt",
                        "ndc_mvx": "CDC NDC_Linker.txt: each row links an NDC_Unit_sale.txt id "
                                   "and an NDC_Unit_use.txt id (first column of those files) to "
                                   "one MVX; an NDC takes every MVX linked to it (an id repeated "
                                   "in a file resolves to the NDC with the other side's labeler, "
                                   "else is skipped). NDCs no row "
                                   "links take the MVX of their labeler (first 5 digits) when "
                                   "all linked NDCs of that labeler agree on one MVX.",
                        "mvx_same_company": "hand-maintained from mvx.csv notes "
                                            "(tools/gen_profiles.py MVX_COMPANIES, MVX_PARTNERS)"},
            "cvx": dict(sorted(cvx.items())), "mvx": dict(sorted(mvx.items())),
            "cvx_mvx": {k: sorted(v) for k, v in sorted(cvx_mvx.items())},
            "ndc": dict(sorted(ndc.items())),
            "ndc_mvx": dict(sorted(ndc_mvx.items())),
            "mvx_same_company": {k: sorted(v - {k}) for k, v in sorted(same.items())}}


def _ndc_mvx(base: Path, known_mvx: set[str]) -> dict[str, list[str]]:
    """NDC (dashed 5-4-2 and 11-digit) -> the MVX codes CDC's NDC_Linker.txt gives it."""
    def rows(name: str) -> list[list[str]]:
        text = (base / name).read_text(encoding="utf-8", errors="replace")
        return [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.strip()]

    dashed = re.compile(r"\d{5}-\d{4}-\d{2}\Z")
    # record id (first column) -> dashed NDCs; the two files number independently and a few
    # ids repeat within a file (e.g. use id 3007: a Seqirus and a Novartis NDC)
    ids: dict[str, dict[str, set[str]]] = {}
    for name in ("NDC_Unit_sale.txt", "NDC_Unit_use.txt"):
        table = ids.setdefault(name, {})
        for cols in rows(name):
            code = next((c for c in cols if dashed.match(c)), "")
            if code and cols[0].isdigit():
                table.setdefault(cols[0], set()).add(code)
    linked: dict[str, set[str]] = {}
    for cols in rows("NDC_Linker.txt"):  # linker id | sale id | use id | MVX
        if len(cols) < 4 or cols[3] not in known_mvx:
            continue
        sale = ids["NDC_Unit_sale.txt"].get(cols[1], set())
        use = ids["NDC_Unit_use.txt"].get(cols[2], set())
        for mine, other in ((sale, use), (use, sale)):
            if len(mine) > 1:  # a repeated id: keep the NDC of the other side's labeler
                labelers = {c[:5] for c in other}
                mine = {c for c in mine if c[:5] in labelers}
                if len(mine) != 1:
                    continue
            for code in mine:
                linked.setdefault(code, set()).add(cols[3])
    by_labeler: dict[str, set[frozenset[str]]] = {}
    for code, makers in linked.items():
        by_labeler.setdefault(code[:5], set()).add(frozenset(makers))
    for table in ids.values():
        for code in sorted(c for codes in table.values() for c in codes):
            agreed = by_labeler.get(code[:5], set())
            if code not in linked and len(agreed) == 1:
                linked[code] = set(next(iter(agreed)))
    out: dict[str, list[str]] = {}
    for code, makers in linked.items():
        out[code] = out[code.replace("-", "")] = sorted(makers)
    return out


def _write(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parent / "shared")
    parser.add_argument("--out", type=Path, default=here / "profiles")
    args = parser.parse_args(argv)
    shared: Path = args.shared
    out: Path = args.out
    if not (shared / "profiles-reference").is_dir():
        print(f"no profiles-reference under {shared}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    base_counts = _hl7apy_fieldcounts()
    for pid in PROFILES:
        _write(out / f"{pid}.json", build_profile(shared, pid, base_counts))
    _write(out / "valuesets.json", build_valuesets(shared))
    _write(out / "codes.json", build_codes(shared))
    print(f"wrote {len(PROFILES)} profiles, valuesets.json, codes.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
