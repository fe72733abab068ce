"""Evaluation of an immunization history against patient series (spec chapters 4-6).

Owns: organising the history by antigen (4.2), selecting relevant patient series (5.1),
conditional skip (6.2, shared with forecasting), and evaluating each antigen dose against
the target doses of a patient series (6.1-6.10).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from engine.forecast.dates import MAX_DATE, MIN_DATE, Offset, add_offset
from engine.forecast.model import AdministeredDose, EvaluationStatus, PatientFacts
from engine.forecast.schedule import (
    AgeRule,
    AllowableInterval,
    Antigen,
    AntigenSeries,
    Condition,
    ConditionalSkip,
    Interval,
    Schedule,
    SeriesDose,
    VaccineRule,
    _cvx_key,
)

__all__ = [
    "AntigenDose",
    "EvalContext",
    "SeriesEvaluation",
    "TargetDose",
    "antigen_doses",
    "can_skip",
    "evaluate_series",
    "is_relevant",
    "relevant_series",
]

SATISFIED = "Satisfied"
NOT_SATISFIED = "Not Satisfied"
SKIPPED = "Skipped"

REASON_TOO_YOUNG = "Too young"
REASON_TOO_OLD = "Too old"
REASON_TOO_SOON = "Too soon"
REASON_GRACE = "Grace period"
REASON_INADVERTENT = "Inadvertent Administration"
REASON_CONFLICT = "Live Virus Conflict"
REASON_NOT_PREFERABLE = "Not a preferable or allowable vaccine"
REASON_COMPLETE = "Series Already Complete"
REASON_SUBSTANDARD = "Sub-standard dose condition"

_GENDERS = {"F": "Female", "M": "Male", "U": "Unknown", "": "Unknown"}


@dataclass(frozen=True)
class AntigenDose:
    """An antigen administered record (4.2): one antigen of one administered dose."""

    index: int
    dose: AdministeredDose
    antigen: str
    cvx: str
    # The date administered, copied out of ``dose``: it is read in every comparison of the
    # evaluation, and an attribute is much cheaper than a property there.
    date: _dt.date = field(default=_dt.date.min, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "date", self.dose.date_administered)


@dataclass(frozen=True)
class EvalContext:
    """Patient-level inputs shared by every series of one forecast run."""

    patient: PatientFacts
    assessment_date: date
    schedule: Schedule
    all_doses: tuple[AntigenDose, ...]
    observation_codes: frozenset[str]
    observation_dates: Mapping[str, date]
    completed_series_groups: frozenset[tuple[str, str]] = frozenset()
    # Table 5-2 gender ("Female"/"Male"/"Unknown"), resolved once per forecast.
    gender: str = field(default="Unknown", init=False, compare=False)
    # Birth date + offset, memoised by offset value: this is the hottest calculation of a
    # forecast and the schedule repeats the same few dozen ages across its series.
    _ages: dict[Offset, date] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gender", _GENDERS.get(self.patient.gender.upper(), "Unknown"))

    def age_date(self, offset: Offset | None, default: date) -> date:
        if offset is None:
            return default
        value = self._ages.get(offset)
        if value is None:
            value = self._ages[offset] = add_offset(self.patient.birth_date, offset)
        return value


@dataclass(slots=True)
class TargetDose:
    """A target dose after evaluation: its series dose, status and satisfying dose.

    Treated as immutable (a new one replaces it on every status change) but not declared
    frozen: frozen dataclass construction is several times slower, and dozens are made per
    patient series.
    """

    series_dose: SeriesDose
    status: str
    satisfied_by: int | None = None


@dataclass(slots=True)
class DoseOutcome:
    """The evaluation of one antigen dose in one patient series (never mutated; see TargetDose)."""

    dose: AntigenDose
    status: str
    reasons: tuple[str, ...] = ()
    target_dose_number: int | None = None
    inadvertent: bool = False


@dataclass(frozen=True)
class SeriesEvaluation:
    """A relevant patient series after evaluating the antigen history (end of 4.4 step 1)."""

    antigen: str
    series: AntigenSeries
    targets: tuple[TargetDose, ...]
    outcomes: tuple[DoseOutcome, ...]

    @property
    def valid_count(self) -> int:
        return sum(1 for t in self.targets if t.status == SATISFIED)

    @property
    def next_target(self) -> int | None:
        for i, target in enumerate(self.targets):
            if target.status == NOT_SATISFIED:
                return i
        return None


def relevant(effective: date | None, cessation: date | None, anchor: date) -> bool:
    """RELEVANT-1/2: is a dated supporting-data instance in force at ``anchor``?"""
    return (effective or MIN_DATE) <= anchor <= (cessation or MAX_DATE)


def select_age(ages: Sequence[AgeRule], anchor: date) -> AgeRule | None:
    for age in ages:
        if relevant(age.effective_date, age.cessation_date, anchor):
            return age
    return None


def antigen_doses(
    doses: Sequence[AdministeredDose], birth_date: date, schedule: Schedule
) -> tuple[AntigenDose, ...]:
    """4.2: split doses into antigen records, sorted by antigen and date (stable)."""
    records: list[AntigenDose] = []
    cvx_map = schedule.cvx_by_code
    for index, dose in enumerate(doses):
        mapping = cvx_map.get(_cvx_key(dose.cvx))
        if mapping is None:
            continue
        for assoc in mapping.associations:
            begin = add_offset(birth_date, assoc.begin_age) if assoc.begin_age else MIN_DATE
            end = add_offset(birth_date, assoc.end_age) if assoc.end_age else MAX_DATE
            if begin <= dose.date_administered < end:
                records.append(AntigenDose(index, dose, assoc.antigen, _cvx_key(dose.cvx)))
    records.sort(key=lambda r: (r.antigen, r.date, r.index))
    return tuple(records)


def is_relevant(series: AntigenSeries, ctx: EvalContext) -> bool:
    """Tables 5-4/5-5: gender and (for risk series) an applicable indication."""
    if series.required_genders and ctx.gender not in series.required_genders:
        return False
    if series.series_type.lower() != "risk":
        return True
    for indication in series.indications:
        if indication.observation_code not in ctx.observation_codes:
            continue
        begin = ctx.age_date(indication.begin_age, MIN_DATE)
        end = ctx.age_date(indication.end_age, MAX_DATE)
        if begin <= ctx.assessment_date < end:
            return True
    return False


def relevant_series(antigen: Antigen, ctx: EvalContext) -> list[AntigenSeries]:
    return [series for series in antigen.series if is_relevant(series, ctx)]


# --- conditional skip (6.2 / 7.1 / 7.6) ----------------------------------------------------


def can_skip(
    series_dose: SeriesDose,
    ctx: EvalContext,
    context: str,
    reference: date,
    prior: Sequence[tuple[AntigenDose, str]],
    antigen: str = "",
) -> bool:
    """Table 6-11: can the target dose be skipped?

    ``prior`` is the antigen history before the reference point with each dose's evaluation
    status in this series; ``context`` is ``"evaluation"`` or ``"forecast"``.
    """
    for skip in series_dose.conditional_skips:
        if skip.context not in (context, "both"):
            continue
        if _skip_met(skip, ctx, reference, prior, antigen):
            return True
    return False


def _skip_met(
    skip: ConditionalSkip,
    ctx: EvalContext,
    reference: date,
    prior: Sequence[tuple[AntigenDose, str]],
    antigen: str,
) -> bool:
    results: list[bool] = []
    for cset in skip.sets:
        if not relevant(cset.effective_date, cset.cessation_date, reference):
            continue
        met = [_condition_met(c, ctx, reference, prior, antigen) for c in cset.conditions]
        if not met:
            continue
        results.append(any(met) if cset.condition_logic == "OR" else all(met))
    if not results:
        return False
    return all(results) if skip.set_logic == "AND" else any(results)


def _condition_met(
    cond: Condition,
    ctx: EvalContext,
    reference: date,
    prior: Sequence[tuple[AntigenDose, str]],
    antigen: str,
) -> bool:
    kind = cond.condition_type
    if kind == "age":
        begin = ctx.age_date(cond.begin_age, MIN_DATE)
        end = ctx.age_date(cond.end_age, MAX_DATE)
        return begin <= reference < end
    if kind == "interval":
        if not prior or cond.interval is None:
            return False
        return reference >= add_offset(prior[-1][0].date, cond.interval)
    if kind == "completed series":
        return any((antigen, group) in ctx.completed_series_groups for group in cond.series_groups)
    if kind.startswith("vaccine count"):
        begin = ctx.age_date(cond.begin_age, MIN_DATE)
        end = ctx.age_date(cond.end_age, MAX_DATE)
        start = cond.start_date or MIN_DATE
        stop = cond.end_date or MAX_DATE
        types = cond.type_keys
        count = 0
        for dose, status in prior:
            if types and dose.cvx not in types:
                continue
            if not (begin <= dose.date < end and start <= dose.date < stop):
                continue
            if cond.dose_type == "valid" and status != EvaluationStatus.VALID:
                continue
            count += 1
        target = cond.dose_count or 0
        logic = cond.dose_count_logic
        if logic.startswith("greater"):
            return count > target
        if logic.startswith("less"):
            return count < target
        return count == target
    return False


# --- dose evaluation (6.1-6.10) -------------------------------------------------------------


def _previous_reference(outcomes: Sequence[DoseOutcome]) -> DoseOutcome | None:
    """CALCDTINT-1: the most recent Valid/Not Valid, non-inadvertent dose."""
    for outcome in reversed(outcomes):
        if outcome.inadvertent:
            continue
        if outcome.status in (EvaluationStatus.VALID, EvaluationStatus.NOT_VALID):
            return outcome
    return None


def interval_reference(
    interval: Interval | AllowableInterval,
    ctx: EvalContext,
    current_date: date,
    outcomes: Sequence[DoseOutcome],
    targets: Sequence[TargetDose],
    by_index: Mapping[int, AntigenDose],
) -> date | None:
    """CALCDTINT-1/2/8/9: the reference date an interval is measured from (None: not applicable)."""
    if interval.from_previous:
        prev = _previous_reference(outcomes)
        return prev.dose.date if prev else None
    if interval.from_target_dose is not None:
        n = interval.from_target_dose - 1
        if 0 <= n < len(targets) and targets[n].satisfied_by is not None:
            dose = by_index.get(targets[n].satisfied_by)  # type: ignore[arg-type]
            return dose.date if dose else None
        return None
    if isinstance(interval, Interval):
        if interval.from_most_recent:
            types = interval.recent_keys
            inadvertent = {o.dose.index for o in outcomes if o.inadvertent}
            best: date | None = None
            for dose in ctx.all_doses:
                eligible = dose.cvx in types and dose.index not in inadvertent
                if eligible and dose.date < current_date and (best is None or dose.date > best):
                    best = dose.date
            return best
        if interval.from_relevant_obs:
            return ctx.observation_dates.get(interval.from_relevant_obs)
    return None


def _vaccine_ok(
    rules: Mapping[str, Sequence[VaccineRule]], dose: AntigenDose, ctx: EvalContext
) -> bool | None:
    """True: matches in age range; False: type matches but out of age range; None: no match."""
    found: bool | None = None
    for rule in rules.get(dose.cvx, ()):
        begin = ctx.age_date(rule.begin_age, MIN_DATE)
        end = ctx.age_date(rule.end_age, MAX_DATE)
        if begin <= dose.date < end:
            return True
        found = False
    return found


def _conflict(
    dose: AntigenDose,
    ctx: EvalContext,
    statuses: Mapping[int, str],
) -> bool:
    """6.7 / CONFLICT-3: is the dose impacted by an earlier conflicting vaccine?"""
    conflicts = ctx.schedule.conflicts_by_current.get(dose.cvx)
    if not conflicts:
        return False
    seen: set[int] = set()
    for other in ctx.all_doses:
        if other.index in seen or other.date >= dose.date:
            continue
        seen.add(other.index)
        conflict = conflicts.get(other.cvx)
        if conflict is not None:
            begin = add_offset(other.date, conflict.begin) if conflict.begin else other.date
            status = statuses.get(other.index)
            end_offset = (
                conflict.min_end
                if status is None or status == EvaluationStatus.VALID
                else conflict.end
            )
            end = add_offset(other.date, end_offset) if end_offset else other.date
            if begin <= dose.date < end:
                return True
    return False


def evaluate_series(
    antigen: str,
    series: AntigenSeries,
    doses: Sequence[AntigenDose],
    ctx: EvalContext,
) -> SeriesEvaluation:
    """Figure 4-6: walk target doses and antigen doses together."""
    series_doses = list(series.doses)
    targets: list[TargetDose] = [TargetDose(sd, NOT_SATISFIED) for sd in series_doses]
    outcomes: list[DoseOutcome] = []
    by_index = {d.index: d for d in doses}
    statuses: dict[int, str] = {}
    prior: list[tuple[AntigenDose, str]] = []
    t = 0
    for dose in doses:
        # 6.2: skip target doses whose skip conditions hold at this date administered.
        while t < len(targets) and can_skip(
            targets[t].series_dose, ctx, "evaluation", dose.date, prior, antigen
        ):
            targets[t] = TargetDose(targets[t].series_dose, SKIPPED)
            t += 1
        if t >= len(targets):
            outcome = DoseOutcome(dose, EvaluationStatus.EXTRANEOUS, (REASON_COMPLETE,))
            outcomes.append(outcome)
            prior.append((dose, outcome.status))
            statuses[dose.index] = outcome.status
            continue
        target = targets[t]
        outcome = _evaluate_dose(
            dose, target.series_dose, t, ctx, outcomes, targets, by_index, statuses
        )
        outcomes.append(outcome)
        prior.append((dose, outcome.status))
        statuses[dose.index] = outcome.status
        if outcome.status == EvaluationStatus.VALID:
            targets[t] = TargetDose(target.series_dose, SATISFIED, dose.index)
            if target.series_dose.recurring:
                targets.insert(t + 1, TargetDose(target.series_dose, NOT_SATISFIED))
            t += 1
    return SeriesEvaluation(antigen, series, tuple(targets), tuple(outcomes))


def _evaluate_dose(
    dose: AntigenDose,
    sd: SeriesDose,
    t: int,
    ctx: EvalContext,
    outcomes: Sequence[DoseOutcome],
    targets: Sequence[TargetDose],
    by_index: Mapping[int, AntigenDose],
    statuses: Mapping[int, str],
) -> DoseOutcome:
    number = t + 1
    if dose.dose.substandard:
        return DoseOutcome(dose, EvaluationStatus.SUBSTANDARD, (REASON_SUBSTANDARD,), number)
    if any(v.cvx_key == dose.cvx for v in sd.inadvertent_vaccines):
        return DoseOutcome(
            dose, EvaluationStatus.NOT_VALID, (REASON_INADVERTENT,), number, inadvertent=True
        )
    reasons: list[str] = []
    not_valid = False
    # 6.4 age
    age = select_age(sd.ages, dose.date)
    if age is not None:
        abs_min = ctx.age_date(age.abs_min_age, MIN_DATE)
        min_age = ctx.age_date(age.min_age, MIN_DATE)
        max_age = ctx.age_date(age.max_age, MAX_DATE)
        if dose.date < abs_min:
            reasons.append(REASON_TOO_YOUNG)
            not_valid = True
        elif dose.date >= max_age:
            return DoseOutcome(dose, EvaluationStatus.EXTRANEOUS, (REASON_TOO_OLD,), number)
        elif dose.date < min_age:
            reasons.append(REASON_GRACE)
    # 6.5 / 6.6 intervals
    preferable_ok = True
    grace = False
    for interval in sd.intervals:
        if not relevant(interval.effective_date, interval.cessation_date, dose.date):
            continue
        ref = interval_reference(interval, ctx, dose.date, outcomes, targets, by_index)
        if ref is None:
            continue
        abs_min_int = add_offset(ref, interval.abs_min_int) if interval.abs_min_int else MIN_DATE
        min_int = add_offset(ref, interval.min_int) if interval.min_int else MIN_DATE
        if dose.date < abs_min_int:
            preferable_ok = False
        elif dose.date < min_int:
            grace = True
    if not preferable_ok:
        allowable = [
            a
            for a in sd.allowable_intervals
            if relevant(a.effective_date, a.cessation_date, dose.date)
        ]
        allowable_ok = bool(allowable)
        for interval_a in allowable:
            ref = interval_reference(interval_a, ctx, dose.date, outcomes, targets, by_index)
            if ref is None:
                continue
            if interval_a.abs_min_int and dose.date < add_offset(ref, interval_a.abs_min_int):
                allowable_ok = False
        if not allowable_ok:
            reasons.append(REASON_TOO_SOON)
            not_valid = True
    elif grace and REASON_GRACE not in reasons:
        reasons.append(REASON_GRACE)
    # 6.7 conflicts
    if _conflict(dose, ctx, statuses):
        reasons.append(REASON_CONFLICT)
        not_valid = True
    # 6.8 / 6.9 vaccine
    preferable = _vaccine_ok(sd.preferable_by_cvx, dose, ctx)
    if preferable is not True:
        allowable_vaccine = _vaccine_ok(sd.allowable_by_cvx, dose, ctx)
        if allowable_vaccine is not True:
            reasons.append(REASON_NOT_PREFERABLE)
            not_valid = True
    status = EvaluationStatus.NOT_VALID if not_valid else EvaluationStatus.VALID
    return DoseOutcome(dose, status, tuple(reasons), number)
