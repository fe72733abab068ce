"""The validator's memos never change a result: cold, warm and shuffled runs agree.

The fast path remembers pure checks per segment / field / component / group text
(plan.SegmentPlan.verdict and its field, composite, statement-group and outcome memos; the
group-statement, RXA-code, OBX and date memos). A wrong key (a statement or predicate reading
a field the key leaves out, two structures with one signature...) would make a result depend
on what was validated before; these tests validate the same batch in different orders and on
fresh and warm validators, and require identical results, and check that whatever the plans
call clean passes the full field-by-field check.
"""

from __future__ import annotations

import random

import pytest

from bench.vxu import make_messages
from engine.errors import Issue
from engine.hl7.er7 import parse
from engine.validation import ValidationResult, Validator
from engine.validation import plan as plan_module
from engine.validation import validator as validator_module
from tests.store.messages import Dose, vxu
from tests.validation.messages import BASE_VXU, BASE_Z34, TODAY, edit, planned_segments

GARBAGE = ("", "ZZZ^ZZ^ZZ", "20250230", "\\F\\x", "~~", "&&^^", "CP", "RE", "00", "01",
           "V02^x^HL70064", "20300101", "19000101", "08^x^CVX~20^y^CVX", "X" * 600)


def _batch() -> list[str]:
    """Clean messages plus field-by-field mutations of them (findings of every kind)."""
    out = [BASE_VXU, BASE_Z34, vxu("C1"),
           vxu("C2", doses=(Dose(obx=("VFC",)), Dose(key="K2", refusal=True))),
           vxu("C3", doses=(Dose(cvx="998", source="01"), Dose(key="", cvx="140")))]
    out += [m.decode() for m in make_messages(30, "MEMO")]
    # RXA code rules (RXA-5/9/17/20 memo): NDC and CVX doses, matching / other / no maker
    for rxa5 in ("58160-0820-11^Engerix-B^NDC", "58160082011^Engerix-B^NDC",
                 "58160-0820-11^Engerix-B", "99999-9999-99^x^NDC", "08^Hep B^CVX"):
        for rxa17 in ("SKB^GSK^MVX", "MSD^Merck^MVX", "PFR^Pfizer^MVX", ""):
            for rxa9, rxa20 in (("00^New^NIP001", "CP"), ("01^Historical^NIP001", "")):
                out.append(edit(BASE_VXU, ("RXA", 5, rxa5), ("RXA", 17, rxa17),
                                ("RXA", 9, rxa9), ("RXA", 20, rxa20)))
    rnd = random.Random(11)
    for base in (BASE_VXU, BASE_Z34, out[5]):
        lines = base.strip("\r").split("\r")
        for k, line in enumerate(lines[1:], start=1):
            parts = line.split("|")
            for f in rnd.sample(range(1, len(parts) + 1), min(6, len(parts))):
                mutated = [*parts, ""]
                mutated[f] = rnd.choice(GARBAGE)
                out.append("\r".join([*lines[:k], "|".join(mutated), *lines[k + 1:]]) + "\r")
    return out


def _key(r: ValidationResult) -> tuple[object, ...]:
    def issue(i: Issue) -> tuple[object, ...]:
        return (i.code, i.severity, i.location, i.text, i.application_code, i.rule)
    return (r.profile, tuple(issue(i) for i in r.issues), r.rejected,
            sorted(r.dropped_segments), sorted(r.emptied_fields))


