"""Element addressing and NIST assertion expressions, compiled into closures.

Owns the evaluation model of the NIST constraint language as the profiles carry it (Presence,
PlainText, StringList, Format, SimpleValue, PathValue, ValueSet, AND/OR/NOT/IMPLY): each
expression is compiled once at start-up into a function of a *node*.

A node is what a NIST path is relative to:
- `SegNode`: a segment (paths ``field[rep].comp[rep].sub[rep]``),
- `RepNode`: one repetition of one field (paths ``comp[rep].sub[rep]``: datatype contexts),
- `GroupNode`: one instance of a message group (paths start with the child position in the
  group's grammar, then descend into that child segment or group).

Values are unescaped leaves; "present" means a non-empty leaf somewhere below the element.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.hl7.er7 import Segment

# (position, instance) pairs; instance 0 means "any" (NIST's [*]).
Path = tuple[tuple[int, int], ...]


@dataclass(slots=True)
class GroupNode:
    """One instance of a group: its children by grammar position (1-based)."""

    name: str
    children: dict[int, list[int | GroupNode]] = field(default_factory=dict)

    def add(self, position: int, item: int | GroupNode) -> None:
        self.children.setdefault(position, []).append(item)

    def segment_indexes(self) -> list[int]:
        out: list[int] = []
        for items in self.children.values():
            for item in items:
                if isinstance(item, GroupNode):
                    out.extend(item.segment_indexes())
                else:
                    out.append(item)
        return sorted(out)


@dataclass(frozen=True, slots=True)
class SegNode:
    segment: Segment


@dataclass(frozen=True, slots=True)
class RepNode:
    segment: Segment
    field: int
    repetition: int


Node = SegNode | RepNode | GroupNode
Segments = tuple[Segment, ...]
Evaluator = Callable[[Node, Segments], bool]

_STEP = re.compile(r"(\d+)\[(\d+|\*)\]")


def parse_path(text: str) -> Path:
    steps = []
    for part in text.split("."):
        m = _STEP.fullmatch(part.strip())
        if not m:
            raise ValueError(f"bad NIST path {text!r}")
        steps.append((int(m.group(1)), 0 if m.group(2) == "*" else int(m.group(2))))
    return tuple(steps)


def _seg_values(seg: Segment, path: Path) -> list[str]:
    """All leaf values addressed by a segment-relative path (empty leaves dropped)."""
    fnum, frep = path[0]
    raw = seg.field(fnum)
    if not raw:
        return []
    if seg.id == "MSH" and fnum <= 2:
        return [raw]
    reps = seg.repetitions(fnum)
    rep_numbers = range(1, len(reps) + 1) if frep == 0 else [frep]
    out: list[str] = []
    for r in rep_numbers:
        out.extend(_rep_values(seg, fnum, r, path[1:]))
    return out


def _rep_values(seg: Segment, fnum: int, rep: int, rest: Path) -> list[str]:
    comp = rest[0][0] if rest else 0
    sub = rest[1][0] if len(rest) > 1 else 0
    if comp == 0:
        # the whole repetition: every leaf counts (presence), the first leaf is "the value"
        tree = seg.field_tree(fnum)
        if rep > len(tree):
            return []
        leaves = [s for c in tree[rep - 1] for s in c if s]
        return leaves
    if sub == 0:
        # the value of a component is its first subcomponent; a component whose first sub is
        # empty but has later ones still counts as present
        first = seg.value(fnum, comp, 1, rep)
        if first:
            return [first]
        second = seg.value(fnum, comp, 2, rep)
        return [second] if second else []
    value = seg.value(fnum, comp, sub, rep)
    return [value] if value else []


def resolve(node: Node, path: Path, segments: Segments) -> list[str]:
    """Leaf values at `path` below `node` (instance 0 = every instance)."""
    if isinstance(node, SegNode):
        return _seg_values(node.segment, path)
    if isinstance(node, RepNode):
        if not path:
            return _rep_values(node.segment, node.field, node.repetition, ())
        return _rep_values(node.segment, node.field, node.repetition, path)
    position, instance = path[0]
    items = node.children.get(position, [])
    chosen = items if instance == 0 else items[instance - 1:instance]
    out: list[str] = []
    for item in chosen:
        if isinstance(item, GroupNode):
            out.extend(resolve(item, path[1:], segments) if len(path) > 1
                       else [v for i in item.segment_indexes()
                             for v in segments[i].fields[1:] if v])
        elif len(path) > 1:
            out.extend(_seg_values(segments[item], path[1:]))
        else:
            out.extend(v for v in segments[item].fields[1:] if v)
    return out


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def compile_expr(expr: Mapping[str, Any] | None,
                 valuesets: Mapping[str, frozenset[str]]) -> Evaluator | None:
    """Compile one expression tree into a predicate; None when it cannot be evaluated here."""
    if expr is None:
        return None
    op = expr["op"]
    if op in ("AND", "OR", "NOT", "IMPLY"):
        parts = [compile_expr(a, valuesets) for a in expr["args"]]
        if any(p is None for p in parts):
            return None
        fns = [p for p in parts if p is not None]
        if op == "AND":
            return lambda n, s: all(f(n, s) for f in fns)
        if op == "OR":
            return lambda n, s: any(f(n, s) for f in fns)
        if op == "NOT":
            only = fns[0]
            return lambda n, s: not only(n, s)
        cond, then = fns[0], fns[1]
        return lambda n, s: (not cond(n, s)) or then(n, s)
    if op == "Presence":
        p = parse_path(expr["path"])
        return lambda n, s: bool(resolve(n, p, s))
    if op == "PlainText":
        p = parse_path(expr["path"])
        text = expr["text"]
        ignore_case = expr.get("ignoreCase") == "true"
        at_least_once = expr.get("atLeastOnce") == "true"

        def plain(n: Node, s: Segments) -> bool:
            vals = resolve(n, p, s)
            if ignore_case:
                vals = [v.lower() for v in vals]
                want = text.lower()
            else:
                want = text
            if not vals:
                return False
            return any(v == want for v in vals) if at_least_once else vals[0] == want
        return plain
    if op == "StringList":
        p = parse_path(expr["path"])
        allowed = frozenset(expr["cSV"].split(","))
        return lambda n, s: _first(resolve(n, p, s)) in allowed
    if op == "Format":
        p = parse_path(expr["path"])
        rx = re.compile(expr["regex"])

        def fmt(n: Node, s: Segments) -> bool:
            v = _first(resolve(n, p, s))
            return v is not None and rx.fullmatch(v) is not None
        return fmt
    if op == "SimpleValue":
        p = parse_path(expr["path"])
        bound = float(expr["value"])
        oper = expr["operator"]

        def simple(n: Node, s: Segments) -> bool:
            v = _first(resolve(n, p, s))
            try:
                x = float(v) if v is not None else None
            except ValueError:
                return False
            if x is None:
                return False
            return {"GT": x > bound, "GE": x >= bound, "LT": x < bound, "LE": x <= bound,
                    "EQ": x == bound, "NE": x != bound}.get(oper, False)
        return simple
    if op == "PathValue":
        p1, p2 = parse_path(expr["path1"]), parse_path(expr["path2"])
        oper = expr["operator"]

        def pathvalue(n: Node, s: Segments) -> bool:
            a, b = _first(resolve(n, p1, s)), _first(resolve(n, p2, s))
            return a == b if oper == "EQ" else a != b
        return pathvalue
    if op == "ValueSet":
        p = parse_path(expr["path"])
        codes = valuesets.get(expr["valueSetID"])
        if codes is None:
            return None
        vs = codes
        return lambda n, s: _first(resolve(n, p, s)) in vs
    return None  # SetID, IZSetID, Plugin: implemented natively by the validator
