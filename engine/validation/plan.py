"""Fast "is this segment clean?" plans, compiled once per profile segment at start-up.

Owns the fast path of field validation. A clean segment (the common case) must cost a few
dict look-ups and the regular expressions of its new field values, not a walk over every
field rule, so each segment flavour of each profile is compiled into a `SegmentPlan`:

- `fields`: per profiled field, a regular expression over the raw field text (default
  delimiters) that accepts only text where every static check passes (R field and
  components valued, X field blank, repetitions within the maximum, lengths within their
  limits, NM/SI/DT/DTM values well formed, no escape sequences), plus the checks a regular
  expression cannot do (value sets, C components, datatype conformance statements) as a
  closure over the field text; `last_required` and `head` complete what one expression over
  the whole segment used to say (R fields present, segment id / MSH-2). Per field rather than
  per segment because senders repeat most field values (codes, namespaces, routes) while ids,
  names and dates are new: a field seen before costs one look-up, and only the new ones are
  matched (a whole-segment expression re-matched every field of every new segment);
- `statements`: the segment's conformance statements (all but the natively evaluated SetID
  ones) and the C fields whose predicate can make them R (when empty) or X (when valued),
  grouped by the fields they read (`Statement.reads`, `FieldRule.predicate_reads`);
- `dynamic`: OBX-5, whose datatype OBX-2 chooses.

`verdict()` memoises, all pure functions of their key under the default delimiters, so each
memo is exact: the pair (clean?, failing statements) per segment text; every statement
group's outcome at once per texts of all the fields the groups read (one look-up while none
of them is new), then each group's per texts of its own fields; each field test per field
text (the tests of fields without a coded test are pooled by pattern across plans); a
composite field's coded test with several statements or predicates per texts of the
components it reads (EI: namespace, OID, type - not the id). A memo is a dict cleared when
full, and long keys are never kept (bounds below), because a registry sees millions of
distinct ids, names and dates, while the values that repeat (codes, whole RXR/OBX/PD1
segments) come straight back after a clear.

The plan is a conservative filter, never the judge: a segment is clean only when the full
field-by-field check in `engine.validation.validator` would report nothing and change nothing.
For a segment that is not clean, `suspects()` names the fields that check must visit (those
failing their test, broken conditional fields, OBX-5 when OBX-2's type does not pass, what no
test settles): a field passing its test would find nothing there, as the same reasoning per
field says (tests/validation/test_slow_path.py compares with the check of every field).
Anything else (a finding, an escape sequence, other delimiters, a 29 February) goes to that
full check, which alone writes findings (tests/validation/test_memo.py checks this). The
calendar patterns therefore only accept dates that are valid in every year; a leap day takes
the full path and is judged there.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters
from engine.validation.compiler import ComponentRule, FieldRule, SegmentRules, Statement
from engine.validation.formats import FORMATS

# Final: compiled, a module constant is a C static (a plain global is a dict look-up per use)
D: Final = DEFAULT_DELIMITERS
BLANK: Final = D.component + D.subcomponent + D.repetition  # a field of only these is empty

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
# SEGMENT_MEMO segment texts of up to MEMO_TEXT characters per plan (for `verdict` and for
# `suspects`, whose values are tuples of the plan's own rules), and FIELD_MEMO keys of
# up to FIELD_TEXT characters per field test, composite test, statement group, plan outcome
# or validator memo. Worst case for the 28 inbound plans (518 field-test memos, 20 composite,
# 59 statement-group and 13 outcome memos, 24 OBX-5 cases) and the validator's memos: about
# 2 * 28 * 1024 * 0.6 kB + 640 * 256 * 0.25 kB = 34 + 41 MB (+ 3 MB of group statement keys);
# real keys are far shorter (codes, short segments), and the suspect memo's keys are mostly
# the very strings the verdict memo holds (a segment that is not clean is in both).
# The sizes are read when a plan (or validator) is built, into its attributes and closures
# (tests shrink them to clear the memos all the time); the text limits are Final.
SEGMENT_MEMO = 1024
MEMO_TEXT: Final = 512
FIELD_MEMO = 256
FIELD_TEXT: Final = 128
Conditional = tuple[int, Callable[[list[str], Delimiters], bool], str, str, bool, bool]


class FieldTest:
    """One profiled field's clean test: its pattern and coded test, remembered per field text.

    A class rather than a tuple: compiled, its attributes are typed slots, so the loop over
    every field of every new segment reads them directly instead of unpacking a tuple (and
    `fullmatch` is the pattern's bound method, not looked up by name per call).
    """

    def __init__(self, n: int, pattern: re.Pattern[str], check: FieldCheck | None,
                 known: dict[str, bool], required: bool) -> None:
        self.n = n
        self.pattern = pattern
        self.fullmatch: Callable[[str], re.Match[str] | None] = pattern.fullmatch
        self.check = check
        self.known = known  # the answer per field text (shared by pooled tests)
        self.required = required
        self.size = FIELD_MEMO

    def passes(self, text: str) -> bool:
        """The test of one valued field, remembered per field text."""
        known = self.known
        ok = known.get(text)
        if ok is None:
            check = self.check
            ok = self.fullmatch(text) is not None and (check is None or check(text))
            if len(text) <= FIELD_TEXT:
                remember(known, text, ok, self.size)
        return ok


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
    # a formatted value first: sent values are the common case ("&*" first would match "" and
    # backtrack for every valued component); the alternatives accept the same texts
    body = value + rest if fmt is None else f"(?:{value}{rest}|&*)"
    if c.usage == "R":
        # valued: its first character after any "&" is a value character (one step, where
        # "some character of the component is not &" would scan the whole component)
        body = r"(?=&*[^^|~&])" + body
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
        # valued: the first character that is not ^ & ~ is not | (nor the end)
        return r"(?=[\^&~]*[^|^&~])" + body
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

    def composite_check(raw: str) -> bool:
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

    # One repetition: the answer depends on whether the field is blank, on the texts of the
    # components the tests read (codes, statement and predicate paths) and on whether each
    # conditional component is valued, not on the others (ids, names, numbers): remembered
    # per those.
    reads = ({n for n, _c in coded} | ({1, 3} if binding is not None else set())
             | {k for st in sts for k in st.reads}
             | {k for c in comps if c.usage == "C" and c.predicate is not None
                and c.parts_condition is not None for k in c.predicate_reads})
    flags = {n for n, *_rest in conditional} - reads
    if any(not c.predicate_reads for c in comps if c.usage == "C" and c.predicate is not None
           and c.parts_condition is not None) or min(reads | flags, default=1) < 1:
        return composite_check  # reads unknown: no memo
    if len(conditional) + 2 * len(sts) < 4:
        return composite_check  # a key would cost about what the check does (measured)
    top = max(reads | flags)
    pick = operator.itemgetter(*[k - 1 for k in sorted(reads)])
    flag = tuple(k - 1 for k in sorted(flags))
    memo: dict[tuple[object, ...], bool] = {}
    bound = FIELD_MEMO

    def composite(raw: str) -> bool:
        if "~" in raw:
            return composite_check(raw)
        parts = raw.split("^")
        if len(parts) < top:
            parts += [""] * (top - len(parts))
        texts = pick(parts)
        key = (bool(raw.strip(BLANK)), texts, *[bool(parts[k].strip("&")) for k in flag])
        got = memo.get(key)
        if got is None:
            got = composite_check(raw)
            size = len(texts) if isinstance(texts, str) else sum(map(len, texts))
            if size <= FIELD_TEXT:
                remember(memo, key, got, bound)
        return got
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
    bound = FIELD_MEMO

    def cached(raw: str) -> bool:
        got = memo.get(raw)
        if got is None:
            got = check(raw)
            if len(raw) <= FIELD_TEXT:
                remember(memo, raw, got, bound)
        return got
    return cached


# A segment's conformance statements and conditional-field predicates, grouped by the fields
# they read: (fields read, their texts from a field list, memo, (index, statement)...,
# conditionals). The memo maps the texts read to (failing statement indexes, each
# conditional's predicate outcome).
Outcome = tuple[tuple[int, ...], tuple[bool, ...]]
Outcomes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
StatementGroup = tuple[tuple[int, ...], Callable[[list[str]], object], dict[object, Outcome],
                       tuple[tuple[int, Statement], ...], tuple[Conditional, ...]]


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    # per profiled field: its pattern, its coded test and one memo of the pair per field text
    fields: tuple[FieldTest, ...]
    last_required: int  # highest R field number: a segment ending before it is not clean
    head: tuple[int, str]  # (field index, text) the segment must start with: id, MSH-2
    dynamic: tuple[int, int, int, Mapping[str, tuple[re.Pattern[str], FieldCheck | None]]] | None
    # the segment's conformance statements evaluated natively (SetID...): their results
    # depend on the segment's position, so `verdict` leaves them to the validator
    native: bool = False
    # the checked segment statements and the conditional fields, by the fields they read
    statements: tuple[StatementGroup, ...] = ()
    # every field the groups read (sorted), their texts from a field list, and the memo of
    # all the groups' outcomes per those texts (one look-up when none of them is new)
    reads: tuple[int, ...] = ()
    pick: Callable[[list[str]], object] | None = None
    outcomes: dict[object, Outcomes] = field(default_factory=dict, compare=False,
                                                        repr=False)
    memo: dict[str, Verdict] = field(default_factory=dict, compare=False, repr=False)
    # the slow path (`suspects`): the segment's field rules in the order the full check
    # visits them, the fields it always checks (no field test proves them finding-free) and
    # the memo of the rules to check per segment text
    rules: tuple[FieldRule, ...] = ()
    always: frozenset[int] = frozenset()
    suspect_memo: dict[str, tuple[FieldRule, ...]] = field(default_factory=dict,
                                                          compare=False, repr=False)
    # memo sizes (SEGMENT_MEMO, FIELD_MEMO when the plan was built)
    segment_memo: int = 1024
    field_memo: int = 256

    def verdict(self, raw: str, fields: list[str]) -> Verdict:
        """(clean?, failing segment statements) of a default-delimiter segment.

        Clean means the full check of the segment would find nothing: every field passes its
        test (`clean_fields`), no conditional field is R while empty or X while valued, and
        OBX-5 fits the type OBX-2 names. All of it is a pure function of the segment text (a
        segment statement or predicate reads only its segment's fields; none depends on the
        date or on other segments), so the pair is remembered per segment text, and each
        statement group's outcome per text of the fields it reads, each field test's per
        field text: a repeated segment (RXR, funding/VIS OBX, PD1...) costs one dict look-up,
        a new one mostly look-ups of repeated field values.
        """
        memo = self.memo
        got = memo.get(raw)
        if got is not None:
            return got
        failing: tuple[int, ...] = ()
        ok = True
        if self.pick is not None:
            failing, valued, blank = self._every(fields)
            # conditional fields: R ones must be valued, X ones blank
            ok = not _conditionals_off(fields, valued, blank)
        got = (ok and self.clean_fields(fields), failing)
        if len(raw) <= MEMO_TEXT:
            remember(memo, raw, got, self.segment_memo)
        return got

    def suspects(self, raw: str, fields: list[str]) -> tuple[FieldRule, ...]:
        """The field rules the full check must visit for a default-delimiter segment that
        `verdict` did not call clean, in the order it visits them: the others would find
        nothing and change nothing there.

        A field's full check (usage, repetitions, length, formats, value sets, components,
        datatype statements) depends only on its own text, and its field test accepts only
        text on which that check finds nothing, so a field passing its test is skipped. What
        a field test does not settle is always visited (`always`: MSH-1/2, a field
        whose datatype statement has no component-list form); a C field is also visited when
        its predicate makes it R while empty or X while valued (the statement groups'
        outcomes), OBX-5 when the type OBX-2 names does not pass (`_dynamic_clean`).
        Remembered per segment text like `verdict`.
        """
        memo = self.suspect_memo
        got = memo.get(raw)
        if got is not None:
            return got
        count = len(fields)
        bad = set(self.always)
        if self.pick is not None:
            _failing, valued, blank = self._every(fields)
            bad.update(_conditionals_off(fields, valued, blank))
        for test in self.fields:
            n = test.n
            if n >= count:
                if test.required:
                    bad.add(n)
                continue
            text = fields[n]
            if not text:
                if test.required:
                    bad.add(n)
                continue
            if not test.passes(text):
                bad.add(n)
        if self.dynamic is not None and not self._dynamic_clean(fields):
            bad.add(self.dynamic[0])
        got = tuple([r for r in self.rules if r.n in bad])
        if len(raw) <= MEMO_TEXT:
            remember(memo, raw, got, self.segment_memo)
        return got

    def _every(self, fields: list[str]) -> Outcomes:
        """Every statement group's outcome (remembered per texts of the fields they read)."""
        assert self.pick is not None
        count = len(fields)
        key = self.pick(fields) if self.reads[-1] < count else tuple(
            fields[n] if n < count else "" for n in self.reads)
        every = self.outcomes.get(key)
        if every is None:
            every = self._outcomes(fields, count)
            size = len(key) if isinstance(key, str) else sum(map(len, key))  # type: ignore[call-overload]
            if size <= FIELD_TEXT:
                remember(self.outcomes, key, every, self.field_memo)
        return every

    def _outcomes(self, fields: list[str], count: int) -> Outcomes:
        """The groups' outcomes (each remembered per text of the fields it reads), as
        (failing statements, conditional fields that must be valued, ... must be blank)."""
        failing: tuple[int, ...] = ()
        valued: list[int] = []
        blank: list[int] = []
        for reads, pick, known, sts, conds in self.statements:
            key = pick(fields) if reads[-1] < count else tuple(
                fields[n] if n < count else "" for n in reads)
            out = known.get(key)
            if out is None:
                out = (tuple(k for k, st in sts
                             if st.check is not None and not st.check(fields, D)
                             and (st.guard is None or st.guard(fields, D))),
                       tuple(cond(fields, D) for _n, cond, *_rest in conds))
                size = len(key) if isinstance(key, str) else sum(map(len, key))  # type: ignore[call-overload]
                if size <= FIELD_TEXT:
                    remember(known, key, out, self.field_memo)
            bad, outcomes = out
            failing += bad
            for (n, _cond, true_usage, false_usage, if_empty, if_valued), outcome in zip(
                    conds, outcomes, strict=True):
                usage = true_usage if outcome else false_usage
                if if_empty and usage == "R":
                    valued.append(n)
                elif if_valued and usage == "X":
                    blank.append(n)
        return failing, tuple(valued), tuple(blank)

    def clean_fields(self, fields: list[str]) -> bool:
        """Every field passes its static checks and coded test, OBX-5 its type's."""
        count = len(fields)
        at, head = self.head
        if count <= self.last_required or fields[at] != head:
            return False
        for test in self.fields:
            n = test.n
            if n >= count:
                break  # sorted by field number; absent fields are not R (last_required)
            text = fields[n]
            if not text:  # the pattern of a field that is not R accepts ""
                if test.required:
                    return False
                continue
            if not test.passes(text):
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



