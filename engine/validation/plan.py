"""Fast "is this segment clean?" plans, compiled once per profile segment at start-up.

Owns the fast path of field validation. A clean segment (the common case) must cost a regular
expression match and a handful of set look-ups, not a walk over every field rule, so each
segment flavour of each profile is compiled into a `SegmentPlan`:

- `shape`: one regular expression over the raw segment text (default delimiters) that accepts
  only text where every static check passes: required fields and components valued, X fields
  blank, repetitions within the maximum, lengths within their limits, NM/SI/DT/DTM values well
  formed, no escape sequences in a profiled field;
- `conditional`: C fields whose predicate can make them R (when empty) or X (when valued);
- `coded`: per valued field, the checks a regular expression cannot do (value sets, C
  components, datatype conformance statements), as closures over the raw field text;
- `dynamic`: OBX-5, whose datatype OBX-2 chooses.

`verdict()` adds the segment's conformance statements (all but the natively evaluated SetID
ones) and memoises: the pair (clean?, failing statements) per segment text, each statement
group's failures per text of the fields it reads (`Statement.reads`), and each coded test per
field text. These are pure functions of those texts under the default delimiters, so the memo
is exact; it is bounded (SEGMENT_MEMO segment texts of up to MEMO_TEXT characters per plan,
FIELD_MEMO keys of up to FIELD_TEXT characters per field test or statement group; a full dict
is cleared) because a
registry sees millions of distinct ids, names and dates, while the values that repeat (codes,
whole RXR/OBX/PD1 segments) come straight back after a clear.

The plan is a conservative filter, never the judge: `clean()` is True only when the full
field-by-field check in `engine.validation.validator` would report nothing and change nothing.
Anything else (a finding, an escape sequence, other delimiters, a 29 February) goes to that
full check, which alone writes findings. The calendar patterns therefore only accept dates
that are valid in every year; a leap day takes the full path and is judged there.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters
from engine.validation.compiler import ComponentRule, FieldRule, SegmentRules, Statement
from engine.validation.formats import FORMATS

D = DEFAULT_DELIMITERS
BLANK = D.component + D.subcomponent + D.repetition  # a field of only these is empty

# Conservative versions of formats.FORMATS (subsets of what those accept), default delimiters.
_TIME = r"(?:[01][0-9]|2[0-3])(?:[0-5][0-9](?:[0-5][0-9](?:\.[0-9]{1,4})?)?)?"
_TZ = r"(?:[+-](?:0[0-9]|1[0-4])[0-5][0-9])?"


def _calendar(time: str) -> str:
    """Year, then optional month, then optional day (each followed by `time`)."""
    days = ((r"(?:0[13578]|1[02])", r"(?:0[1-9]|[12][0-9]|3[01])"),
            (r"(?:0[469]|11)", r"(?:0[1-9]|[12][0-9]|30)"),
            (r"02", r"(?:0[1-9]|1[0-9]|2[0-8])"))
    months = "|".join(f"{m}(?:{d}{time})?" for m, d in days)
    return rf"[1-9][0-9]{{3}}(?:{months})?"


_FAST_FORMATS = {
    "NM": r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)",
    "SI": r"[0-9]+",
    "DT": _calendar(""),
    "DTM": _calendar(f"(?:{_TIME})?") + _TZ,
}
assert set(_FAST_FORMATS) == set(FORMATS)

FieldCheck = Callable[[str], bool]  # raw (escape-free) valued field text -> clean?
K = TypeVar("K")
V = TypeVar("V")
Verdict = tuple[bool, tuple[int, ...]]  # (clean, indexes of failing segment statements)

# Memo bounds. A registry sees millions of distinct ids, names and dates, so every memo is a
# dict that is cleared when it reaches its size, and long keys are never kept: at most
# SEGMENT_MEMO segment texts of up to MEMO_TEXT characters per plan, and FIELD_MEMO keys of
# up to FIELD_TEXT characters per field test, statement group or validator memo. Worst case
# for the 28 inbound plans (457 field tests, 50 statement groups): about 28 * 1024 * 0.6 kB
# + 550 * 256 * 0.25 kB = 17 + 35 MB; real keys are far shorter (codes, short segments).
SEGMENT_MEMO = 1024
MEMO_TEXT = 512
FIELD_MEMO = 256
FIELD_TEXT = 128
Conditional = tuple[int, Callable[[list[str], Delimiters], bool], str, str, bool, bool]


def _maxlen(n: int, chars: str) -> str:
    return f"[{chars}]{{0,{n}}}" if n else f"[{chars}]*"


def _value(maxlen: int, fmt: str | None, chars: str) -> str:
    """A non-empty leaf value of at most `maxlen` characters from the class `chars`."""
    if fmt is None:
        return _maxlen(maxlen, chars)
    limit = f"(?![{chars}]{{{maxlen + 1}}})" if maxlen else ""
    return limit + f"(?:{fmt})"


def _component_pattern(c: ComponentRule) -> str:
    """One component (text between ^): its first subcomponent is the value checked."""
    fmt = _FAST_FORMATS.get(c.datatype)
    rest = r"(?:&[^^|~\\]*)?"
    value = _value(c.maxlen, fmt, r"^^|~&\\")
    body = value + rest if fmt is None else f"(?:&*|{value}{rest})"
    if c.usage == "R":
        body = r"(?=[^^|~]*[^^|~&])" + body
    return body


def _nest(parts: list[str], required: list[bool], sep: str, tail: str) -> str:
    """`p1(?:sep p2(?:sep p3 ...)?)?` where a part followed by a required one is not optional."""
    out = tail
    must = False
    for k in range(len(parts) - 1, 0, -1):
        must = must or required[k]
        inner = re.escape(sep) + parts[k] + out
        out = inner if must else f"(?:{inner})?"
    return parts[0] + out if parts else tail


def _rep_pattern(rule: FieldRule, comps: tuple[ComponentRule, ...], datatype: str) -> str:
    if not comps:
        return _value(rule.maxlen, _FAST_FORMATS.get(datatype), r"^|~\\")
    by_n = {c.n: c for c in comps}
    top = max(by_n)
    parts = [_component_pattern(by_n[n]) if n in by_n else r"[^^|~\\]*"
             for n in range(1, top + 1)]
    required = [n in by_n and by_n[n].usage == "R" for n in range(1, top + 1)]
    return _nest(parts, required, "^", r"(?:\^[^|~\\]*)?")


def _field_pattern(rule: FieldRule, comps: tuple[ComponentRule, ...], datatype: str,
                   dynamic: bool, usage: str) -> str:
    if usage == "X":
        return r"[\^&~]*"
    if dynamic:
        body = r"[^|\\]*"
    else:
        rep = f"(?:{_rep_pattern(rule, comps, datatype)})?"
        more = "" if rule.max == 1 else (
            f"(?:~{rep})*" if rule.max == 0 else f"(?:~{rep}){{0,{rule.max - 1}}}")
        body = rep + more
    if usage == "R":
        return r"(?=[^|]*[^|^&~])" + body
    return rf"(?:[\^&~]*|{body})"


def _statements_ok(statements: tuple[Statement, ...], parts: list[str]) -> bool:
    for st in statements:
        if st.parts_check is not None and not st.parts_check(parts, D) and (
                st.parts_guard is None or st.parts_guard(parts, D)):
            return False
    return True


def _field_check(rule: FieldRule, comps: tuple[ComponentRule, ...],
                 statements: tuple[Statement, ...]) -> FieldCheck | None:
    """Clean-test for one valued field: value sets, C components, datatype statements."""
    binding = rule.binding
    conditional = tuple((c.n, c.parts_condition, c.predicate[1], c.predicate[2])
                        for c in comps if c.usage == "C" and c.predicate is not None
                        and c.parts_condition is not None and "R" in c.predicate[1:])
    coded = tuple((c.n, c.binding) for c in comps if c.binding is not None)
    sts = tuple(st for st in statements if st.parts_check is not None)
    if binding is None and not conditional and not coded and not sts:
        return None
    if not comps:
        def primitive(raw: str) -> bool:
            valued = binding is not None and bool(raw.strip(BLANK))
            for rep in raw.split("~"):
                if rep and valued and binding is not None and not binding(rep.strip(), ""):
                    return False
                if sts and not _statements_ok(sts, rep.split("^")):
                    return False
            return True
        return primitive

    def composite(raw: str) -> bool:
        # a blank field is empty to the field check, but datatype statements still look at it
        valued = bool(raw.strip(BLANK))
        for rep in (raw.split("~") if "~" in raw else (raw,)):
            parts = rep.split("^")
            if rep and valued:
                count = len(parts)
                for n, cond, true_usage, false_usage in conditional:
                    if (n > count or not parts[n - 1].strip("&")) and (
                            true_usage if cond(parts, D) else false_usage) == "R":
                        return False
                for n, check in coded:
                    if n <= count:
                        text = parts[n - 1]
                        if text.strip("&") and not check(text.split("&", 1)[0].strip(), ""):
                            return False
                if binding is not None:
                    code = parts[0].split("&", 1)[0].strip()
                    if code and not binding(
                            code, parts[2].split("&", 1)[0].strip() if count > 2 else ""):
                        return False
            if sts and not _statements_ok(sts, parts):
                return False
        return True
    return composite


def _all_reps(statements: tuple[Statement, ...]) -> FieldCheck:
    return lambda raw: all(_statements_ok(statements, rep.split("^"))
                           for rep in raw.split("~"))


def remember(memo: dict[K, V], key: K, value: V, size: int) -> None:
    """Store in a bounded memo: cleared when full (distinct values are unbounded in a
    registry, while the repeated ones come straight back)."""
    if len(memo) >= size:
        memo.clear()
    memo[key] = value


def _memo(check: FieldCheck) -> FieldCheck:
    """`check`, remembering its answer per field text (the dynamic OBX-5 cases)."""
    memo: dict[str, bool] = {}

    def cached(raw: str) -> bool:
        got = memo.get(raw)
        if got is None:
            got = check(raw)
            if len(raw) <= FIELD_TEXT:
                remember(memo, raw, got, FIELD_MEMO)
        return got
    return cached


# (fields read, memo of failing statement indexes per read text(s), (index, statement)...)
StatementGroup = tuple[tuple[int, ...], Callable[[list[str]], object],
                       dict[object, tuple[int, ...]], tuple[tuple[int, Statement], ...]]


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    shape: re.Pattern[str]
    conditional: tuple[Conditional, ...]
    # (field, clean-test, memo of its answer per field text): the tests are pure functions of
    # the text and senders repeat most coded values (CVX, MVX, routes, funding, VIS documents)
    coded: tuple[tuple[int, FieldCheck, dict[str, bool]], ...]
    dynamic: tuple[int, int, int, Mapping[str, tuple[re.Pattern[str], FieldCheck | None]]] | None
    # the segment's conformance statements evaluated natively (SetID...): their results
    # depend on the segment's position, so `verdict` leaves them to the validator
    native: bool = False
    # the checked segment statements, grouped by the fields they read (see `verdict`)
    statements: tuple[StatementGroup, ...] = ()
    memo: dict[str, Verdict] = field(default_factory=dict, compare=False, repr=False)

    def verdict(self, raw: str, fields: list[str]) -> Verdict:
        """`clean()` and the failing segment statements of a default-delimiter segment.

        Both are pure functions of the segment text (a segment statement reads only its
        segment's fields; none depends on the date or on other segments), so the pair is
        remembered per segment text, and each statement group's failures per text of the
        fields it reads: a repeated segment (RXR, funding/VIS OBX, PD1...) costs one dict
        look-up, a new one mostly look-ups of repeated field values.
        """
        memo = self.memo
        got = memo.get(raw)
        if got is not None:
            return got
        failing: tuple[int, ...] = ()
        count = len(fields)
        for reads, pick, fails, sts in self.statements:
            key = pick(fields) if reads[-1] < count else tuple(
                fields[n] if n < count else "" for n in reads)
            bad = fails.get(key)
            if bad is None:
                bad = tuple(k for k, st in sts
                            if st.check is not None and not st.check(fields, D)
                            and (st.guard is None or st.guard(fields, D)))
                size = len(key) if isinstance(key, str) else sum(map(len, key))  # type: ignore[call-overload]
                if size <= FIELD_TEXT:
                    remember(fails, key, bad, FIELD_MEMO)
            if bad:
                failing += bad
        got = (self.clean(raw, fields), failing)
        if len(raw) <= MEMO_TEXT:
            remember(memo, raw, got, SEGMENT_MEMO)
        return got

    def clean(self, raw: str, fields: list[str]) -> bool:
        """True when the full check of this segment would find nothing (default delimiters)."""
        if self.shape.fullmatch(raw) is None:
            return False
        count = len(fields)
        for n, cond, true_usage, false_usage, if_empty, if_valued in self.conditional:
            value = fields[n] if n < count else ""
            if not value or not value.strip(BLANK):
                if if_empty and (true_usage if cond(fields, D) else false_usage) == "R":
                    return False
            elif if_valued and (true_usage if cond(fields, D) else false_usage) == "X":
                return False
        for n, check, known in self.coded:
            if n >= count:
                break  # sorted by field number
            text = fields[n]
            if text:
                ok = known.get(text)
                if ok is None:
                    ok = check(text)
                    if len(text) <= FIELD_TEXT:
                        remember(known, text, ok, FIELD_MEMO)
                if not ok:
                    return False
        if self.dynamic is not None:
            return self._dynamic_clean(fields)
        return True

    def _dynamic_clean(self, fields: list[str]) -> bool:
        assert self.dynamic is not None
        n, ref, most, cases = self.dynamic
        raw = fields[n] if n < len(fields) else ""
        if not raw or not raw.strip(BLANK):
            return True
        reps = raw.split("~")
        if most and len(reps) > most:
            return False
        kind = fields[ref].split("~", 1)[0].split("^", 1)[0].split("&", 1)[0] \
            if ref < len(fields) else ""
        if "\\" in kind:
            return False
        case = cases.get(kind)
        if case is None:
            return True  # an unknown OBX-2 is reported by its own value set, not here
        pattern, check = case
        return pattern.fullmatch(raw) is not None and (check is None or check(raw))


def build_plan(rules: SegmentRules, datatypes: Mapping[str, tuple[ComponentRule, ...]],
               datatype_statements: Mapping[str, tuple[Statement, ...]]) -> SegmentPlan:
    by_n = {r.n: r for r in rules.fields}
    top = max(by_n) if by_n else 0
    msh = rules.id == "MSH"
    parts: list[str] = []
    required: list[bool] = []
    conditional: list[Conditional] = []
    coded: list[tuple[int, FieldCheck, dict[str, bool]]] = []
    dyn_n = rules.dynamic[0] if rules.dynamic is not None else 0
    for n in range(1, top + 1):
        r = by_n.get(n)
        if msh and n <= 2:
            continue
        if r is None:
            parts.append(r"[^|]*")
            required.append(False)
            continue
        usage = r.usage
        if usage == "C":
            if r.predicate is not None:
                cond, true_usage, false_usage = r.predicate
                if_empty, if_valued = "R" in (true_usage, false_usage), "X" in (
                    true_usage, false_usage)
                if if_empty or if_valued:
                    conditional.append((n, cond, true_usage, false_usage, if_empty, if_valued))
            usage = "O"  # the shape allows both; `conditional` decides
        statements = datatype_statements.get(r.flavour, ())
        # Atomic per field, ending at a field boundary: once a field has matched, a failure
        # later in the segment cannot backtrack into it. Without this, runs of empty optional
        # fields (each matchable two ways) made a late mismatch exponential in their number.
        parts.append(f"(?>(?:{_field_pattern(r, r.components, r.datatype, n == dyn_n, usage)})"
                     r"(?=\||\Z))")
        required.append(usage == "R")
        if n != dyn_n:
            check = _field_check(r, r.components, statements)
            if check is not None:
                coded.append((n, check, {}))
        elif statements:
            coded.append((n, _all_reps(statements), {}))
    head = (r"MSH\|" + re.escape(D.encoding_characters)) if msh else re.escape(rules.id)
    tail = r"(?s:\|.*)?"
    body = _nest(["", *parts], [False, *required], "|", tail) if parts else tail
    dynamic = None
    if rules.dynamic is not None:
        n, ref, case_map = rules.dynamic
        r = by_n[n]
        cases: dict[str, tuple[re.Pattern[str], FieldCheck | None]] = {}
        for kind, flavour in case_map.items():
            comps = datatypes.get(flavour, ())
            datatype = flavour.split("_")[0]
            pattern = _field_pattern(r, comps, datatype, False, "O")
            check = _field_check(r, comps, ())
            cases[kind] = (re.compile(pattern), None if check is None else _memo(check))
        dynamic = (n, ref, r.max, cases)
    return SegmentPlan(shape=re.compile(head + body), conditional=tuple(conditional),
                       coded=tuple(coded), dynamic=dynamic,
                       native=any(st.check is None for st in rules.statements),
                       statements=_statement_groups(rules.statements))


def _statement_groups(statements: tuple[Statement, ...]) -> tuple[StatementGroup, ...]:
    """Checked segment statements grouped by the fields they read, for `verdict`'s memo."""
    by_reads: dict[tuple[int, ...], list[tuple[int, Statement]]] = {}
    for k, st in enumerate(statements):
        if st.check is not None:
            by_reads.setdefault(tuple(sorted(st.reads)) or (0,), []).append((k, st))
    return tuple((reads, operator.itemgetter(*reads), {}, tuple(sts))
                 for reads, sts in by_reads.items())