def _run(v: Validator, texts: list[str], order: list[int]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [()] * len(texts)
    for k in order:
        out[k] = _key(v.validate(parse(texts[k]), TODAY))
    return out


def test_cold_warm_and_shuffled_runs_agree() -> None:
    texts = _batch()
    order = list(range(len(texts)))
    shuffled = order[:]
    random.Random(5).shuffle(shuffled)
    v = Validator.load()
    cold = _run(v, texts, order)
    assert _run(v, texts, order) == cold  # warm memos
    assert _run(v, texts, shuffled) == cold
    assert _run(Validator.load(), texts, shuffled) == cold  # cold, other order
    assert any(r[1] for r in cold) and any(not r[1] for r in cold)


def test_results_survive_memo_clearing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny bounds clear the memos all the time; results must not change."""
    texts = _batch()
    order = list(range(len(texts)))
    expected = _run(Validator.load(), texts, order)
    monkeypatch.setattr(plan_module, "SEGMENT_MEMO", 2)
    monkeypatch.setattr(plan_module, "FIELD_MEMO", 2)
    monkeypatch.setattr(validator_module, "FIELD_MEMO", 2)
    monkeypatch.setattr(validator_module, "SEGMENT_MEMO", 2)
    v = Validator.load()
    assert _run(v, texts, order) == expected
    assert _run(v, texts, order[::-1]) == expected


def test_memos_stay_bounded() -> None:
    v = Validator.load()
    for m in make_messages(3 * plan_module.SEGMENT_MEMO, "BOUND"):
        v.validate(parse(m.decode()), TODAY)
    for plans in v.plans.values():
        for p in plans.values():
            assert len(p.memo) <= plan_module.SEGMENT_MEMO
            assert len(p.outcomes) <= plan_module.FIELD_MEMO
            for test in p.fields:
                assert len(test.known) <= plan_module.FIELD_MEMO
            for _reads, _pick, fails, _sts, _conds in p.statements:
                assert len(fails) <= plan_module.FIELD_MEMO
    for memo in v.group_memos.values():
        assert len(memo) <= plan_module.FIELD_MEMO
    assert len(v.rxa_memo) <= plan_module.FIELD_MEMO
    assert len(v.obx_memo) <= plan_module.SEGMENT_MEMO


def test_plan_clean_means_the_full_check_finds_nothing() -> None:
    """The plans are a conservative filter: a segment they call clean (per-field patterns,
    coded tests, conditional fields, all memoised) must pass the field-by-field check."""
    v = Validator.load()
    texts = _batch()
    seen_clean = seen_dirty = 0
    for text in texts + texts:  # the second pass answers from warm memos
        for s in planned_segments(v, text):
            run = validator_module._Run(v, s.profile, s.message, TODAY, s.shape)
            before = len(run.found)
            run._segment(s.index, s.rules)
            full_clean = len(run.found) == before and not run.emptied and not run.r_empty
            if s.clean:
                seen_clean += 1
                assert full_clean, (text, s.index)
            else:
                seen_dirty += 1
    assert seen_clean and seen_dirty


def test_component_memo_keys_keep_what_the_tests_read() -> None:
    """Composite tests are remembered per the components they read (EI/HD: namespace, OID,
    type, and whether the conditional ones are valued): variants that differ only there must
    get their own answers, in any order."""
    orc3 = ("X1^EHR", "X2^EHR", "X3^^2.16.840.1.113883.1^ISO", "X4^^2.16.840.1.113883.1",
            "X5^^not-an-oid^ISO", "X6^EHR^2.16.840.1.113883.1^ISO", "X7", "^EHR", "X8^^^ISO",
            "X9^EHR&x", "X10^^2.16.840.1.113883.1^L", "&&^EHR", "X11^EHR~X12^EHR")
    msh4 = ("ORG1", "ORG2^2.16.840.1.113883.1^ISO", "^2.16.840.1.113883.1^ISO", "^bad^ISO",
            "ORG3^^ISO", "^2.16.840.1.113883.1", "ORG4^2.16.840.1.113883.1^L")
    texts = [edit(BASE_VXU, ("ORC", 3, v)) for v in orc3]
    texts += [edit(BASE_VXU, ("MSH", 4, v)) for v in msh4]
    texts += [edit(BASE_VXU, ("ORC", 3, a), ("MSH", 4, b)) for a in orc3[:4] for b in msh4[:3]]
    cold = [_key(Validator.load().validate(parse(t), TODAY)) for t in texts]
    v = Validator.load()
    order = list(range(len(texts)))
    assert _run(v, texts, order) == cold
    assert _run(v, texts, order[::-1]) == cold
    assert len(set(map(str, cold))) > 3  # the variants do differ