def _conditionals_off(fields: list[str], valued: tuple[int, ...], blank: tuple[int, ...]
                      ) -> list[int]:
    """The conditional fields whose predicate is broken: R ones empty, X ones valued."""
    count = len(fields)
    off: list[int] = []
    for n in valued:
        value = fields[n] if n < count else ""
        if not value or not value.strip(BLANK):
            off.append(n)
    for n in blank:
        value = fields[n] if n < count else ""
        if value and value.strip(BLANK):
            off.append(n)
    return off


def build_plan(rules: SegmentRules, datatypes: Mapping[str, tuple[ComponentRule, ...]],
               datatype_statements: Mapping[str, tuple[Statement, ...]],
               shared: dict[str, tuple[re.Pattern[str], dict[str, bool]]] | None = None
               ) -> SegmentPlan:
    """Compile one segment flavour; `shared` pools the field tests without a coded test by
    pattern text (one compiled pattern and one memo for every field of that form)."""
    shared = {} if shared is None else shared
    by_n = {r.n: r for r in rules.fields}
    top = max(by_n) if by_n else 0
    msh = rules.id == "MSH"
    tests: list[FieldTest] = []
    conditional: list[tuple[Conditional, frozenset[int]]] = []
    last_required = 0
    dyn_n = rules.dynamic[0] if rules.dynamic is not None else 0
    for n in range(3 if msh else 1, top + 1):
        r = by_n.get(n)
        if r is None:
            continue  # not profiled: anything but a field separator
        usage = r.usage
        if usage == "C":
            if r.predicate is not None:
                cond, true_usage, false_usage = r.predicate
                if_empty, if_valued = "R" in (true_usage, false_usage), "X" in (
                    true_usage, false_usage)
                if if_empty or if_valued:
                    conditional.append(((n, cond, true_usage, false_usage, if_empty,
                                         if_valued), r.predicate_reads))
            usage = "O"  # the pattern allows both; the conditional decides
        if usage == "R":
            last_required = n
        statements = datatype_statements.get(r.flavour, ())
        pattern = _field_pattern(r, r.components, r.datatype, n == dyn_n, usage)
        check: FieldCheck | None = None
        if n != dyn_n:
            check = _field_check(r, r.components, statements)
        elif statements:
            check = _all_reps(statements)
        if check is not None:
            tests.append(FieldTest(n, re.compile(pattern), check, {}, usage == "R"))
        else:
            pooled = shared.get(pattern)
            if pooled is None:
                pooled = shared[pattern] = (re.compile(pattern), {})
            tests.append(FieldTest(n, pooled[0], None, pooled[1], usage == "R"))
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
    groups = _statement_groups(rules.statements, conditional)
    reads = tuple(sorted({n for group in groups for n in group[0]}))
    # fields the slow path always checks: no field test (MSH-1/2), a rule shadowed by
    # another of the same number, a datatype statement without its component-list form
    tested = {t.n for t in tests}
    always = frozenset(
        r.n for r in rules.fields
        if r.n not in tested or by_n[r.n] is not r
        or any(st.check is not None and st.parts_check is None
               for st in datatype_statements.get(r.flavour, ())))
    return SegmentPlan(fields=tuple(tests), last_required=last_required,
                       reads=reads, pick=operator.itemgetter(*reads) if reads else None,
                       head=(2, D.encoding_characters) if msh else (0, rules.id),
                       dynamic=dynamic,
                       native=any(st.check is None for st in rules.statements),
                       statements=groups, rules=rules.fields, always=always,
                       segment_memo=SEGMENT_MEMO, field_memo=FIELD_MEMO)


def _statement_groups(statements: tuple[Statement, ...],
                      conditional: list[tuple[Conditional, frozenset[int]]]
                      ) -> tuple[StatementGroup, ...]:
    """Checked segment statements and conditional fields, grouped by the fields they read."""
    by_reads: dict[tuple[int, ...], tuple[list[tuple[int, Statement]], list[Conditional]]] = {}
    for k, st in enumerate(statements):
        if st.check is not None:
            by_reads.setdefault(tuple(sorted(st.reads)) or (0,), ([], []))[0].append((k, st))
    for cond, reads in conditional:
        by_reads.setdefault(tuple(sorted(reads)) or (0,), ([], []))[1].append(cond)
    return tuple((reads, operator.itemgetter(*reads), {}, tuple(sts), tuple(conds))
                 for reads, (sts, conds) in by_reads.items())
