"""The slow path (segments with findings) gives exactly the full check's results.

A segment the plans do not call clean is checked field by field, but only on its suspects
(`plan.SegmentPlan.suspects`): the fields whose field test fails, the conditional fields
whose predicate is broken, OBX-5 when OBX-2's type does not pass, and what no field test
settles. Skipping the others is only right if the full check would find nothing there, so
these tests compare, on the NIST/CDC corpus (../shared, skipped when absent) and on mutations
of it that put findings in every field, the validator with a reference validator that sends
every segment through the full check of all its fields (`Validator.load(full_check=True)`):
issues (order, codes, severities, locations, texts, rules), rejection, dropped segments and
emptied fields must all be identical.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest

from bench.validate import corpus
from engine.hl7.er7 import parse
from engine.validation import ValidationResult, Validator
from engine.validation import plan as plan_module
from engine.validation import validator as validator_module
from tests.validation.messages import BASE_VXU, BASE_Z34, TODAY, planned_segments

CORPUS = [data.decode("utf-8", errors="replace") for data in corpus()]
needs_corpus = pytest.mark.skipif(not CORPUS, reason="../shared/messages is not present")

# Replacement values for a whole field: findings of every kind (required field emptied,
# blank, format, length, repetitions, escapes, a leap day, X fields valued...).
VALUES = ("", "^^", "&&^&", "~~", "20250230", "19000229", "2024022912", "\\F\\x^y",
          "1" * 300, "A^" * 40, "x~y~z~w~v~u", "ZZZ^Bad code^HL70001",
          "a&b&c^d&e^f&g^h~i", "-1.5e3", "0")


def _lines(text: str) -> list[str]:
    return text.strip("\r\n").replace("\n", "\r").split("\r")


def _mutations(text: str, rnd: random.Random, per_segment: int) -> Iterator[str]:
    """`text` with one field of one segment changed: each field emptied, over-long, its
    code replaced by one in no value set (the first component of a composite, the whole of a
    primitive; and a composite's fifth component), each empty field valued, plus
    `per_segment` random replacements from VALUES per segment."""
    lines = _lines(text)
    for k, line in enumerate(lines):
        parts = line.split("|")
        first = 2 if parts[0] == "MSH" else 1  # MSH-1/2 are the delimiters
        for f in range(first, len(parts) + 2):
            mutated = parts + [""] * (f + 1 - len(parts))
            old = mutated[f]
            choices: list[str] = []
            if old:
                choices.append("")  # emptied
                choices.append(old + "X" * 250)  # over-long
                if "^" in old:
                    choices.append("BADCODE" + old[old.index("^"):])  # a code not in its set
                    comps = old.split("^")
                    if len(comps) > 4:
                        comps[4] = "NOPE"
                        choices.append("^".join(comps))
                else:
                    choices.append("ZZ")
            elif f < len(parts) or k % 4 == 0:
                choices.append(rnd.choice(VALUES[1:]))  # an empty or absent field valued
            for value in choices:
                mutated[f] = value
                yield "\r".join([*lines[:k], "|".join(mutated), *lines[k + 1:]]) + "\r"
        for _ in range(per_segment):
            f = rnd.randrange(first, len(parts) + 1)
            mutated = [*parts, ""]
            mutated[f] = rnd.choice(VALUES)
            yield "\r".join([*lines[:k], "|".join(mutated), *lines[k + 1:]]) + "\r"


def _batch() -> list[str]:
    rnd = random.Random(20250601)
    out = list(CORPUS)
    for text in CORPUS:
        muts = list(_mutations(text, rnd, 2))
        # a few thousand validations in all: a sample of each message's mutations
        out += rnd.sample(muts, min(len(muts), 90))
    for text in (BASE_VXU, BASE_Z34):
        out += list(_mutations(text, rnd, 3))
    return out


def _validate(v: Validator, text: str) -> ValidationResult:
    return v.validate(parse(text), TODAY)


@pytest.fixture(scope="module")
def reference() -> Validator:
    return Validator.load(full_check=True)


@needs_corpus
def test_corpus_and_mutations_match_the_full_check(reference: Validator) -> None:
    """For every corpus message and every mutation, cold and warm (memos answering the
    second, reversed pass), the result equals the full check's: issues in the same order
    with the same codes, severities, locations, texts and rules, same rejection, same dropped
    segments and emptied fields."""
    texts = _batch()
    expected = [_validate(reference, t) for t in texts]
    v = Validator.load()
    for order in (range(len(texts)), reversed(range(len(texts)))):
        for k in order:
            got = _validate(v, texts[k])
            assert got == expected[k], texts[k]
    assert sum(1 for r in expected if r.issues) > len(texts) // 2  # findings were exercised
    assert any(r.rejected for r in expected) and any(r.emptied_fields for r in expected)


@needs_corpus
def test_results_survive_suspect_memo_clearing(monkeypatch: pytest.MonkeyPatch,
                                               reference: Validator) -> None:
    """With tiny memo bounds (memos cleared all the time) the results do not change."""
    texts = _batch()[::7]
    expected = [_validate(reference, t) for t in texts]
    monkeypatch.setattr(plan_module, "SEGMENT_MEMO", 2)
    monkeypatch.setattr(plan_module, "FIELD_MEMO", 2)
    monkeypatch.setattr(validator_module, "SEGMENT_MEMO", 2)  # the Issue memo
    v = Validator.load()
    assert [_validate(v, t) for t in texts] == expected
    assert [_validate(v, t) for t in texts] == expected


def test_mutated_samples_match_the_full_check(reference: Validator) -> None:
    """Without the corpus too: mutations of the synthetic VXU and QBP agree with the full
    check."""
    rnd = random.Random(3)
    texts = [m for base in (BASE_VXU, BASE_Z34) for m in _mutations(base, rnd, 4)]
    v = Validator.load()
    for text in texts:
        assert _validate(v, text) == _validate(reference, text), text


def test_suspects_are_the_fields_with_findings() -> None:
    """Per segment: the full check of a non-clean segment's suspects finds, empties and
    rejects exactly what the full check of all its fields does, and the suspects keep the
    order of the segment's field rules."""
    v = Validator.load()
    rnd = random.Random(7)
    texts = [*CORPUS[::3]]
    for base in (BASE_VXU, BASE_Z34):
        texts += list(_mutations(base, rnd, 2))
    checked = 0
    for text in texts:
        for s in planned_segments(v, text):
            if s.clean:
                continue
            suspects = s.plan.suspects(s.segment.raw, s.segment.fields)
            assert [r for r in s.rules.fields if r in suspects] == list(suspects)
            full = validator_module._Run(v, s.profile, s.message, TODAY, s.shape)
            full._segment(s.index, s.rules)
            part = validator_module._Run(v, s.profile, s.message, TODAY, s.shape)
            part._segment(s.index, s.rules, suspects)
            assert ([x for _k, x in part.found] == [x for _k, x in full.found]
                    and part.emptied == full.emptied and part.r_empty == full.r_empty), (
                text, s.index)
            checked += 1
    assert checked


def test_suspect_and_issue_memos_stay_bounded() -> None:
    """The per-segment memo of suspects and the validator's Issue memo are cleared when
    full, like the other memos."""
    v = Validator.load()
    lines = _lines(BASE_VXU)
    for n in range(3 * plan_module.SEGMENT_MEMO):
        pid = lines[1].split("|")
        pid[7] = f"2020{n:04d}"  # a new (and mostly invalid) birth date: PID not clean
        orc = lines[4].split("|")
        orc[10] = f"^^^^^^^^^^^^CODE{n}"  # a new wrong code (quoted in its finding)
        text = "\r".join([lines[0], "|".join(pid), *lines[2:4], "|".join(orc), *lines[5:]])
        assert _validate(v, text + "\r").issues
    sizes = [len(p.suspect_memo) for plans in v.plans.values() for p in plans.values()]
    assert 0 < max(sizes) <= plan_module.SEGMENT_MEMO
    assert 0 < len(v.issue_memo) <= plan_module.SEGMENT_MEMO


def _other_delimiters(text: str) -> str | None:
    """The same message with '#' as its subcomponent separator (None if '#' is in use):
    escapes name delimiters symbolically (\\T\\), so a plain swap re-encodes it exactly."""
    head = "MSH|^~\\&"
    if "#" in text or not text.startswith(head):
        return None
    return "MSH|^~\\#" + text[len(head):].replace("&", "#")


def _comparable(result: ValidationResult, *, swapped: bool) -> ValidationResult:
    """A result with the texts read back to '&' and IZ-13 (MSH-2 is exactly ^~\\&) left out,
    the one finding the other delimiters rightly add."""
    issues = tuple(
        dataclasses.replace(i, text=i.text.replace("#", "&")) if swapped else i
        for i in result.issues if i.rule != "IZ-13")
    return dataclasses.replace(result, issues=issues)


def test_results_do_not_depend_on_the_delimiters() -> None:
    """An independent reference for everything the fast paths share with the full check
    (plans, statement memos, field peeks, the Issue memo, the profile and shape short cuts):
    with other delimiters none of them is used, so the corpus, the samples and their
    mutations must get the same findings, rejections and emptied fields either way."""
    v = Validator.load()
    rnd = random.Random(20261206)
    texts = [*CORPUS, BASE_VXU, BASE_Z34]
    texts += rnd.sample(_batch(), 1500)
    compared = 0
    for text in texts:
        alt = _other_delimiters(text)
        if alt is None:
            continue
        default = _comparable(_validate(v, text), swapped=False)
        other = _comparable(_validate(v, alt), swapped=True)
        assert default == other, text
        compared += 1
    assert compared > 1000
