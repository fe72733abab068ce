"""NIST element paths and assertion expressions, compiled into closures once at start-up.

Owns the evaluation model of the NIST constraint language as the profiles carry it (Presence,
PlainText, StringList, Format, SimpleValue, PathValue, ValueSet, AND/OR/NOT/IMPLY). A path is
resolved at compile time into field/repetition/component/subcomponent numbers, so evaluating
an expression per message is a few list look-ups and splits, never path interpretation.

Three contexts, each with its own closure signature (the validator calls the one it needs):
- segment (`SegEval`): paths ``field[rep].comp[rep].sub[rep]`` over a segment's raw field list
  (`Segment.fields`: split once by the parser, cached);
- datatype (`RepEval`): paths ``comp[rep].sub[rep]`` over one raw field repetition;
- parts (`PartsEval`): the same paths over a repetition already split into components (the
  validator's fast path has split it anyway);
- group (`GroupEval`): paths starting with the child position in the group's grammar, over a
  `GroupNode` and the message's segments.

Values are unescaped leaves; "present" means a non-empty leaf somewhere below the element. The
value of a component is its first subcomponent, or its second when the first is empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.hl7.er7 import Segment
from engine.hl7.escape import Delimiters, unescape

# (position, instance) pairs; instance 0 means "any" (NIST's [*]).
Path = tuple[tuple[int, int], ...]
Segments = tuple[Segment, ...]


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


SegEval = Callable[[list[str], Delimiters], bool]
RepEval = Callable[[str, Delimiters], bool]
GroupEval = Callable[[GroupNode, Segments], bool]
PartsEval = Callable[[list[str], Delimiters], bool]
# The statement/predicate tables hold closures of all three contexts side by side; which
# signature applies is fixed by the entry's context, so they are stored under this alias.
Evaluator = Callable[[Any, Any], bool]

C = TypeVar("C")
E = TypeVar("E")
Getter = Callable[[C, E], list[str]]
First = Callable[[C, E], "str | None"]

_STEP = re.compile(r"(\d+)\[(\d+|\*)\]")


def parse_path(text: str) -> Path:
    steps = []
    for part in text.split("."):
        m = _STEP.fullmatch(part.strip())
        if not m:
            raise ValueError(f"bad NIST path {text!r}")
        steps.append((int(m.group(1)), 0 if m.group(2) == "*" else int(m.group(2))))
    return tuple(steps)


# -- leaves of one repetition --------------------------------------------------------------
def rep_leaf(rep: str, comp: int, sub: int, d: Delimiters) -> str:
    """`Segment.value` semantics inside one raw repetition: the unescaped leaf or ""."""
    if d.component in rep:
        parts = rep.split(d.component)
        if comp > len(parts):
            return ""
        rep = parts[comp - 1]
    elif comp != 1:
        return ""
    if d.subcomponent in rep:
        subs = rep.split(d.subcomponent)
        if sub > len(subs):
            return ""
        rep = subs[sub - 1]
    elif sub != 1:
        return ""
    return unescape(rep, d) if d.escape in rep else rep


def _leaves(rep: str, d: Delimiters) -> list[str]:
    """Every non-empty unescaped subcomponent of a repetition, in order."""
    if d.component not in rep and d.subcomponent not in rep:
        value = unescape(rep, d) if d.escape in rep else rep
        return [value] if value else []
    out = []
    for c in rep.split(d.component):
        for s in c.split(d.subcomponent):
            value = unescape(s, d) if d.escape in s else s
            if value:
                out.append(value)
    return out


def _rep_first_fn(comp: int, sub: int) -> Callable[[str, Delimiters], str | None]:
    """The first value a (comp, sub) path gives inside one repetition (None: absent)."""
    if comp == 0:
        def whole(rep: str, d: Delimiters) -> str | None:
            if d.component not in rep and d.subcomponent not in rep:
                value = unescape(rep, d) if d.escape in rep else rep
                return value or None
            leaves = _leaves(rep, d)
            return leaves[0] if leaves else None
        return whole
    if sub == 0:
        def component(rep: str, d: Delimiters) -> str | None:
            if d.component in rep:
                parts = rep.split(d.component)
                if comp > len(parts):
                    return None
                rep = parts[comp - 1]
            elif comp != 1:
                return None
            if d.subcomponent in rep:
                subs = rep.split(d.subcomponent)
                value = unescape(subs[0], d) if d.escape in subs[0] else subs[0]
                if value:
                    return value
                value = unescape(subs[1], d) if d.escape in subs[1] else subs[1]
                return value or None
            value = unescape(rep, d) if d.escape in rep else rep
            return value or None
        return component

    def leaf(rep: str, d: Delimiters) -> str | None:
        return rep_leaf(rep, comp, sub, d) or None
    return leaf


def _rep_steps(rest: Path) -> tuple[int, int]:
    if len(rest) > 2:
        raise ValueError("paths below subcomponents are not supported")
    return (rest[0][0] if rest else 0), (rest[1][0] if len(rest) > 1 else 0)


# -- getters per context -------------------------------------------------------------------
def _seg_getters(path: Path) -> tuple[Getter[list[str], Delimiters], First[list[str], Delimiters]]:
    (fnum, frep), rest = path[0], path[1:]
    comp, sub = _rep_steps(rest)
    in_rep = _rep_first_fn(comp, sub)

    def values(fields: list[str], d: Delimiters) -> list[str]:
        raw = fields[fnum] if fnum < len(fields) else ""
        if not raw:
            return []
        if fnum <= 2 and fields[0] == "MSH":
            return [raw]
        reps = raw.split(d.repetition)
        chosen = reps if frep == 0 else reps[frep - 1:frep]
        out: list[str] = []
        for rep in chosen:
            if comp == 0:
                out.extend(_leaves(rep, d))
            else:
                value = in_rep(rep, d)
                if value is not None:
                    out.append(value)
        return out

    if frep == 0:
        def first_any(fields: list[str], d: Delimiters) -> str | None:
            found = values(fields, d)
            return found[0] if found else None
        return values, first_any

    msh_special = fnum <= 2  # MSH-1/MSH-2 are read verbatim

    def first(fields: list[str], d: Delimiters) -> str | None:
        raw = fields[fnum] if fnum < len(fields) else ""
        if not raw:
            return None
        if msh_special and fields[0] == "MSH":
            return raw
        if d.repetition in raw:
            reps = raw.split(d.repetition)
            if frep > len(reps):
                return None
            raw = reps[frep - 1]
        elif frep != 1:
            return None
        return in_rep(raw, d)

    if comp == 0 and frep == 1 and not msh_special:
        # the common "field[1]" path, inlined: a plain value is its own first leaf
        def first_plain(fields: list[str], d: Delimiters) -> str | None:
            raw = fields[fnum] if fnum < len(fields) else ""
            if not raw:
                return None
            if (d.component not in raw and d.subcomponent not in raw
                    and d.repetition not in raw and d.escape not in raw):
                return raw
            return first(fields, d)
        return values, first_plain
    if comp > 0 and sub == 0 and frep == 1 and not msh_special:
        def first_component(fields: list[str], d: Delimiters) -> str | None:
            raw = fields[fnum] if fnum < len(fields) else ""
            if not raw:
                return None
            if d.repetition in raw or d.escape in raw:
                return first(fields, d)
            if d.component in raw:
                parts = raw.split(d.component)
                if comp > len(parts):
                    return None
                raw = parts[comp - 1]
            elif comp != 1:
                return None
            if d.subcomponent in raw:
                subs = raw.split(d.subcomponent)
                return subs[0] or subs[1] or None
            return raw or None
        return values, first_component
    return values, first


def _rep_getters(path: Path) -> tuple[Getter[str, Delimiters], First[str, Delimiters]]:
    comp, sub = _rep_steps(path)
    in_rep = _rep_first_fn(comp, sub)

    def values(rep: str, d: Delimiters) -> list[str]:
        if comp == 0:
            return _leaves(rep, d)
        value = in_rep(rep, d)
        return [] if value is None else [value]
    return values, in_rep


def _parts_getters(path: Path) -> tuple[Getter[list[str], Delimiters],
                                        First[list[str], Delimiters]]:
    """Datatype paths over a repetition already split into its components."""
    comp, sub = _rep_steps(path)
    join = _rep_getters(path)

    def values(parts: list[str], d: Delimiters) -> list[str]:
        return join[0](d.component.join(parts), d)

    if comp == 0:
        return values, lambda parts, d: join[1](d.component.join(parts), d)

    def first(parts: list[str], d: Delimiters) -> str | None:
        text = parts[comp - 1] if comp <= len(parts) else ""
        if d.escape in text:
            return join[1](d.component.join(parts), d)
        if d.subcomponent in text:
            subs = text.split(d.subcomponent)
            if sub == 0:
                return subs[0] or subs[1] or None
            return (subs[sub - 1] if sub <= len(subs) else "") or None
        return text or None if sub <= 1 else None
    return values, first


def _group_getters(path: Path) -> tuple[Getter[GroupNode, Segments], First[GroupNode, Segments]]:
    position, instance = path[0]
    rest = path[1:]
    sub_values: Getter[GroupNode, Segments] | None = (
        _group_getters(rest)[0] if len(rest) > 0 else None)
    seg_values = _seg_getters(rest)[0] if rest else None

    def values(node: GroupNode, segments: Segments) -> list[str]:
        items = node.children.get(position, [])
        chosen = items if instance == 0 else items[instance - 1:instance]
        out: list[str] = []
        for item in chosen:
            if isinstance(item, GroupNode):
                if sub_values is not None:
                    out.extend(sub_values(item, segments))
                else:
                    out.extend(v for i in item.segment_indexes()
                               for v in segments[i].fields[1:] if v)
            elif seg_values is not None:
                seg = segments[item]
                out.extend(seg_values(seg.fields, seg.delimiters))
            else:
                out.extend(v for v in segments[item].fields[1:] if v)
        return out

    sub_first = _group_getters(rest)[1] if rest else None
    seg_first = _seg_getters(rest)[1] if rest else None

    def first(node: GroupNode, segments: Segments) -> str | None:
        items = node.children.get(position)
        if not items:
            return None
        for item in (items if instance == 0 else items[instance - 1:instance]):
            if isinstance(item, GroupNode):
                if sub_first is None:
                    found = [v for i in item.segment_indexes() for v in segments[i].fields[1:]
                             if v]
                    value = found[0] if found else None
                else:
                    value = sub_first(item, segments)
            elif seg_first is not None:
                seg = segments[item]
                value = seg_first(seg.fields, seg.delimiters)
            else:
                value = next((v for v in segments[item].fields[1:] if v), None)
            if value is not None:
                return value
        return None
    return values, first


# -- expressions ---------------------------------------------------------------------------
def _compile(expr: Mapping[str, Any], valuesets: Mapping[str, frozenset[str]],
             getters: Callable[[Path], tuple[Getter[C, E], First[C, E]]]
             ) -> Callable[[C, E], bool] | None:
    op = expr["op"]
    if op in ("AND", "OR", "NOT", "IMPLY"):
        parts = [_compile(a, valuesets, getters) for a in expr["args"]]
        fns = [p for p in parts if p is not None]
        if len(fns) != len(parts):
            return None
        if op == "AND":
            if len(fns) == 2:
                a, b = fns
                return lambda n, s: a(n, s) and b(n, s)
            return lambda n, s: all(f(n, s) for f in fns)
        if op == "OR":
            if len(fns) == 2:
                a, b = fns
                return lambda n, s: a(n, s) or b(n, s)
            return lambda n, s: any(f(n, s) for f in fns)
        if op == "NOT":
            only = fns[0]
            return lambda n, s: not only(n, s)
        cond, then = fns[0], fns[1]
        return lambda n, s: (not cond(n, s)) or then(n, s)
    if op == "Presence":
        first = getters(parse_path(expr["path"]))[1]
        return lambda n, s: first(n, s) is not None
    if op == "PlainText":
        values, first = getters(parse_path(expr["path"]))
        text = expr["text"]
        at_least_once = expr.get("atLeastOnce") == "true"
        if expr.get("ignoreCase") == "true":
            want = text.lower()
            if at_least_once:
                return lambda n, s: any(v.lower() == want for v in values(n, s))

            def plain_nocase(n: C, s: E) -> bool:
                v = first(n, s)
                return v is not None and v.lower() == want
            return plain_nocase
        if at_least_once:
            return lambda n, s: text in values(n, s)
        return lambda n, s: first(n, s) == text
    if op == "StringList":
        first = getters(parse_path(expr["path"]))[1]
        allowed = frozenset(expr["cSV"].split(","))
        return lambda n, s: first(n, s) in allowed
    if op == "Format":
        first = getters(parse_path(expr["path"]))[1]
        rx = re.compile(expr["regex"])

        def fmt(n: C, s: E) -> bool:
            v = first(n, s)
            return v is not None and rx.fullmatch(v) is not None
        return fmt
    if op == "SimpleValue":
        first = getters(parse_path(expr["path"]))[1]
        bound = float(expr["value"])
        compare: Callable[[float], bool] | None = {
            "GT": lambda x: x > bound, "GE": lambda x: x >= bound,
            "LT": lambda x: x < bound, "LE": lambda x: x <= bound,
            "EQ": lambda x: x == bound, "NE": lambda x: x != bound}.get(expr["operator"])

        def simple(n: C, s: E) -> bool:
            v = first(n, s)
            if v is None or compare is None:
                return False
            try:
                x = float(v)
            except ValueError:
                return False
            return compare(x)
        return simple
    if op == "PathValue":
        first1 = getters(parse_path(expr["path1"]))[1]
        first2 = getters(parse_path(expr["path2"]))[1]
        if expr["operator"] == "EQ":
            return lambda n, s: first1(n, s) == first2(n, s)
        return lambda n, s: first1(n, s) != first2(n, s)
    if op == "ValueSet":
        codes = valuesets.get(expr["valueSetID"])
        if codes is None:
            return None
        first = getters(parse_path(expr["path"]))[1]
        vs = codes
        return lambda n, s: first(n, s) in vs
    return None  # SetID, IZSetID, Plugin: implemented natively by the validator


def compile_expr(expr: Mapping[str, Any] | None, valuesets: Mapping[str, frozenset[str]],
                 context: str) -> Evaluator | None:
    """Compile one expression for a context ("segment", "datatype" or "group").

    None when it cannot be evaluated here (native checks, unknown value sets).
    """
    if expr is None:
        return None
    if context == "segment":
        return _compile(expr, valuesets, _seg_getters)
    if context == "datatype":
        return _compile(expr, valuesets, _rep_getters)
    if context == "group":
        return _compile(expr, valuesets, _group_getters)
    if context == "parts":
        return _compile(expr, valuesets, _parts_getters)
    return None
