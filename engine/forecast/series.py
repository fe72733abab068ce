"""Selection of the best patient series of an antigen (spec chapter 8).

Owns pre-filtering, classification, scoring (complete / in-process / no valid doses) and the
choice of one or more best patient series across (equivalent) series groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from engine.forecast.dates import MAX_DATE
from engine.forecast.model import SeriesStatus

__all__ = ["ScoredSeries", "select_best"]


@dataclass(slots=True, eq=False)
class ScoredSeries:
    """What selection needs to know about one patient series and its forecast.

    Compared by identity: selection only asks whether a series is in a subset of the same
    objects, and field-wise equality made that the slowest step of selection.
    """

    key: int
    series_type: str
    series_group: str
    equivalent_groups: tuple[str, ...]
    priority: str
    preference: int
    default: bool
    product: bool
    status: str
    valid_count: int
    all_valid: bool
    first_valid_date: date | None
    max_age_to_start: date | None
    not_satisfied_count: int
    earliest: date | None
    finish_date: date | None
    last_max_age_date: date | None
    # False for a series without valid doses whose minimum age to start is still ahead.
    can_start: bool = True


def _is_risk(s: ScoredSeries) -> bool:
    return s.series_type.lower() == "risk"


def _is_standard(s: ScoredSeries) -> bool:
    return s.series_type.lower() == "standard"


def _is_eval_only(s: ScoredSeries) -> bool:
    return s.series_type.lower() == "evaluation only"


def _complete(s: ScoredSeries) -> bool:
    return s.status == SeriesStatus.COMPLETE


def _in_process(s: ScoredSeries) -> bool:
    return s.valid_count > 0 and s.status == SeriesStatus.NOT_COMPLETE


def _completable(s: ScoredSeries) -> bool:
    if s.finish_date is None:
        return s.status == SeriesStatus.NOT_COMPLETE
    return s.finish_date < (s.last_max_age_date or MAX_DATE)


def _scorable(group: Sequence[ScoredSeries]) -> list[ScoredSeries]:
    all_contra = all(s.status == SeriesStatus.CONTRAINDICATED for s in group)
    candidates = [s for s in group if s.status != SeriesStatus.CONTRAINDICATED or all_contra]
    # SELECTSCORE-2 keeps a risk series whose priority is the same as or greater than that of
    # the others in its series group (8.1: "only the set of highest priority patient series").
    # The priorities compared are those of series that are still a path to immunity: like a
    # Contraindicated series (SELECTB-24), a series the patient has aged out of (table 7-10,
    # "should not receive another dose") cannot be the series the patient follows, so it does
    # not shut out a lower-priority series that can still be given (e.g. the Meningococcal
    # 2-23 month infant series for an adult, who gets the priority-B 1-dose series). When every
    # risk series is aged out (or contraindicated), all of them are compared as before.
    live = [s for s in candidates if _is_risk(s) and s.status != SeriesStatus.AGED_OUT]
    best_priority = min((s.priority for s in (live or group)), default="A")
    no_valid = all(s.valid_count == 0 for s in group)
    has_default = any(s.default and s.can_start for s in group)
    out: list[ScoredSeries] = []
    for s in group:
        if _is_eval_only(s):
            if _complete(s):
                out.append(s)
            continue
        if s not in candidates:
            continue
        if _is_risk(s):
            if s.priority <= best_priority:
                out.append(s)
        elif _is_standard(s):
            if s.valid_count > 0 and s.first_valid_date is not None:
                if s.max_age_to_start is None or s.first_valid_date < s.max_age_to_start:
                    out.append(s)
            elif no_valid and not has_default and s.can_start:
                out.append(s)
    return out


def _points(values: Sequence[bool], unique: int, tie: int, other: int) -> list[int]:
    winners = sum(values)
    return [(unique if winners == 1 else tie) if v else other for v in values]


def _score(scored: Sequence[ScoredSeries], mode: str) -> list[int]:
    n = len(scored)
    totals = [0] * n
    most_valid = max(s.valid_count for s in scored)

    def add(points: Sequence[int]) -> None:
        for i, p in enumerate(points):
            totals[i] += p

    if mode == "complete":
        add(_points([s.valid_count >= most_valid for s in scored], 1, 0, -1))
        return totals
    if mode == "in-process":
        add([2 if (s.product and s.all_valid) else -2 for s in scored])
        add([3 if _completable(s) else -3 for s in scored])
        add(_points([s.valid_count >= most_valid for s in scored], 2, 0, -2))
        fewest = min(s.not_satisfied_count for s in scored)
        add(_points([s.not_satisfied_count <= fewest for s in scored], 2, 0, -2))
        finishes = [s.finish_date for s in scored if _completable(s) and s.finish_date]
        soonest = min(finishes) if finishes else None
        add(
            _points(
                [
                    _completable(s) and s.finish_date is not None and s.finish_date == soonest
                    for s in scored
                ],
                1,
                0,
                -1,
            )
        )
        return totals
    starts = [s.earliest for s in scored if s.earliest is not None]
    first = min(starts) if starts else None
    add(_points([s.earliest is not None and s.earliest == first for s in scored], 1, 0, -1))
    add([1 if _completable(s) else -1 for s in scored])
    add([-1 if s.product else 1 for s in scored])
    return totals


def _prioritized(group: Sequence[ScoredSeries]) -> ScoredSeries | None:
    scorable = _scorable(group)
    defaults = [s for s in group if s.default and s.can_start]
    if not scorable:
        return defaults[0] if len(defaults) == 1 else None
    if len(scorable) == 1:
        return scorable[0]
    complete = [s for s in scorable if _complete(s)]
    in_process = [s for s in scorable if _in_process(s)]
    if len(complete) == 1:
        return complete[0]
    if not complete and len(in_process) == 1:
        return in_process[0]
    if (
        not complete
        and not in_process
        and len(defaults) == 1
        and defaults[0] in scorable
        and all(s.valid_count == 0 for s in scorable)
    ):
        return defaults[0]
    if len(complete) >= 2:
        pool, mode = complete, "complete"
    elif len(in_process) >= 2:
        pool, mode = in_process, "in-process"
    elif all(s.valid_count == 0 for s in scorable):
        pool, mode = list(scorable), "none"
    else:
        pool, mode = list(scorable), "in-process"
    scores = _score(pool, mode)
    best = max(scores)
    tied = [s for s, score in zip(pool, scores, strict=True) if score == best]
    return min(tied, key=lambda s: s.preference)


def select_best(series: Sequence[ScoredSeries]) -> list[ScoredSeries]:
    """8.1-8.8: the best patient series of one antigen (one or more)."""
    groups: dict[str, list[ScoredSeries]] = {}
    for s in series:
        groups.setdefault(s.series_group, []).append(s)
    prioritized = {name: p for name, group in groups.items() if (p := _prioritized(group))}
    best: list[ScoredSeries] = []
    for name, p in prioritized.items():
        equivalents = [
            prioritized[g] for g in p.equivalent_groups if g != name and g in prioritized
        ]
        if _complete(p):
            best.append(p)
            continue
        if any(_complete(e) for e in equivalents) or _is_eval_only(p):
            continue
        standard_ok = _is_standard(p) and not any(_is_risk(e) for e in equivalents)
        if _is_risk(p) or standard_ok:
            best.append(p)
    return best
