"""The validator's memos never change a result: cold, warm and shuffled runs agree.

The fast path remembers pure checks per segment / field / group text (plan.SegmentPlan.verdict,
the group-statement, IZ-24, RXA-code and date memos). A wrong key (a statement reading a field
the key leaves out, two structures with one signature...) would make a result depend on what
was validated before; these tests validate the same batch in different orders and on fresh
and warm validators, and require identical results.
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
from tests.validation.messages import BASE_VXU, BASE_Z34, TODAY, edit

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
            for _n, _check, known in p.coded:
                assert len(known) <= plan_module.FIELD_MEMO
            for _reads, _pick, fails, _sts in p.statements:
                assert len(fails) <= plan_module.FIELD_MEMO
    for memo in v.group_memos.values():
        assert len(memo) <= plan_module.FIELD_MEMO
