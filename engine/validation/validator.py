"""The conformance validator: profile selection, checks, CDC error propagation, results.

Owns what happens to one message once the pipeline's accept checks passed: match the message
against the profile grammar, check every field of every placed segment (usage, predicates,
cardinality, length, primitive formats, value sets, component usage), the business rules,
the IZ-nn conformance statements, and then the CDC IG propagation chain

    invalid code in an R field -> field empty (103, then 101)
    empty R field             -> segment rejected (100 when the segment is R where it stands)
    rejected R segment        -> its group instance rejected (ORDER = ORC/RXA/RXR/OBX)
    MSH/PID (any top-level R segment) or every ORDER group lost -> message rejected.

Execution (what runs per message, and why it is cheap when the message is clean):
- structure: grammar placement and its findings depend only on the segment ids, so they are
  computed once per (profile, id sequence) as a `_Shape` and reused (bounded cache), with the
  work lists of the later passes (checked segments, SetID statements and their expected
  values, group instances with statements and what those read, OBX numbering...);
- fields: each placed segment is first offered to its compiled `plan.SegmentPlan` (per-field
  regular expressions plus value-set/predicate closures); only a segment the plan cannot call
  clean goes through the field-by-field check below, which alone creates findings, and only
  on the fields that can have some (`SegmentPlan.suspects`: those failing their field test,
  conditional fields whose predicate is broken...; a field passing its test would find
  nothing there). `Validator(full_check=True)` checks every field of every segment instead:
  the tests' reference (tests/validation/test_slow_path.py);
- statements and predicates are closures over the segment's raw field list with the path
  resolved at load (`paths`), evaluated check-first (the guard only matters on failure); a
  message the plans found clean only has its SetID statements and group statements left;
- memos (default delimiters only): the plan's (see plan.py: per segment text, per text of the
  fields the statements and predicates read, per field text, per composite's read
  components), group statements per (instance structure, texts of the fields their paths name
  or, for a path stopping at a segment or group that only Presence reads, whether its
  segments are valued) when they read more than two fields (IZ-23; IZ-45 reads ORC-3, new in
  every message, and is cheaper evaluated), the RXA code rules and IZ-24's condition per
  RXA-5/9/17/20 texts, OBX-1/3/4 values per OBX text, dates per text; and, whatever the
  delimiters, one shared (immutable) Issue per distinct finding (`_Run.report`). All are pure
  functions of their key, so a result never depends on what was validated before
  (tests/validation/test_memo.py). Senders repeat coded values and whole segments (RXR,
  funding/VIS OBX, PD1) while ids, names and dates differ, so a new message costs mostly
  look-ups plus the regular expressions of its new field values. A message without findings
  shares one immutable result per profile.
  Bounds: each memo is a dict cleared when full - plan.SEGMENT_MEMO (1024) segment texts
  of up to plan.MEMO_TEXT (512) characters per plan (verdicts, suspects) and for the OBX
  memo, SEGMENT_MEMO findings for the Issue memo (short texts: rule names, descriptions and
  the offending codes cut to 20 characters - codes, never names, dates or ids);
  plan.FIELD_MEMO (256) keys of up to plan.FIELD_TEXT (128) characters per field test /
  composite test / statement group / plan outcome / group statement / RXA / date memo (group
  statement keys: up to GROUP_TEXT, 2048) - about 80 MB in the worst case (see plan.py), far less with real keys. Look-ups and
  stores are single dict operations (`.get`, never `in` then `[...]`), so a thread pool
  sharing one Validator stays correct under the GIL: a clear racing a look-up only costs a
  recomputation.

Decisions (written down because nobody else will):
- MSH is never "rejected": MSH-9/11/12 are the pipeline's accept checks; other empty R fields
  of MSH are reported (E) but the message is still processed.
- Value sets test the code (CE.1 / the ID value) only, not the coding-system component.
- Code choices (0357/0533) live in this module's constants; texts never quote patient data,
  only positions, field names and (wrong) codes.
- RXA-17 vs the dose: an NDC in RXA-5 names its maker (CDC NDC_Linker), so when it does and
  RXA-17 is valued, only `business.ndc_mvx_mismatch` is tested (codes of the same company,
  codes.json `mvx_same_company`, are accepted); otherwise `business.cvx_mvx_mismatch` (any
  maker of the CVX per CDC trade names). Both are W, 999/3 at RXA-17.1 (profiles/README.md).
- Severity overrides change the reported severity only; the data handling (what is dropped)
  follows the IG whatever the override.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

import engine
from engine.errors import Issue, Location, Severity
from engine.hl7.er7 import Message, Segment
from engine.hl7.escape import DEFAULT_DELIMITERS, Delimiters, unescape
from engine.validation.compiler import (
    CodeTables,
    CompiledProfile,
    ComponentRule,
    FieldRule,
    GrammarNode,
    Overlay,
    SegmentRules,
    Statement,
    compile_profile,
    load_overlay,
    load_tables,
)
from engine.validation.formats import FORMATS, to_date
from engine.validation.paths import GroupNode, parse_path, rep_leaf
from engine.validation.plan import (
    FIELD_MEMO,
    FIELD_TEXT,
    MEMO_TEXT,
    SEGMENT_MEMO,
    SegmentPlan,
    build_plan,
    remember,
)

# Final: compiled, a module constant is inlined or a C static (a plain global is a dict
# look-up per use)
E: Final = Severity.ERROR
W: Final = Severity.WARNING
INFO: Final = Severity.INFORMATION
INBOUND: Final = ("Z22", "Z34", "Z44")
OUTBOUND: Final = ("Z23", "Z31", "Z32", "Z33", "Z42")

# 0357 codes
SEGMENT_ERROR: Final = 100
REQUIRED_MISSING: Final = 101
DATATYPE_ERROR: Final = 102
TABLE_VALUE: Final = 103
ACCEPTED: Final = 0
APPLICATION_ERROR: Final = 999
# 0533 codes (CDC)
ILLOGICAL_DATE: Final = 1
INVALID_DATE: Final = 2
ILLOGICAL_VALUE: Final = 3
INVALID_VALUE: Final = 4
TABLE_NOT_FOUND: Final = 5
REQUIRED_DATA_MISSING: Final = 7
DATA_IGNORED: Final = 8

_SEVERITIES = {s.value: s for s in Severity}
# Positions where a generic usage finding has a more specific, stable rule id.
RULE_ALIASES = {("RXA", 18): "business.refusal_without_reason"}
_NONE: Final[frozenset[int]] = frozenset()
_NONE_FIELDS: Final[frozenset[tuple[int, int]]] = frozenset()
SHAPE_CACHE_SIZE: Final = 1024  # distinct (profile, segment-id sequence) structures kept
# group statement keys hold whole segment texts (a path may stop at a segment); 6 such memos
GROUP_TEXT: Final = 2048
# The later passes read a few fields of segments the plans answered from their memo without
# splitting them (OBX-3 for IZ-23, NK1-1 for its SetID...): one of the first PEEK_FIELDS fields
# is found in the text (a few `find`s) rather than by splitting the segment (a string per field)
PEEK_FIELDS: Final = 5
# what a group statement reads: (segment index, field) pairs, a field number n > 0 meaning
# field n, 0 the whole segment text, -1 whether any of the segment's fields is valued
Projection = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    profile: str
    issues: tuple[Issue, ...]
    rejected: bool
    dropped_segments: frozenset[int]
    emptied_fields: frozenset[tuple[int, int]]


def _heads(g: GrammarNode) -> frozenset[str]:
    """Segment ids that may open an instance of group `g`.

    The children up to the first R one, plus every R segment child: an ORDER group can be
    recognised at its RXA when the ORC is missing (then reported as missing) instead of the
    RXA being misread as out of sequence.
    """
    heads: set[str] = set()
    for c in g.children:
        if c.segment:
            heads.add(c.segment)
        else:
            heads |= _heads(c)
        if c.usage == "R":
            break
    heads |= {c.segment for c in g.children if c.segment and c.usage == "R"}
    return frozenset(heads)


class _State:
    """Findings and data-handling decisions shared by the structure pass and the message run."""

    def __init__(self, ids: tuple[str, ...], seq: tuple[int, ...]) -> None:
        self.ids, self.seq = ids, seq
        self.found: list[tuple[tuple[int, int, int], Issue]] = []
        self.dropped: set[int] = set()
        self.rejected = False
        self.parent: dict[int, tuple[GroupNode, GrammarNode]] = {}  # id(group) -> parent
        self.root = GroupNode("")

    def loc(self, i: int, fld: int = 0, rep: int = 0, comp: int = 0) -> Location:
        return Location(self.ids[i], self.seq[i], fld, rep, comp)

    def add(self, key_idx: int, key_field: int, code: int, sev: Severity, loc: Location,
            text: str, app: int | None, rule: str) -> None:
        self.found.append(((key_idx, key_field, len(self.found)),
                           Issue(code, sev, loc, text, app, rule)))

    def _reject_instance(self, inst: GroupNode, key_idx: int) -> None:
        """A group instance lost a required member: drop it, and climb while it is R."""
        if inst is self.root:
            self.rejected = True
            return
        self.dropped.update(inst.segment_indexes())
        up = self.parent.get(id(inst))
        if up is not None and up[1].usage == "R" and up[1].min >= 1:
            parent_inst = up[0]
            if parent_inst is self.root:
                self.rejected = True
            else:
                self._reject_instance(parent_inst, key_idx)


class _Shape(_State):
    """Everything that follows from the sequence of segment ids alone, computed once per shape.

    Grammar placement, Z/sequence/X/missing-segment findings and the rejections they cause
    depend only on the ids, and a registry sees few distinct shapes (a VXU with 1-3 order
    groups...), so `Validator` keeps these by (profile, ids) and a message run starts from a
    copy instead of matching the grammar again. Work lists for the later passes (which
    segments to check with which rules, group instances, OBX numbering) are derived here too.
    """

    def __init__(self, v: Validator, p: CompiledProfile, ids: tuple[str, ...]) -> None:
        counts: dict[str, int] = {}
        seq = []
        for sid in ids:
            counts[sid] = counts.get(sid, 0) + 1
            seq.append(counts[sid])
        super().__init__(ids, tuple(seq))
        self.v, self.p = v, p
        self.placed: dict[int, tuple[GrammarNode, GroupNode]] = {}
        self.root = GroupNode(p.grammar.group)
        self._structure()
        self.found_t = tuple(self.found)
        self.dropped_f = frozenset(self.dropped)
        placed = sorted(self.placed.items())
        self.order = tuple(i for i, _ in placed)
        # (index, rules, plan) of every placed segment the field pass checks
        self.checks = tuple((i, p.segments[n.flavour], v.plans[p.id][n.flavour])
                            for i, (n, _g) in placed
                            if i not in self.dropped and n.flavour in p.segments)
        self.set_ids: dict[str, tuple[int, ...]] = {}
        for i, (n, _g) in placed:
            self.set_ids[n.flavour] = (*self.set_ids.get(n.flavour, ()), i)
        self.pid = next((i for i, (n, _g) in self.placed.items() if n.segment == "PID"), None)
        self.rxa_orc = tuple((i, n.segment, inst) for i, (n, inst) in placed
                             if n.segment in ("RXA", "ORC"))
        self.members: dict[int, tuple[int, ...]] = {}
        self.groups: list[tuple[GroupNode, tuple[Statement, ...]]] = []
        self._walk(p.grammar, self.root)
        # per group instance with statements: (instance, statements, structure signature,
        # per statement the fields it reads, its segment indexes)
        self.stated = tuple((inst, sts, *self._projections(inst, sts), self.indexes(inst))
                            for inst, sts in self.groups if sts)
        # group instance -> its number among the instances of its group under the same
        # parent instance (1, 2...), for the SetID statements of a group context (IZ-72:
        # PID-1 of each RSP PATIENT group)
        self.ordinals: dict[int, int] = {}
        numbered: dict[tuple[int, str], int] = {}
        for inst, _sts in self.groups:
            up = self.parent.get(id(inst))
            key = (id(up[0]) if up is not None else 0, inst.name)
            numbered[key] = self.ordinals[id(inst)] = numbered.get(key, 0) + 1
        # (index, statement, field, expected value) of the SetID statements checked natively
        self.natives = tuple(
            (i, st, st.target_first, str(self.set_ids[rules.flavour].index(i) + 1))
            for i, rules, _plan in self.checks for st in rules.statements
            if st.check is None and st.kind == "SetID")
        # per ORDER instance: (RXA index, OBX indexes) for IZ-24
        self.vis_parts: dict[int, tuple[int | None, tuple[int, ...]]] = {}
        for inst, _sts in self.groups:
            idx = self.indexes(inst)
            self.vis_parts[id(inst)] = (next((j for j in idx if ids[j] == "RXA"), None),
                                        tuple(j for j in idx if ids[j] == "OBX"))
        self.obx = tuple(i for i in self.order if ids[i] == "OBX")
        self.obx_restart = self._obx_restart()
        self.obx_plain = tuple(str(n) for n in range(1, len(self.obx) + 1))  # 1, 2, 3...
        self.orders = tuple(
            tuple(self.indexes(it) for it in self.root.children.get(ch.position, [])
                  if isinstance(it, GroupNode))
            for ch in p.grammar.children if ch.group in ("ORDER", "IZ_HISTORY_FORECAST"))

    def indexes(self, inst: GroupNode) -> tuple[int, ...]:
        """Sorted segment indexes of a group instance (memoised: the tree never changes)."""
        got = self.members.get(id(inst))
        if got is None:
            got = self.members[id(inst)] = tuple(inst.segment_indexes())
        return got

    def _walk(self, g: GrammarNode, inst: GroupNode) -> None:
        """Group instances in the order the statement pass visits them."""
        self.indexes(inst)
        self.groups.append((inst, self.p.group_statements.get(g.group, ())))
        for ch in g.children:
            for item in inst.children.get(ch.position, []):
                if isinstance(item, GroupNode):
                    self._walk(ch, item)

    def _projections(self, inst: GroupNode, sts: tuple[Statement, ...]
                     ) -> tuple[str, tuple[Projection | None, ...]]:
        """What a group statement's result depends on, for the validator's memo.

        A group statement reads fields of the instance's segments through NIST paths (child
        positions, then a field); its result is a pure function of the instance's structure
        (the signature: every segment's chain of (position, item number) and id) and of the
        texts of the fields its paths name: (segment index, field) pairs, field 0 meaning the
        whole segment text (a path that stops at a segment or group reads all of it).
        """
        chains: list[tuple[tuple[tuple[int, int], ...], int]] = []

        def walk(node: GroupNode, prefix: tuple[tuple[int, int], ...]) -> None:
            for pos in sorted(node.children):
                for k, item in enumerate(node.children[pos]):
                    if isinstance(item, GroupNode):
                        walk(item, (*prefix, (pos, k)))
                    else:
                        chains.append(((*prefix, (pos, k)), item))
        walk(inst, ())
        # a string: it caches its hash, which a nested tuple would recompute per look-up
        signature = repr(tuple((chain, self.ids[i]) for chain, i in chains))
        projections: list[Projection | None] = []
        for st in sts:
            if st.check is None:
                projections.append(None)
                continue
            reads: list[tuple[int, int]] = []
            for chain, i in chains:
                at = tuple(pos for pos, _k in chain)
                depth = len(at)
                fields: set[int] = set()
                whole = present = False
                for path in st.group_reads:
                    if path[:depth] == at and len(path) > depth:
                        fields.add(path[depth])
                    elif path[:depth] == at or at[:len(path)] == path:
                        # the path stops at this segment or at a group holding it
                        if path in st.group_presence:
                            present = True
                        else:
                            whole = True
                if whole:
                    reads.append((i, 0))
                    continue
                if present:
                    reads.append((i, -1))
                reads.extend((i, n) for n in sorted(fields))
            # a statement reading two fields or fewer costs about what its memo key would,
            # and such keys (ORC-3 in IZ-45...) rarely repeat: evaluated directly
            projections.append(tuple(reads) if len(reads) > 2 else None)
        return signature, tuple(projections)

    def _obx_restart(self) -> tuple[str, ...]:
        """NIST-01's per-group numbering of the OBX segments (OBX-1 restarting per group)."""
        expected = []
        last_group = None
        n = 0
        for i in self.obx:
            _node, inst = self.placed[i]
            order = self.parent.get(id(inst), (None, None))[0]
            if order is not last_group:
                n, last_group = 0, order
            n += 1
            expected.append(str(n))
        return tuple(expected)

    # -- structure -----------------------------------------------------------------------
    def _match(self, g: GrammarNode, seq: list[tuple[int, str]], pos: int, inst: GroupNode,
               placed: dict[int, tuple[GrammarNode, GroupNode]],
               parent: dict[int, tuple[GroupNode, GrammarNode]]) -> int:
        counts = [0] * len(g.children)
        ci = 0
        while pos < len(seq):
            idx, sid = seq[pos]
            hit = -1
            for k in range(ci, len(g.children)):
                ch = g.children[k]
                if ch.max and counts[k] >= ch.max:
                    continue
                if (ch.segment == sid) if ch.segment else (sid in self.v.heads[id(ch)]):
                    hit = k
                    break
            if hit < 0:
                return pos
            ch, ci = g.children[hit], hit
            if ch.segment:
                inst.add(ch.position, idx)
                placed[idx] = (ch, inst)
                pos += 1
            else:
                sub = GroupNode(ch.group)
                new = self._match(ch, seq, pos, sub, placed, parent)
                if new == pos:
                    return pos
                inst.add(ch.position, sub)
                parent[id(sub)] = (inst, ch)
                pos = new
            counts[hit] += 1
        return pos

    def _structure(self) -> None:
        active: list[tuple[int, str]] = []
        for i, sid in enumerate(self.ids):
            if i and sid.startswith("Z"):
                self.dropped.add(i)
                self.add(i, 0, ACCEPTED, INFO, self.loc(i),
                         f"{sid} is a local Z-segment not used by profile {self.p.id}: ignored",
                         DATA_IGNORED, "segment.Z")
            else:
                active.append((i, sid))
        known = self.v.ids[self.p.id]
        while True:
            root = GroupNode(self.p.grammar.group)
            placed: dict[int, tuple[GrammarNode, GroupNode]] = {}
            parent: dict[int, tuple[GroupNode, GrammarNode]] = {}
            pos = self._match(self.p.grammar, active, 0, root, placed, parent)
            if pos >= len(active):
                break
            i, sid = active.pop(pos)
            self.dropped.add(i)
            why = ("is out of sequence or repeated more often than allowed" if sid in known
                   else f"is not part of profile {self.p.id}")
            self.add(i, 0, SEGMENT_ERROR, W, self.loc(i), f"Segment {sid} {why}: ignored",
                     DATA_IGNORED, "segment.sequence")
        self.root, self.placed, self.parent = root, placed, parent
        for i, (node, _inst) in placed.items():
            if node.usage == "X":
                self.dropped.add(i)
                self.add(i, 0, SEGMENT_ERROR, W, self.loc(i),
                         f"Segment {node.segment} is not supported (usage X): ignored",
                         DATA_IGNORED, "usage.X")
        self._missing(self.p.grammar, root)

    def _missing(self, g: GrammarNode, inst: GroupNode) -> None:
        for ch in g.children:
            items = inst.children.get(ch.position, [])
            for item in items:
                if isinstance(item, GroupNode):
                    self._missing(ch, item)
            if len(items) >= max(ch.min, 1 if ch.usage == "R" else 0):
                continue
            before = [i for pos, its in inst.children.items() if pos < ch.position
                      for it in its for i in ([it] if isinstance(it, int)
                                              else it.segment_indexes())]
            anchor = max(before) if before else min(inst.segment_indexes() or [0])
            name = ch.segment or ch.group
            where = "message" if inst is self.root else f"group {g.group}"
            self.add(anchor, 10**6, SEGMENT_ERROR, E,
                     Location(ch.segment or (ch.children[0].segment if ch.children else "")),
                     f"Required {'segment' if ch.segment else 'group'} {name} is missing "
                     f"from the {where}", REQUIRED_DATA_MISSING, "segment.required")
            self._reject_instance(inst, anchor)


class _Run(_State):
    """The state of validating one message against one compiled profile."""

    def __init__(self, v: Validator, p: CompiledProfile, message: Message, today: date | None,
                 shape: _Shape) -> None:
        # _State's attributes, taken from the shape (its __init__ would build them anew)
        self.ids, self.seq = shape.ids, shape.seq
        self.v, self.p, self.today, self.shape = v, p, today, shape
        self.segs = message.segments
        self.found = list(shape.found_t)
        self.dropped = set(shape.dropped_f)
        self.rejected = shape.rejected
        self.placed, self.parent, self.root = shape.placed, shape.parent, shape.root
        self.emptied: set[tuple[int, int]] = set()
        self.r_empty: dict[int, int] = {}  # segment index -> first empty R field
        # segment index -> failing statements (plan.verdict); None: evaluate them here
        self.failing: dict[int, tuple[int, ...]] | None = None
        self.vis_due: dict[int, bool] = {}  # RXA index -> IZ-24 applies (see _rxa)

    def report(self, i: int, key_field: int, code: int, sev: Severity, at: tuple[int, int, int],
               text: str, app: int | None, rule: str) -> None:
        """`add` a finding at (field, repetition, component) `at` of segment `i`.

        Issues are immutable values, and a sender repeats its mistakes (the same empty field
        or missing component in every message), so one Issue per distinct finding is shared
        through the validator's bounded memo instead of being built anew (its Location too).
        """
        sid, seq = self.ids[i], self.seq[i]
        fld, rep, comp = at
        # the severity as flags: an Enum hashes through a Python-level __hash__
        key = (code, sev is E, sev is W, sid, seq, fld, rep, comp, text, app, rule)
        memo = self.v.issue_memo
        issue = memo.get(key)
        if issue is None:
            issue = Issue(code, sev, Location(sid, seq, fld, rep, comp), text, app, rule)
            remember(memo, key, issue, self.v.segment_memo)
        self.found.append(((i, key_field, len(self.found)), issue))

    # -- fields --------------------------------------------------------------------------
    def fields(self) -> None:
        segs = self.segs
        d = segs[0].delimiters
        if d is not DEFAULT_DELIMITERS and d != DEFAULT_DELIMITERS:
            for i, rules, _plan in self.shape.checks:
                self._segment(i, rules)
            return
        failing = self.failing = {}
        full = self.v.full_check
        for i, rules, plan in self.shape.checks:
            seg = segs[i]
            got = plan.memo.get(seg.raw)  # plan.verdict's first step, inlined
            clean, bad = got if got is not None else plan.verdict(seg.raw, seg.fields)
            if bad:
                failing[i] = bad
            if full:
                self._segment(i, rules)
            elif not clean:
                # only the fields that can have findings (the others pass their field test)
                suspects = plan.suspects(seg.raw, seg.fields)
                if suspects:
                    self._segment(i, rules, suspects)

    @staticmethod
    def _usage(rule: FieldRule | ComponentRule, context: list[str] | str, d: Delimiters,
               decisive: tuple[str, ...] = ("R", "X")) -> str:
        """The usage in force: a C element's predicate over its segment's fields (FieldRule)
        or over the raw repetition it is a component of (ComponentRule).

        The caller tells only the `decisive` usages apart from the others (a field check: R
        and X; a component check: R), so a predicate that yields none of them either way is
        not evaluated, and "O" stands for its outcome (as in the plans, which skip those).
        """
        if rule.usage != "C":
            return rule.usage
        if rule.predicate is None:
            return "O"
        cond, true_usage, false_usage = rule.predicate
        if true_usage not in decisive and false_usage not in decisive:
            return "O"
        return true_usage if cond(context, d) else false_usage

    def _segment(self, i: int, rules: SegmentRules,
                 only: tuple[FieldRule, ...] | None = None) -> None:
        """The full field-by-field check of segment `i`: of every field rule, or of `only`
        (a subsequence of `rules.fields`: the other fields would find nothing)."""
        seg = self.segs[i]
        d = seg.delimiters
        fields = seg.fields
        sid = seg.id
        count = len(fields)
        blank = d.component + d.subcomponent + d.repetition
        visit = rules.fields if only is None else only
        for r in visit:
            raw = fields[r.n] if 0 < r.n < count else ""  # seg.field(r.n)
            if not raw or (not raw.strip(blank) and not (sid == "MSH" and r.n <= 2)):
                # an empty field matters only if it is (or may become) R
                if r.usage not in ("R", "C"):
                    continue
                usage = self._usage(r, fields, d)
                if usage == "R":
                    rule = r.rule or RULE_ALIASES.get((sid, r.n)) or (
                        "usage.C" if r.usage == "C" else "usage.R")
                    self.report(i, r.n, REQUIRED_MISSING, E, (r.n, 0, 0),
                                f"{sid}-{r.n} ({r.name}) is required but empty"
                                + (": segment rejected" if sid != "MSH" else ""),
                                REQUIRED_DATA_MISSING, rule)
                    if sid != "MSH":
                        self.r_empty.setdefault(i, r.n)
                continue
            usage = self._usage(r, fields, d)
            if usage == "X":
                self.emptied.add((i, r.n))
                self.report(i, r.n, ACCEPTED, W, (r.n, 0, 0),
                            f"{sid}-{r.n} ({r.name}) is not supported (usage X): data ignored",
                            DATA_IGNORED, r.rule or "usage.X")
                continue
            if sid == "MSH" and r.n <= 2:
                continue
            reps = raw.split(d.repetition)
            if r.max and len(reps) > r.max:
                self.report(i, r.n, DATATYPE_ERROR, W, (r.n, r.max + 1, 0),
                            f"{sid}-{r.n} ({r.name}) allows {r.max} repetition(s), "
                            f"{len(reps)} sent: extra repetitions ignored", DATA_IGNORED,
                            "cardinality")
                reps = reps[:r.max]
            self._field(i, seg, r, usage, reps, rules)
        self._datatype_statements(i, seg, visit)

    def _field(self, i: int, seg: Segment, r: FieldRule, usage: str, reps: list[str],
               rules: SegmentRules) -> None:
        d = seg.delimiters
        sid = seg.id
        datatype = r.datatype
        comps = r.components
        if rules.dynamic is not None and r.n == rules.dynamic[0]:
            dyn = rules.dynamic[2].get(seg.value(rules.dynamic[1]))
            if dyn is None:
                return
            comps = self.p.datatypes.get(dyn, ())
            datatype = dyn.split("_")[0]
        for rep_no, rep in enumerate(reps, start=1):
            if not rep:
                continue
            bad: tuple[int, int, str, int] | None = None  # code, 0533, text, component
            if not comps:
                value = unescape(rep, d) if d.escape in rep else rep
                if r.maxlen and len(value) > r.maxlen:
                    self.report(i, r.n, DATATYPE_ERROR, W, (r.n, rep_no, 0),
                                f"{sid}-{r.n} ({r.name}) is longer than {r.maxlen} characters",
                                INVALID_VALUE, "length")
                fmt = FORMATS.get(datatype)
                if fmt is not None and not fmt[0](value):
                    bad = (DATATYPE_ERROR, fmt[1],
                           f"{sid}-{r.n} ({r.name}) is not a valid {datatype} value", 0)
                elif r.binding is not None and not r.binding(value.strip(), ""):
                    bad = (TABLE_VALUE, TABLE_NOT_FOUND,
                           f"{sid}-{r.n} ({r.name}) code '{_code(value)}' is not in "
                           f"{r.binding_id}", 0)
            else:
                bad = self._components(i, seg, r, rep_no, rep, comps)
                if bad is None and r.binding is not None:
                    cval = rep_leaf(rep, 1, 1, d)  # seg.value(r.n, 1, 1, rep_no)
                    system = rep_leaf(rep, 3, 1, d)
                    # a stray blank around a code is a typing slip, not another code
                    if cval.strip() and not r.binding(cval.strip(), system.strip()):
                        bad = (TABLE_VALUE, TABLE_NOT_FOUND,
                               f"{sid}-{r.n} ({r.name}) code '{_code(cval)}' is not in "
                               f"{r.binding_id}", 1)
            if bad is not None:
                code, app, text, comp = bad
                required = usage == "R" and sid != "MSH"
                if text:
                    self.report(i, r.n, code, E if required else W, (r.n, rep_no, comp),
                                text + ("" if required else ": data ignored"), app,
                                "valueset" if code == TABLE_VALUE else "datatype")
                self.empty_field(i, r.n, usage, code)
                return

    def _components(self, i: int, seg: Segment, r: FieldRule, rep_no: int, rep: str,
                    comps: tuple[ComponentRule, ...]) -> tuple[int, int, str, int] | None:
        """Component checks of repetition `rep_no` (raw text `rep`) of field `r`."""
        sid = seg.id
        d = seg.delimiters
        # seg.components(r.n, rep_no), from the repetition's text at hand
        parts = rep.split(d.component)
        if d.escape in rep:
            parts = [unescape(part, d) for part in parts]
        sub = d.subcomponent
        for c in comps:
            text = parts[c.n - 1] if c.n <= len(parts) else ""
            value = text.split(sub, 1)[0] if sub in text else text
            if not text.strip(sub):
                if c.usage not in ("R", "C"):
                    continue
                if self._usage(c, rep, d, ("R",)) == "R":
                    sev = _SEVERITIES[c.severity]
                    self.report(i, r.n, REQUIRED_MISSING, sev, (r.n, rep_no, c.n),
                                f"{sid}-{r.n}.{c.n} ({c.name}) is required when {sid}-{r.n} "
                                "is valued", REQUIRED_DATA_MISSING, c.rule)
                    if sev is E:
                        return (REQUIRED_MISSING, REQUIRED_DATA_MISSING, "", c.n)
                continue
            if c.maxlen and len(value) > c.maxlen:
                self.report(i, r.n, DATATYPE_ERROR, W, (r.n, rep_no, c.n),
                            f"{sid}-{r.n}.{c.n} ({c.name}) is longer than {c.maxlen} "
                            "characters", INVALID_VALUE, "length")
            fmt = FORMATS.get(c.datatype)
            if fmt is not None and not fmt[0](value):
                return (DATATYPE_ERROR, fmt[1],
                        f"{sid}-{r.n}.{c.n} ({c.name}) is not a valid {c.datatype} value", c.n)
            if c.binding is not None and not c.binding(value.strip(), ""):
                self.report(i, r.n, TABLE_VALUE, W, (r.n, rep_no, c.n),
                            f"{sid}-{r.n}.{c.n} ({c.name}) code '{_code(value)}' is not in "
                            f"{c.binding_id}", TABLE_NOT_FOUND, "valueset.component")
        return None

    def empty_field(self, i: int, fld: int, usage: str, code: int) -> None:
        """Treat a field as empty; for an R field, record the 101 step and reject the segment."""
        self.emptied.add((i, fld))
        sid = self.ids[i]
        if usage != "R" or sid == "MSH":
            return
        if code != REQUIRED_MISSING:
            self.report(i, fld, REQUIRED_MISSING, E, (fld, 0, 0),
                        f"{sid}-{fld} is required and now empty: segment rejected",
                        REQUIRED_DATA_MISSING, "propagation.field")
        self.r_empty.setdefault(i, fld)

    # -- statements ----------------------------------------------------------------------
    def _statement_issue(self, i: int, st: Statement, fld: int, comp: int = 0,
                         rep: int = 0) -> None:
        if st.kind == "Format":
            code, app = DATATYPE_ERROR, INVALID_DATE if "T" in st.id.split("-")[-1] else INVALID_VALUE
        elif st.kind in ("PlainText", "StringList", "ValueSet"):
            code, app = TABLE_VALUE, INVALID_VALUE
        else:
            code, app = APPLICATION_ERROR, ILLOGICAL_VALUE
        sid, seq = self.ids[i], self.seq[i]
        for _key, x in self.found:
            at = x.location
            if at.field == fld and at.sequence == seq and at.segment == sid and x.code in (
                    code, DATATYPE_ERROR):
                return  # the datatype check already said so
        self.report(i, fld, code, W, (fld, rep, comp), f"{st.id}: {st.description}", app,
                    st.id)

    def _datatype_statements(self, i: int, seg: Segment, visit: tuple[FieldRule, ...]
                             ) -> None:
        dts = self.p.datatype_statements
        if not dts:
            return
        d = seg.delimiters
        for r in visit:
            sts = dts.get(r.flavour)
            if not sts or (i, r.n) in self.emptied:
                continue
            for rep_no, rep in enumerate(seg.repetitions(r.n), start=1):
                for st in sts:
                    # check first: it passes far more often than the guard is false
                    if st.check is None or st.check(rep, d) or (
                            st.guard is not None and not st.guard(rep, d)):
                        continue
                    self._statement_issue(i, st, r.n, st.target_first, rep_no)

    def statements(self) -> None:
        segs, dropped = self.segs, self.dropped
        failing = self.failing
        if failing is not None and not failing:
            # clean so far: only the SetID statements are left (the shape lists them)
            leaf = self.leaf
            for i, st, fld, want in self.shape.natives:
                if leaf(segs[i], fld) not in ("", want):
                    self._statement_issue(i, st, fld)
            self._groups()
            return
        if failing is not None:
            # the plans already evaluated every checked statement (memoised per segment text)
            for i, rules, plan in self.shape.checks:
                bad = failing.get(i, ())
                if (not bad and not plan.native) or i in dropped:
                    continue
                for k, st in enumerate(rules.statements):
                    if st.check is None:
                        if st.kind == "SetID":
                            self._set_id(i, st, rules.flavour)
                    elif k in bad:
                        self._statement_issue(i, st, st.target_first)
            self._groups()
            return
        for i, rules, _plan in self.shape.checks:
            if i in dropped or not rules.statements:
                continue
            seg = segs[i]
            fields, d = seg.fields, seg.delimiters
            for st in rules.statements:
                if st.check is None:
                    if st.kind == "SetID":
                        self._set_id(i, st, rules.flavour)
                    continue
                # check first: it passes far more often than the guard is false
                if st.check(fields, d) or (st.guard is not None and not st.guard(fields, d)):
                    continue
                self._statement_issue(i, st, st.target_first)
        self._groups()

    def _set_id(self, i: int, st: Statement, flavour: str) -> None:
        fld = st.target_first
        want = str(self.shape.set_ids[flavour].index(i) + 1)
        if self.segs[i].value(fld) not in ("", want):
            self._statement_issue(i, st, fld)

    def _groups(self) -> None:
        dropped, segs = self.dropped, self.segs
        memos = self.v.group_memos if self.failing is not None else None
        for inst, sts, signature, projections, members in self.shape.stated:
            lost = not dropped.isdisjoint(members)
            for st, projection in zip(sts, projections, strict=True):
                if st.check is None or lost:
                    if st.kind == "IMPLY" and st.id == "IZ-24":
                        self._vis(inst)
                    elif st.kind == "SetID" and not lost:
                        self._group_set_id(inst, st)
                    continue
                if memos is None or projection is None:
                    ok = st.check(inst, segs)
                else:
                    # default delimiters: the result is a pure function of the structure and
                    # the texts read (see _Shape._projections), remembered per statement
                    texts = tuple([_read(segs[i], n) for i, n in projection])
                    key = (signature, texts)
                    memo = memos[id(st)]
                    got = memo.get(key)
                    if got is None:
                        got = st.check(inst, segs)
                        if sum(map(len, texts)) <= GROUP_TEXT:
                            remember(memo, key, got, self.v.field_memo)
                    ok = got
                if not ok:
                    i, fld = self._group_target(inst, st.target)
                    self._statement_issue(i, st, fld)
        self._obx_set_ids()

    def _group_set_id(self, inst: GroupNode, st: Statement) -> None:
        """A SetID statement of a group context: the target field of the n-th instance of
        the group is n (or empty)."""
        i, fld = self._group_target(inst, st.target)
        if fld and self.leaf(self.segs[i], fld) not in ("", str(self.shape.ordinals[id(inst)])):
            self._statement_issue(i, st, fld)

    def _group_target(self, inst: GroupNode, target: str) -> tuple[int, int]:
        steps = parse_path(target)
        cur: int | GroupNode = inst
        for k, (pos, _n) in enumerate(steps):
            assert isinstance(cur, GroupNode)
            items = cur.children.get(pos, [])
            if not items:
                break
            cur = items[0]
            if isinstance(cur, int):
                return cur, steps[k + 1][0] if k + 1 < len(steps) else 0
        idx = inst.segment_indexes()
        rxa = [j for j in idx if self.segs[j].id == "RXA"]
        return (rxa or idx or [0])[0], 0

    def _vis(self, inst: GroupNode) -> None:
        """IZ-24 (a NIST plug-in): administered VIS vaccines need their VIS OBX set."""
        rxa, obx = self.shape.vis_parts[id(inst)]
        if rxa is None or rxa in self.dropped:
            return
        due = self.vis_due.get(rxa)  # business._rxa's memo answered it for most doses
        if not (self._vis_due(self.segs[rxa]) if due is None else due):
            return
        obs = {self.obx(j)[1] for j in obx}
        if not ("29769-7" in obs and ("69764-9" in obs or {"30956-7", "29768-9"} <= obs)):
            self._vis_issue(rxa)

    def _vis_due(self, s: Segment) -> bool:
        """IZ-24's condition: RXA `s` is an administered (RXA-20 CP/PA, RXA-9 00) dose of a
        vaccine with a VIS (a pure function of RXA-5/9/20)."""
        leaf = self.leaf
        return (leaf(s, 20) in ("CP", "PA") and leaf(s, 9) == "00"
                and leaf(s, 5) in self.v.vis_vaccines)

    def _vis_issue(self, rxa: int) -> None:
        self.report(rxa, 10**5, APPLICATION_ERROR, W, (5, 0, 0),
                    "IZ-24: administered vaccine has no complete VIS observation set "
                    "(69764-9 + 29769-7, or 30956-7 + 29768-9 + 29769-7)",
                    6, "IZ-24")

    def _obx_set_ids(self) -> None:
        """NIST-01: OBX-1 numbered 1.. through the message or restarting in each group."""
        obx = self.shape.obx
        if not obx:
            return
        ids = tuple([self.obx(i)[0] for i in obx])
        if ids == self.shape.obx_plain:
            return
        for i, got, want in zip(obx, ids, self.shape.obx_restart, strict=True):
            if got and got != want:
                self.report(i, 1, APPLICATION_ERROR, W, (1, 0, 0),
                            "NIST-01: OBX-1 is not numbered sequentially from 1 "
                            "(per message or per group)", ILLOGICAL_VALUE, "NIST-01")
                return

    # -- business rules (Z22) ------------------------------------------------------------
    def business(self) -> None:
        if self.p.id != "Z22" or self.today is None:
            return
        pid = self.shape.pid
        dob = None
        if pid is not None and pid not in self.dropped and (pid, 7) not in self.emptied:
            s = self.segs[pid]
            dob = _to_date(self.leaf(s, 7))
            if dob is not None and dob > self.today:
                self.report(pid, 7, REQUIRED_MISSING, E, (7, 0, 0),
                            "Birth date (PID-7) is after today: patient rejected", ILLOGICAL_DATE,
                            "business.dob_future")
                self.empty_field(pid, 7, "R", REQUIRED_MISSING)
                dob = None
            death = _to_date(self.leaf(s, 29))
            if dob is not None and death is not None and death < dob:
                self.report(pid, 29, APPLICATION_ERROR, W, (29, 0, 0),
                            "Death date (PID-29) is before the birth date: ignored",
                            ILLOGICAL_DATE, "business.death_before_birth")
                self.emptied.add((pid, 29))
        for i, sid, inst in self.shape.rxa_orc:
            if i in self.dropped:
                continue
            if sid == "RXA":
                self._rxa(i, dob, inst)
            else:
                self._obx_subids(inst)

    def _rxa(self, i: int, dob: date | None, inst: GroupNode) -> None:
        s = self.segs[i]
        if (i, 3) not in self.emptied:
            when = _to_date(self.leaf(s, 3))
            if when is not None and self.today is not None and when > self.today:
                self.report(i, 3, REQUIRED_MISSING, E, (3, 0, 0),
                            "Vaccination date (RXA-3) is in the future: dose rejected",
                            ILLOGICAL_DATE, "business.vaccination_date_future")
                self.empty_field(i, 3, "R", REQUIRED_MISSING)
            elif when is not None and dob is not None and when < dob:
                self.report(i, 3, REQUIRED_MISSING, E, (3, 0, 0),
                            "Vaccination date (RXA-3) is before the birth date: dose rejected",
                            ILLOGICAL_DATE, "business.vaccination_before_birth")
                self.empty_field(i, 3, "R", REQUIRED_MISSING)
        if (i, 5) in self.emptied:
            return
        if self.failing is None:  # other delimiters: no memo
            cvx, status, mvx, ndc, vis = self._rxa_codes(s)
        else:
            # a pure function of RXA-5/9/17/20 (default delimiters); doses repeat codes
            f = s.fields
            key = (_field(f, 5), _field(f, 9), _field(f, 17), _field(f, 20))
            memo = self.v.rxa_memo
            got = memo.get(key)
            if got is None:
                got = self._rxa_codes(s)
                if sum(map(len, key)) <= FIELD_TEXT:
                    remember(memo, key, got, self.v.field_memo)
            cvx, status, mvx, ndc, vis = got
        self.vis_due[i] = vis
        if status:
            self.report(i, 5, APPLICATION_ERROR, E, (5, 1, 1),
                        f"RXA-5 CVX '{_code(cvx)}' is {status} and cannot be an administered "
                        "dose", INVALID_VALUE, "business.cvx_not_administrable")
            self.empty_field(i, 5, "R", APPLICATION_ERROR)
            return
        if mvx and (i, 17) not in self.emptied:
            if ndc:
                self.report(i, 17, APPLICATION_ERROR, W, (17, 1, 1),
                            f"RXA-17 manufacturer '{_code(mvx)}' is not the maker of RXA-5 NDC "
                            f"'{_code(ndc)}' ({self.v.tables.ndc_mvx[ndc][0]})",
                            ILLOGICAL_VALUE, "business.ndc_mvx_mismatch")
            else:
                self.report(i, 17, APPLICATION_ERROR, W, (17, 1, 1),
                            f"RXA-17 manufacturer '{_code(mvx)}' does not make CVX '{_code(cvx)}'",
                            ILLOGICAL_VALUE, "business.cvx_mvx_mismatch")

    def _rxa_codes(self, s: Segment) -> tuple[str, str, str, str, bool]:
        """(CVX, status when it cannot be administered, RXA-17 MVX when not its maker, NDC,
        whether IZ-24 wants a VIS set: see `_vis_due`).

        The NDC is returned (with the MVX) only when RXA-5 is an NDC whose CDC maker is known
        and RXA-17 names another company; then the CVX/MVX test is not made (the NDC names
        the product's maker; the CVX only a set of possible makers).
        """
        tables = self.v.tables
        vis = self._vis_due(s)
        code, system = s.value(5, 1), s.value(5, 3)
        cvx = tables.ndc.get(code, "") if system == "NDC" or code in tables.ndc else code
        administered = s.value(9) == "00" and s.value(20) in ("", "CP", "PA")
        status = tables.cvx.get(cvx, {}).get("status", "")
        if administered and status in ("Non-US", "Never Active"):
            return cvx, status, "", "", vis
        mvx = s.value(17, 1)
        if not mvx:
            return cvx, "", "", "", vis
        maker = tables.ndc_mvx.get(code)
        if maker is not None:
            return (cvx, "", "", "", vis) if mvx in maker[1] else (cvx, "", mvx, code, vis)
        allowed = tables.cvx_mvx.get(cvx)
        return cvx, "", mvx if allowed and mvx not in allowed else "", "", vis

    def leaf(self, s: Segment, n: int) -> str:
        """`s.value(n)`: quicker with default delimiters and no escape or repetition."""
        if self.failing is None:
            return s.value(n)
        if n <= PEEK_FIELDS and s.id != "MSH":
            raw = _peek(s.raw, n)
        else:
            f = s.fields
            if n >= len(f):
                return ""
            raw = f[n]
        if "\\" in raw or "~" in raw or (n <= 2 and s.id == "MSH"):
            return s.value(n)
        if "^" in raw:
            raw = raw[:raw.index("^")]
        return raw[:raw.index("&")] if "&" in raw else raw

    def obx(self, j: int) -> tuple[str, str, str]:
        """OBX-1, OBX-3 and OBX-4 values (`leaf`) of OBX segment `j`, remembered per segment
        text (default delimiters): funding and VIS OBX segments repeat verbatim."""
        s = self.segs[j]
        if self.failing is None:
            return s.value(1), s.value(3), s.value(4)
        memo = self.v.obx_memo
        got = memo.get(s.raw)
        if got is None:
            got = (self.leaf(s, 1), self.leaf(s, 3), self.leaf(s, 4))
            if len(s.raw) <= MEMO_TEXT:
                remember(memo, s.raw, got, self.v.segment_memo)
        return got

    def _obx_subids(self, order: GroupNode) -> None:
        seen: dict[tuple[str, str], int] = {}
        ids = self.ids
        for j in self.shape.indexes(order):
            if ids[j] != "OBX" or j in self.dropped:
                continue
            _n, obs, sub = self.obx(j)
            key = (obs, sub)
            if key[0] and key[1] and key in seen:
                self.report(j, 4, APPLICATION_ERROR, W, (4, 0, 0),
                            f"OBX-4 sub-id '{_code(key[1])}' repeats observation "
                            f"'{_code(key[0])}' in the same order group: sub-ids must differ",
                            ILLOGICAL_VALUE, "business.obx_duplicate_subid")
            seen[key] = j

    # -- propagation ---------------------------------------------------------------------
    def propagate(self) -> None:
        for i in sorted(self.r_empty):
            if i in self.dropped or i not in self.placed:
                continue
            node, inst = self.placed[i]
            sid = self.segs[i].id
            self.dropped.add(i)
            if node.usage != "R":
                continue  # an RE/O segment just disappears; its 101 said so
            if inst is self.root:
                self.rejected = True
                self.report(i, 10**6, SEGMENT_ERROR, E, (0, 0, 0),
                            f"{sid} is a required segment and was rejected: message rejected",
                            None, "propagation.segment")
                continue
            group = self.parent.get(id(inst), (None, None))[1]
            gname = group.group if group is not None else "group"
            self.report(i, 10**6, SEGMENT_ERROR, E, (0, 0, 0),
                        f"{sid} is a required segment of group {gname}: group rejected",
                        None, "propagation.segment")
            self._reject_instance(inst, i)
        # losing every ORDER group of a message that had some rejects the message
        if self.dropped:
            for items in self.shape.orders:
                if items and all(self.dropped.issuperset(it) for it in items):
                    self.rejected = True

    def result(self) -> ValidationResult:
        if not self.found and not self.dropped and not self.emptied and not self.rejected:
            return self.v.clean[self.p.id]
        overrides = self.v.overrides
        issues = []
        for _key, issue in sorted(self.found, key=lambda kv: kv[0]):
            sev = overrides.get(issue.rule)
            if sev is not None and sev != issue.severity:
                issue = Issue(issue.code, sev, issue.location, issue.text,
                              issue.application_code, issue.rule)
            issues.append(issue)
        return ValidationResult(self.p.id, tuple(issues), self.rejected,
                                frozenset(self.dropped), frozenset(self.emptied))


class _Unknown:
    """Marks a date text not yet in the memo (None is a remembered answer)."""


_UNKNOWN = _Unknown()
_DATES: dict[str, date | _Unknown | None] = {}


def _to_date(text: str) -> date | None:
    """`to_date`, remembered per text (bounded: FIELD_MEMO texts of at most 32 characters);
    birth and vaccination dates repeat across a registry's messages."""
    got = _DATES.get(text, _UNKNOWN)
    if not isinstance(got, _Unknown):  # .get, not `in` then [...]: another thread may clear
        return got
    got = to_date(text)
    if len(text) <= 32:
        remember(_DATES, text, got, FIELD_MEMO)
    return got


def _field(fields: list[str], n: int) -> str:
    return fields[n] if n < len(fields) else ""


def _read(seg: Segment, n: int) -> str:
    """What a group statement reads of a segment (`_Shape._projections`): field `n`, the
    whole text (0) or whether any field is valued (-1); default delimiters."""
    if n > 0:
        if n <= PEEK_FIELDS and seg.id != "MSH":
            return _peek(seg.raw, n)
        f = seg.fields
        return f[n] if n < len(f) else ""
    if n == 0:
        return seg.raw
    if seg.id == "MSH" or seg.delimiters.field != "|":
        return "1" if any(seg.fields[1:]) else ""
    # a field is valued when anything but field separators follows the id (rstrip: no copy
    # unless the text ends with a separator)
    return "1" if len(seg.raw.rstrip("|")) > 3 else ""


def _peek(raw: str, n: int) -> str:
    """Field `n` (> 0) of a segment text other than MSH, default delimiters: `fields[n]` (or
    "") without splitting the segment (see PEEK_FIELDS)."""
    at = 0
    for _ in range(n):
        at = raw.find("|", at) + 1
        if not at:
            return ""
    end = raw.find("|", at)
    return raw[at:] if end < 0 else raw[at:end]


def _code(value: str) -> str:
    """A code as quoted in an ERR text: short and printable (codes are not PHI; text could be)."""
    cleaned = "".join(ch for ch in value if ch.isprintable())
    return cleaned[:20] + ("..." if len(cleaned) > 20 else "")


class Validator:
    """All profiles compiled at start-up; `validate` is pure and never raises."""

    def __init__(self, profiles: Mapping[str, CompiledProfile], tables: CodeTables,
                 overlay: Overlay | None, overrides: Mapping[str, Severity],
                 *, full_check: bool = False) -> None:
        self.profiles = dict(profiles)
        # the reference the tests compare with: every segment through the full check of all
        # its fields, whatever the plans say (same results, only slower)
        self.full_check = full_check
        # memo sizes, read once (tests shrink them to clear the memos all the time)
        self.segment_memo, self.field_memo = SEGMENT_MEMO, FIELD_MEMO
        self.tables = tables
        self.overlay = overlay
        self.overrides = dict(overrides)
        self.heads: dict[int, frozenset[str]] = {}
        self.ids: dict[str, frozenset[str]] = {}
        for pid, p in self.profiles.items():
            self.ids[pid] = p.grammar.all_ids()
            stack = [p.grammar]
            while stack:
                g = stack.pop()
                if g.group:
                    self.heads[id(g)] = _heads(g)
                stack.extend(c for c in g.children if c.group)
        shared: dict[str, tuple[re.Pattern[str], dict[str, bool]]] = {}  # see build_plan
        self.plans: dict[str, dict[str, SegmentPlan]] = {
            pid: {flavour: build_plan(rules, p.datatypes, p.datatype_statements, shared)
                  for flavour, rules in p.segments.items()}
            for pid, p in self.profiles.items()}
        self._shapes: dict[str, _Shape] = {}  # per profile id + segment ids
        # the result of a message without findings (immutable: shared)
        self.clean = {pid: ValidationResult(pid, (), False, _NONE, _NONE_FIELDS)
                      for pid in self.profiles}
        # group statement results per (structure, texts read), one bounded memo per statement
        # (keyed by id: the statements live as long as the validator)
        self.group_memos: dict[int, dict[tuple[str, tuple[str, ...]], bool]] = {
            id(st): {} for p in self.profiles.values()
            for sts in p.group_statements.values() for st in sts}
        self.vis_vaccines = tables.sets.get("PHVS_VISVaccines_IIS", frozenset())  # IZ-24
        # business: RXA codes (and IZ-24's condition) per RXA-5/9/17/20 texts
        self.rxa_memo: dict[tuple[str, ...], tuple[str, str, str, str, bool]] = {}
        self.obx_memo: dict[str, tuple[str, str, str]] = {}  # OBX-1/3/4 values per OBX text
        # one shared Issue per distinct finding (`_Run.report`)
        self.issue_memo: dict[tuple[object, ...], Issue] = {}

    def _shape(self, p: CompiledProfile, message: Message) -> _Shape:
        # segment ids have 3 characters (the parser checks): their concatenation is a key
        # hashed and compared at once, where a tuple hashes every id (new strings) and
        # compares them one by one
        key = p.id + "/".join([seg.id for seg in message.segments])  # ids never hold "/"
        shape = self._shapes.get(key)
        if shape is None:
            shape = _Shape(self, p, tuple([seg.id for seg in message.segments]))
            if len(self._shapes) >= SHAPE_CACHE_SIZE:
                # arbitrary segment soup must not grow memory without bound; real traffic
                # refills the few shapes it uses at once
                self._shapes.clear()
            self._shapes[key] = shape
        return shape

    @classmethod
    def load(cls, profiles_dir: Path | None = None, overlay: str | None = "cair2",
             severity_overrides: Mapping[str, str] | None = None,
             *, full_check: bool = False) -> Validator:
        base = profiles_dir or Path(engine.__file__).resolve().parents[1] / "profiles"
        tables = load_tables(base)
        ov = load_overlay(base, overlay) if overlay else None
        compiled: dict[str, CompiledProfile] = {}
        for pid in INBOUND + OUTBOUND:
            data = json.loads((base / f"{pid}.json").read_text(encoding="utf-8"))
            compiled[pid] = compile_profile(data, tables, ov if pid in INBOUND else None)
        overrides = {k: Severity(v) for k, v in (severity_overrides or {}).items()}
        return cls(compiled, tables, ov, overrides, full_check=full_check)

    def pick_profile(self, message: Message) -> str:
        msh = message.msh
        raw = msh.field(9)
        if raw.startswith("VXU") and (len(raw) == 3 or raw[3] == msh.delimiters.component):
            return "Z22"  # MSH-9.1 is VXU (the common case, without the general look-up)
        mtype = msh.value(9, 1)
        if mtype == "VXU":
            return "Z22"
        declared = {msh.value(21, 1, 1, r) for r in range(1, len(msh.repetitions(21)) + 1)}
        if mtype == "QBP":
            for pid in ("Z44", "Z34"):
                if pid in declared:
                    return pid
            qpd = message.first("QPD")
            return "Z44" if qpd is not None and qpd.value(1, 1) == "Z44" else "Z34"
        if mtype == "ACK":
            return "Z23"
        if mtype == "RSP":
            for pid in ("Z31", "Z32", "Z33", "Z42"):
                if pid in declared:
                    return pid
            return "Z33"
        return ""

    def _run(self, message: Message, today: date | None, allowed: tuple[str, ...]
             ) -> ValidationResult:
        try:
            pid = self.pick_profile(message) if message.segments else ""
            if pid not in allowed:
                return ValidationResult(pid, (), False, frozenset(), frozenset())
            p = self.profiles[pid]
            run = _Run(self, p, message, today, self._shape(p, message))
            run.fields()
            run.business()
            run.statements()
            run.propagate()
            return run.result()
        except Exception:  # the validator must never take the pipeline down
            issue = Issue(207, E, Location("MSH", 1), "Validation could not complete",
                          None, "internal")
            return ValidationResult("", (issue,), False, frozenset(), frozenset())

    def validate(self, message: Message, today: date) -> ValidationResult:
        """Validate an inbound VXU (Z22) or QBP (Z34/Z44)."""
        return self._run(message, today, INBOUND)

    def validate_outbound(self, message: Message) -> ValidationResult:
        """Validate one of our responses (Z23/Z31/Z32/Z33/Z42) against the NIST profile."""
        return self._run(message, None, OUTBOUND)
