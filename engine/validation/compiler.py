"""Compiles `profiles/*.json` (+ the overlay) into immutable rule tables, once, at start-up.

Owns the translation from profile data to what `engine.validation.validator` runs per message:
grammar nodes, per-segment field rules with their predicates, component rules per datatype,
value-set membership tests and the IZ-nn conformance statements as closures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.validation.paths import Evaluator, compile_expr, parse_path

# A membership test: True = in the set; None for "this binding is not checked here".
CodeCheck = Callable[[str, str], bool]

# HL7 table 0162 route codes the IG R1.5 still lists as legacy alternatives to NCIT (IG
# Appendix, RXR-1). NIST binds RXR-1 to NCIT only; we accept these with a warning, so they are
# carried here, not in valuesets.json (the NIST libraries do not contain table 0162).
LEGACY_ROUTES = frozenset({"ID", "IM", "IN", "IV", "NS", "PO", "SC", "TD", "OTH"})
_STATE_CODE = re.compile(r"[A-Z]{2,3}\d{2}")  # "***" in HL70064_IZ: state-specific codes
# Table entries such as "HL7nnnn", "99zzz", "NNxxx" stand for families of codes.
_PLACEHOLDER = re.compile(r"[nxz]{3,}")


_CLASSES = {"n": r"\d", "x": "[A-Z]", "z": "[A-Za-z0-9]"}


def _classes(m: re.Match[str]) -> str:
    text: str = m.group(0)
    return "".join(_CLASSES[c] for c in text)


def _placeholder(code: str) -> str:
    return _PLACEHOLDER.sub(_classes, re.escape(code))


@dataclass(frozen=True, slots=True)
class GrammarNode:
    """One element of a message grammar: a segment (id) or a group (children)."""

    position: int  # 1-based position within the parent (NIST group paths use it)
    usage: str
    min: int
    max: int  # 0 = unbounded
    segment: str = ""
    flavour: str = ""
    group: str = ""
    children: tuple[GrammarNode, ...] = ()

    @property
    def heads(self) -> frozenset[str]:
        """Segment ids that can open an instance of this node (any direct segment child)."""
        if self.segment:
            return frozenset({self.segment})
        return frozenset(c.segment for c in self.children if c.segment) | frozenset(
            h for c in self.children[:1] if c.group for h in c.heads)

    def all_ids(self) -> frozenset[str]:
        if self.segment:
            return frozenset({self.segment})
        return frozenset().union(*(c.all_ids() for c in self.children))


@dataclass(frozen=True, slots=True)
class ComponentRule:
    n: int
    name: str
    usage: str
    predicate: tuple[Evaluator, str, str] | None  # condition, true usage, false usage
    datatype: str
    maxlen: int  # 0 = unbounded
    binding: CodeCheck | None
    binding_id: str
    rule: str = "component.R"
    severity: str = "W"
    # the predicate's condition over the repetition's component list (the fast path's form)
    parts_condition: Evaluator | None = None
    # the components the predicate's condition reads: it is a pure function of their texts
    predicate_reads: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class FieldRule:
    n: int
    name: str
    usage: str
    predicate: tuple[Evaluator, str, str] | None
    max: int  # 0 = unbounded
    datatype: str  # base datatype name (CE, TS, NM...)
    flavour: str  # datatype flavour (CE_IZ...)
    maxlen: int
    binding: CodeCheck | None
    binding_id: str
    components: tuple[ComponentRule, ...]
    rule: str = ""  # overlay rule id replacing the generic usage.* id
    # the fields the predicate's condition reads: it is a pure function of their texts
    predicate_reads: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Statement:
    """One IZ-nn conformance statement (segment, group or datatype context)."""

    id: str
    context: str  # "segment" | "group" | "datatype" | "message"
    of: str  # segment flavour, group name or datatype flavour
    target: str
    description: str
    check: Evaluator | None  # None: evaluated natively (SetID, IZSetID, Plugin)
    kind: str  # the outermost assertion op (Format, PlainText, IMPLY...)
    guard: Evaluator | None = None  # target presence: statements on absent elements are skipped
    target_first: int = 0  # the target's first step (field, or component in a datatype)
    # datatype statements: check and guard over the repetition's component list (fast path)
    parts_check: Evaluator | None = None
    parts_guard: Evaluator | None = None
    # first steps (fields, in a segment context) of every path the check and guard read:
    # a segment statement reading one field is a pure function of that field's text
    reads: frozenset[int] = frozenset()
    # group statements: the position steps of every path read (child positions, then field)
    group_reads: frozenset[tuple[int, ...]] = frozenset()
    # ...and those of them read by Presence tests only (for a path that stops at a group or
    # segment, "is any field of its segments valued?", not their texts)
    group_presence: frozenset[tuple[int, ...]] = frozenset()


@dataclass(frozen=True, slots=True)
class SegmentRules:
    id: str
    flavour: str
    fields: tuple[FieldRule, ...]
    dynamic: tuple[int, int, Mapping[str, str]] | None  # OBX-5 datatype chosen by OBX-2
    statements: tuple[Statement, ...]


@dataclass(frozen=True, slots=True)
class CompiledProfile:
    id: str
    direction: str
    message_type: str
    grammar: GrammarNode
    segments: Mapping[str, SegmentRules]  # by flavour
    group_statements: Mapping[str, tuple[Statement, ...]]
    message_statements: tuple[Statement, ...]
    datatype_statements: Mapping[str, tuple[Statement, ...]]
    datatypes: Mapping[str, tuple[ComponentRule, ...]]
    statement_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Overlay:
    """A local profile layered over the CDC base (profiles/<name>.yaml)."""

    name: str
    field_usage: Mapping[tuple[str, str, int], tuple[str, str]]  # (profile, seg, field) -> usage, rule
    components: Mapping[tuple[str, str, int, int], tuple[str, str, str]]  # -> usage, severity, rule
    sources: Mapping[str, str]


@dataclass
class CodeTables:
    """Value sets and CDC code tables, as membership tests."""

    sets: dict[str, frozenset[str]]
    cvx: Mapping[str, Mapping[str, str]]
    mvx: Mapping[str, Mapping[str, str]]
    cvx_mvx: Mapping[str, frozenset[str]]
    ndc: Mapping[str, str]
    wildcard_state: frozenset[str] = field(default_factory=frozenset)
    # NDC -> (its CDC maker(s) as quoted, e.g. "PMC" or "BRR/TVA"; every MVX accepted as
    # RXA-17 for it: the makers and the codes of the same company, codes.json mvx_same_company)
    ndc_mvx: Mapping[str, tuple[str, frozenset[str]]] = field(default_factory=dict)

    def checker(self, binding: str) -> CodeCheck | None:
        """Membership test for a (possibly multi-set ``A:B:C``) binding, None if not checked."""
        parts = binding.split(":")
        sets: list[frozenset[str]] = []
        for part in parts:
            if part == "CVX":
                sets.append(frozenset(self.cvx))
            elif part == "MVX":
                sets.append(frozenset(self.mvx))
            elif part in ("NDC_Use", "NDC_Sale"):
                sets.append(frozenset(self.ndc))
            elif part in self.sets:
                sets.append(self.sets[part])
            else:
                return None
        allowed = frozenset().union(*sets)
        if not allowed:
            return None
        patterns = [_placeholder(c) for c in allowed if _PLACEHOLDER.search(c)]
        if binding.startswith("HL70396"):
            # table 0396 defines "HL7nnnn" (any HL7 table); the NIST library leaves it out
            patterns.append(r"HL7\d{4}")
        if patterns:
            rx = re.compile("|".join(patterns))
            return lambda code, _s: code in allowed or rx.fullmatch(code) is not None
        state = binding in self.wildcard_state
        if binding == "NCIT":
            return lambda code, system: code in allowed or (
                system == "HL70162" and code in LEGACY_ROUTES)
        if state:
            return lambda code, _s: code in allowed or _STATE_CODE.fullmatch(code) is not None
        return lambda code, _s: code in allowed


def load_tables(profiles_dir: Path) -> CodeTables:
    vs = json.loads((profiles_dir / "valuesets.json").read_text(encoding="utf-8"))
    codes = json.loads((profiles_dir / "codes.json").read_text(encoding="utf-8"))
    skip = set(vs["no_validation"])
    sets: dict[str, frozenset[str]] = {}
    wildcard: set[str] = set()
    for bid, entry in vs["sets"].items():
        if bid in skip or entry["extensibility"] == "Open" or not entry["codes"]:
            continue
        values = set(entry["codes"])
        if "***" in values:
            wildcard.add(bid)
            values.discard("***")
        sets[bid] = frozenset(values)
    # statements name CVX/MVX directly (IZ-37): serve them from the CDC tables too
    sets["CVX"] = frozenset(codes["cvx"])
    sets["MVX"] = frozenset(codes["mvx"])
    same: dict[str, list[str]] = codes.get("mvx_same_company", {})
    makers: dict[tuple[str, ...], tuple[str, frozenset[str]]] = {}  # shared per maker set
    ndc_mvx: dict[str, tuple[str, frozenset[str]]] = {}
    for ndc, mvx in codes.get("ndc_mvx", {}).items():
        key = tuple(mvx)
        entry = makers.get(key)
        if entry is None:
            accepted = frozenset(key).union(*(same.get(m, ()) for m in key))
            entry = makers[key] = ("/".join(key), accepted)
        ndc_mvx[ndc] = entry
    return CodeTables(sets=sets, cvx=codes["cvx"], mvx=codes["mvx"],
                      cvx_mvx={k: frozenset(v) for k, v in codes["cvx_mvx"].items()},
                      ndc=codes["ndc"], wildcard_state=frozenset(wildcard), ndc_mvx=ndc_mvx)


def load_overlay(profiles_dir: Path, name: str) -> Overlay:
    data = yaml.safe_load((profiles_dir / f"{name}.yaml").read_text(encoding="utf-8"))
    fields: dict[tuple[str, str, int], tuple[str, str]] = {}
    comps: dict[tuple[str, str, int, int], tuple[str, str, str]] = {}
    sources: dict[str, str] = {}
    for r in data.get("fields", []):
        for prof in r["profiles"]:
            fields[(prof, r["segment"], int(r["field"]))] = (r["usage"], r["rule"])
        sources[r["rule"]] = r["source"]
    for r in data.get("components", []):
        for prof in r["profiles"]:
            comps[(prof, r["segment"], int(r["field"]), int(r["component"]))] = (
                r["usage"], r["severity"], r["rule"])
        sources[r["rule"]] = r["source"]
    return Overlay(name=name, field_usage=fields, components=comps, sources=sources)


def _num(v: Any) -> int:
    return 0 if v in ("*", None) else int(v)


def _grammar(items: list[dict[str, Any]], name: str, usage: str = "R") -> GrammarNode:
    children = []
    for pos, it in enumerate(items, start=1):
        if "segment" in it:
            children.append(GrammarNode(pos, it["usage"], _num(it["min"]), _num(it["max"]),
                                        segment=it["segment"], flavour=it["flavour"]))
        else:
            sub = _grammar(it["children"], it["group"], it["usage"])
            children.append(GrammarNode(pos, it["usage"], _num(it["min"]), _num(it["max"]),
                                        group=it["group"], children=sub.children))
    return GrammarNode(0, usage, 1, 1, group=name, children=tuple(children))


def _predicates(data: Mapping[str, Any], tables: CodeTables) -> dict[tuple[str, str, int],
                                                                      tuple[Evaluator, str, str]]:
    """(context, of, target position) -> compiled predicate; segment and datatype contexts."""
    out: dict[tuple[str, str, int], tuple[Evaluator, str, str]] = {}
    for p in data["predicates"]:
        if p["context"] not in ("segment", "datatype"):
            continue  # group predicates (ORC-12 only) yield RE/O: never an error
        fn = compile_expr(p["condition"], tables.sets, p["context"])
        if fn is None:
            continue
        pos = int(p["target"].split("[")[0])
        out[(p["context"], p["of"], pos)] = (fn, p["true_usage"], p["false_usage"])
        if p["context"] == "datatype":
            parts = compile_expr(p["condition"], tables.sets, "parts")
            assert parts is not None  # same expression, same support as the datatype form
            out[("parts", p["of"], pos)] = (parts, p["true_usage"], p["false_usage"])
    return out


def _components(pid: str, seg_id: str, field_no: int, dt_flavour: str,
                datatypes: Mapping[str, Any], preds: Mapping[tuple[str, str, int], Any],
                tables: CodeTables, overlay: Overlay | None,
                field_binding_loc: str | None,
                pred_reads: Mapping[tuple[str, str, int], frozenset[int]]
                ) -> tuple[ComponentRule, ...]:
    dt = datatypes.get(dt_flavour)
    if dt is None:
        return ()
    out = []
    for c in dt["components"]:
        binding_id = c.get("binding", "")
        check = tables.checker(binding_id) if binding_id else None
        usage, severity, rule = c["usage"], "W", "component.R"
        if overlay is not None:
            o = overlay.components.get((pid, seg_id, field_no, c["n"]))
            if o is not None:
                usage, severity, rule = o
        if field_binding_loc == str(c["n"]):
            check, binding_id = None, ""  # the field-level binding tests this component
        parts = preds.get(("parts", dt_flavour, c["n"])) if usage == "C" else None
        out.append(ComponentRule(
            n=c["n"], name=c["name"], usage=usage,
            predicate=preds.get(("datatype", dt_flavour, c["n"])) if usage == "C" else None,
            parts_condition=parts[0] if parts is not None else None,
            predicate_reads=pred_reads.get(("datatype", dt_flavour, c["n"]), frozenset()),
            datatype=datatypes.get(c["datatype"], {}).get("name") or c["datatype"],
            maxlen=_num(c.get("maxlen")), binding=check, binding_id=binding_id,
            rule=rule, severity=severity))
    return tuple(out)


def _paths(expr: Mapping[str, Any] | None) -> set[tuple[int, ...]]:
    """The position steps of every path an assertion expression reads."""
    if not expr:
        return set()
    out = {tuple(n for n, _ in parse_path(expr[key])) for key in ("path", "path1", "path2")
           if key in expr}
    for arg in expr.get("args", ()):
        out |= _paths(arg)
    return out


def _presence_only(expr: Mapping[str, Any] | None) -> set[tuple[int, ...]]:
    """The paths of `_paths(expr)` that only Presence tests read."""
    presence: set[tuple[int, ...]] = set()
    other: set[tuple[int, ...]] = set()

    def walk(e: Mapping[str, Any]) -> None:
        for key in ("path", "path1", "path2"):
            if key in e:
                steps = tuple(n for n, _ in parse_path(e[key]))
                (presence if e["op"] == "Presence" else other).add(steps)
        for arg in e.get("args", ()):
            walk(arg)
    if expr:
        walk(expr)
    return presence - other


def _statement(c: Mapping[str, Any], tables: CodeTables) -> Statement:
    context = c["context"]
    check = compile_expr(c["assertion"], tables.sets, context)
    kind = c["assertion"]["op"] if c["assertion"] else ""
    guard = None
    target = c["target"]
    if check is not None and context in ("segment", "datatype") and target:
        guard = compile_expr({"op": "Presence", "path": target}, tables.sets, context)
    steps = parse_path(target) if target else ()
    paths = _paths(c["assertion"])
    parts_check = parts_guard = None
    if context == "datatype" and check is not None:
        parts_check = compile_expr(c["assertion"], tables.sets, "parts")
        if target:
            parts_guard = compile_expr({"op": "Presence", "path": target}, tables.sets, "parts")
    return Statement(id=c["id"], context=context, of=c["of"].split(".")[-1]
                     if context == "group" else c["of"], target=target,
                     description=c["description"], check=check, kind=kind, guard=guard,
                     target_first=steps[0][0] if steps else 0,
                     parts_check=parts_check, parts_guard=parts_guard,
                     reads=frozenset({p[0] for p in paths} | ({steps[0][0]} if steps else set())),
                     group_reads=frozenset(paths) if context == "group" else frozenset(),
                     group_presence=frozenset(_presence_only(c["assertion"]))
                     if context == "group" else frozenset())


def compile_profile(data: Mapping[str, Any], tables: CodeTables,
                    overlay: Overlay | None) -> CompiledProfile:
    pid = data["id"]
    preds = _predicates(data, tables)
    # (context, of, target position) -> the fields / components the condition reads
    pred_reads = {(p["context"], p["of"], int(p["target"].split("[")[0])):
                  frozenset(steps[0] for steps in _paths(p["condition"]))
                  for p in data["predicates"]}
    datatypes = data["datatypes"]
    statements = [_statement(c, tables) for c in data["constraints"]]
    seg_statements: dict[str, list[Statement]] = {}
    group_statements: dict[str, list[Statement]] = {}
    dt_statements: dict[str, list[Statement]] = {}
    message_statements: list[Statement] = []
    for st in statements:
        if st.context == "segment":
            seg_statements.setdefault(st.of, []).append(st)
        elif st.context == "group":
            group_statements.setdefault(st.of, []).append(st)
        elif st.context == "datatype":
            dt_statements.setdefault(st.of, []).append(st)
        else:
            message_statements.append(st)
    segments: dict[str, SegmentRules] = {}
    for flavour, seg in data["segments"].items():
        rules = []
        for f in seg["fields"]:
            usage, rule = f["usage"], ""
            if overlay is not None:
                o = overlay.field_usage.get((pid, seg["name"], f["n"]))
                if o is not None:
                    usage, rule = o
            binding_id = f.get("binding", "")
            dt = datatypes.get(f["datatype"], {})
            rules.append(FieldRule(
                n=f["n"], name=f["name"], usage=usage,
                predicate=preds.get(("segment", flavour, f["n"])) if usage == "C" else None,
                predicate_reads=pred_reads.get(("segment", flavour, f["n"]), frozenset()),
                max=_num(f["max"]), datatype=dt.get("name") or f["datatype"],
                flavour=f["datatype"], maxlen=_num(f["maxlen"]),
                binding=tables.checker(binding_id) if binding_id else None,
                binding_id=binding_id,
                components=_components(pid, seg["name"], f["n"], f["datatype"], datatypes,
                                       preds, tables, overlay, f.get("binding_location"),
                                       pred_reads),
                rule=rule))
        dyn = seg.get("dynamic")
        segments[flavour] = SegmentRules(
            id=seg["name"], flavour=flavour, fields=tuple(rules),
            dynamic=(dyn["position"], dyn["reference"], dyn["cases"]) if dyn else None,
            statements=tuple(seg_statements.get(flavour, ())))
    comp_tables = {name: _components(pid, "", 0, name, datatypes, preds, tables, None, None,
                                     pred_reads)
                   for name in datatypes}
    msg = data["message"]
    return CompiledProfile(
        id=pid, direction=data["direction"], message_type=msg["type"],
        grammar=_grammar(data["structure"], msg["structure"]),
        segments=segments,
        group_statements={k: tuple(v) for k, v in group_statements.items()},
        message_statements=tuple(message_statements),
        datatype_statements={k: tuple(v) for k, v in dt_statements.items()},
        datatypes=comp_tables,
        statement_ids=tuple(sorted({s.id for s in statements})))

