"""Forecasting (spec chapters 7 and 9) and the public :func:`forecast` entry point.

Owns the per-patient-series forecast (conditional skip at assessment, immunity,
contraindications, forecast need, forecast dates, recommended vaccines, validation of the
recommendation), the wiring of best-series selection, and vaccine group forecasts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from engine.forecast.dates import MAX_DATE, MIN_DATE, Offset, add_offset
from engine.forecast.evaluate import (
    NOT_SATISFIED,
    SATISFIED,
    SKIPPED,
    AntigenDose,
    DoseOutcome,
    EvalContext,
    SeriesEvaluation,
    TargetDose,
    antigen_doses,
    can_skip,
    evaluate_series,
    interval_reference,
    relevant,
    relevant_series,
    select_age,
)
from engine.forecast.model import (
    AdministeredDose,
    AntigenForecast,
    DoseEvaluation,
    EvaluationStatus,
    ForecastResult,
    PatientFacts,
    SeriesStatus,
    VaccineGroupForecast,
)
from engine.forecast.schedule import (
    Antigen,
    AntigenSeries,
    Schedule,
    VaccineGroup,
    VaccineRule,
    _cvx_key,
    default_schedule,
)
from engine.forecast.series import ScoredSeries, select_best

__all__ = ["SeriesForecast", "forecast"]

ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class SeriesForecast:
    """A patient series forecast (chapter 7) made from one evaluated patient series."""

    evaluation: SeriesEvaluation
    status: str
    targets: tuple[TargetDose, ...]
    target_index: int | None = None
    dose_number: int | None = None
    earliest: date | None = None
    recommended: date | None = None
    past_due: date | None = None
    latest: date | None = None
    unadjusted_recommended: date | None = None
    unadjusted_past_due: date | None = None
    recommended_cvx: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    priority: bool = False
    finish_date: date | None = None


@dataclass(frozen=True)
class _AntigenFacts:
    immune: bool
    contraindicated: bool
    contraindicated_cvx: frozenset[str]


def _antigen_facts(antigen: Antigen, ctx: EvalContext) -> _AntigenFacts:
    codes = ctx.observation_codes
    immune = any(code in codes for code in antigen.immunity_codes)
    for rule in antigen.birth_date_immunity:
        # Table 7-3: a required country of birth is unknown to us, so it cannot grant immunity.
        if rule.birth_country:
            continue
        if ctx.patient.birth_date < rule.immunity_birth_date and not any(
            code in codes for code in rule.exclusion_codes
        ):
            immune = True
    contraindicated = False
    for ci in antigen.antigen_contraindications:
        if ci.observation_code in codes and _in_age(ci.begin_age, ci.end_age, ctx):
            contraindicated = True
    cvx: set[str] = set()
    for ci in antigen.vaccine_contraindications:
        if ci.observation_code not in codes or not _in_age(ci.begin_age, ci.end_age, ctx):
            continue
        for vaccine in ci.vaccines:
            if _in_age(vaccine.begin_age, vaccine.end_age, ctx):
                cvx.add(_cvx_key(vaccine.cvx))
    return _AntigenFacts(immune, contraindicated, frozenset(cvx))


def _in_age(begin: Offset | None, end: Offset | None, ctx: EvalContext) -> bool:
    return ctx.age_date(begin, MIN_DATE) <= ctx.assessment_date < ctx.age_date(end, MAX_DATE)


def _forecast_dose_number(targets: Sequence[TargetDose], by_index: dict[int, AntigenDose]) -> int:
    count = 0
    for target in targets:
        if target.status != SATISFIED:
            continue
        start = target.series_dose.season_start
        if start is not None and target.satisfied_by is not None:
            dose = by_index.get(target.satisfied_by)
            if dose is not None and dose.date < start:
                continue
        count += 1
    return count + 1


def _doses_of(f: SeriesForecast) -> dict[int, AntigenDose]:
    return {o.dose.index: o.dose for o in f.evaluation.outcomes}


def forecast_series(ev: SeriesEvaluation, ctx: EvalContext, facts: _AntigenFacts) -> SeriesForecast:
    """Chapter 7 for one evaluated patient series."""
    targets = list(ev.targets)
    prior = [(o.dose, o.status) for o in ev.outcomes]
    by_index = {o.dose.index: o.dose for o in ev.outcomes}
    t = ev.next_target

    def skip_from(start: int | None, reference: date) -> int | None:
        i = start
        while i is not None and i < len(targets):
            if targets[i].status != NOT_SATISFIED:
                i += 1
                continue
            if can_skip(targets[i].series_dose, ctx, "forecast", reference, prior, ev.antigen):
                targets[i] = TargetDose(targets[i].series_dose, SKIPPED)
                i += 1
                continue
            return i
        return None

    t = skip_from(t, ctx.assessment_date)

    def done(status: str, *reasons: str) -> SeriesForecast:
        return SeriesForecast(ev, status, tuple(targets), reasons=reasons)

    for _attempt in range(len(targets) + 1):
        if t is None:
            if any(x.status == SATISFIED for x in targets):
                return done(SeriesStatus.COMPLETE, "Patient series is complete")
            return done(SeriesStatus.NOT_RECOMMENDED, "Not recommended due to past history")
        if facts.immune:
            return done(SeriesStatus.IMMUNE, "Patient has evidence of immunity")
        if facts.contraindicated:
            return done(SeriesStatus.CONTRAINDICATED, "Patient has a contraindication")
        sd = targets[t].series_dose
        preferable = sd.preferable_vaccines
        if preferable and all(v.cvx_key in facts.contraindicated_cvx for v in preferable):
            return done(SeriesStatus.CONTRAINDICATED, "Patient has a contraindication")
        if sd.season_end is not None and ctx.assessment_date > sd.season_end:
            return done(SeriesStatus.NOT_RECOMMENDED, "Past seasonal recommendation end date")
        age = select_age(sd.ages, ctx.assessment_date)
        max_age = ctx.age_date(age.max_age, MAX_DATE) if age else MAX_DATE
        if ctx.assessment_date >= max_age:
            return done(SeriesStatus.AGED_OUT, "Patient has exceeded the maximum age")
        # FORECASTDTCAN-1
        candidates: list[date] = []
        min_age = age.min_age if age else None
        if min_age is not None:
            candidates.append(ctx.age_date(min_age, MIN_DATE))
        rec_intervals: list[date] = []
        late_intervals: list[date] = []
        priority_flags: list[bool] = []
        outcomes = list(ev.outcomes)
        for interval in sd.intervals:
            if not relevant(interval.effective_date, interval.cessation_date, ctx.assessment_date):
                continue
            priority_flags.append(interval.priority)
            ref = interval_reference(interval, ctx, MAX_DATE, outcomes, targets, by_index)
            if ref is None:
                continue
            if interval.min_int is not None:
                candidates.append(add_offset(ref, interval.min_int))
            if interval.earliest_rec_int is not None:
                rec_intervals.append(add_offset(ref, interval.earliest_rec_int))
            if interval.latest_rec_int is not None:
                late_intervals.append(add_offset(ref, interval.latest_rec_int))
        candidates.extend(_conflict_ends(sd.preferable_vaccines, ctx))
        if sd.season_start is not None:
            candidates.append(sd.season_start)
        for outcome in ev.outcomes:
            if outcome.inadvertent or outcome.status in (
                EvaluationStatus.VALID,
                EvaluationStatus.NOT_VALID,
            ):
                candidates.append(outcome.dose.date)
        # Table 7-9: with nothing to compute it from, the candidate earliest date is
        # 12/31/2999, which can never precede the maximum age date.
        earliest = max(candidates) if candidates else MAX_DATE
        if earliest >= max_age:
            return done(SeriesStatus.AGED_OUT, "Patient is unable to finish the series")
        # 7.6: re-forecast if the target dose would be skipped by the earliest date.
        if can_skip(sd, ctx, "forecast", earliest, prior, ev.antigen):
            targets[t] = TargetDose(sd, SKIPPED)
            t = skip_from(t + 1, ctx.assessment_date)
            continue
        if age and age.earliest_rec_age is not None:
            unadj_rec: date | None = ctx.age_date(age.earliest_rec_age, MIN_DATE)
        elif rec_intervals:
            unadj_rec = max(rec_intervals)
        else:
            unadj_rec = earliest
        if age and age.latest_rec_age is not None:
            unadj_due: date | None = ctx.age_date(age.latest_rec_age, MIN_DATE) - ONE_DAY
        elif late_intervals:
            unadj_due = max(late_intervals) - ONE_DAY
        else:
            unadj_due = None
        recommended = max(earliest, unadj_rec) if unadj_rec else earliest
        past_due = max(earliest, unadj_due) if unadj_due else None
        latest = max_age - ONE_DAY if max_age != MAX_DATE else None
        rec_cvx: list[str] = []
        for vaccine in sd.preferable_vaccines:
            if not vaccine.forecast or vaccine.cvx_key in facts.contraindicated_cvx:
                continue
            begin = ctx.age_date(vaccine.begin_age, MIN_DATE)
            end = ctx.age_date(vaccine.end_age, MAX_DATE)
            if (
                begin <= earliest < end or begin <= recommended < end
            ) and vaccine.cvx not in rec_cvx:
                rec_cvx.append(vaccine.cvx)
        finish = earliest
        for later in targets[t + 1 :]:
            if later.status != NOT_SATISFIED:
                continue
            step = later.series_dose.previous_min_int
            if step is not None:
                finish = add_offset(finish, step)
        return SeriesForecast(
            ev,
            SeriesStatus.NOT_COMPLETE,
            tuple(targets),
            target_index=t,
            dose_number=_forecast_dose_number(targets, by_index),
            earliest=earliest,
            recommended=recommended,
            past_due=past_due,
            latest=latest,
            unadjusted_recommended=unadj_rec,
            unadjusted_past_due=unadj_due,
            recommended_cvx=tuple(rec_cvx),
            priority=bool(priority_flags) and all(priority_flags),
            finish_date=finish,
        )
    return done(SeriesStatus.COMPLETE, "Patient series is complete")


def _conflict_ends(preferable: Sequence[VaccineRule], ctx: EvalContext) -> list[date]:
    """CALCDTCONFLICT-3: forecast conflict end dates for the next target dose."""
    ends: list[date] = []
    table = ctx.schedule.conflicts_by_current
    for rule in preferable:
        conflicts = table.get(rule.cvx_key)
        if not conflicts:
            continue
        for dose in ctx.all_doses:
            conflict = conflicts.get(dose.cvx)
            if conflict is not None and conflict.end is not None:
                ends.append(add_offset(dose.date, conflict.end))
    return ends


# --- wiring ------------------------------------------------------------------------------


def _scored(key: int, f: SeriesForecast, ctx: EvalContext) -> ScoredSeries:
    series = f.evaluation.series
    valid = [o for o in f.evaluation.outcomes if o.status == EvaluationStatus.VALID]
    last_dose = series.doses[-1] if series.doses else None
    last_age = select_age(last_dose.ages, ctx.assessment_date) if last_dose else None
    return ScoredSeries(
        key=key,
        series_type=series.series_type,
        series_group=series.series_group,
        equivalent_groups=series.equivalent_series_groups,
        priority=series.priority,
        preference=series.preference,
        default=series.default_series,
        product=series.product_path,
        status=f.status,
        valid_count=sum(1 for t in f.targets if t.status == SATISFIED),
        all_valid=all(
            o.status == EvaluationStatus.VALID
            for o in f.evaluation.outcomes
            if o.status != EvaluationStatus.EXTRANEOUS
        ),
        first_valid_date=valid[0].dose.date if valid else None,
        max_age_to_start=ctx.age_date(series.max_age_to_start, MAX_DATE)
        if series.max_age_to_start
        else None,
        not_satisfied_count=sum(1 for t in f.targets if t.status == NOT_SATISFIED),
        earliest=f.earliest,
        finish_date=f.finish_date,
        last_max_age_date=ctx.age_date(last_age.max_age, MAX_DATE)
        if last_age and last_age.max_age
        else None,
        can_start=bool(valid)
        or series.min_age_to_start is None
        or ctx.age_date(series.min_age_to_start, MIN_DATE) <= ctx.assessment_date,
    )


def _antigen_forecast(f: SeriesForecast) -> AntigenForecast:
    series = f.evaluation.series
    return AntigenForecast(
        antigen=f.evaluation.antigen,
        series_name=series.name,
        series_type=series.series_type,
        status=f.status,
        forecast_dose_number=f.dose_number,
        earliest=f.earliest,
        recommended=f.recommended,
        past_due=f.past_due,
        latest=f.latest,
        recommended_cvx=f.recommended_cvx,
        reasons=f.reasons,
    )


def _vaccine_group_forecasts(
    group: VaccineGroup,
    best: dict[str, list[SeriesForecast]],
    doses: Sequence[AntigenDose],
) -> list[VaccineGroupForecast]:
    # FORECASTVG-1: one vaccine group forecast per series group; multiple-antigen groups
    # blend the antigens' best series of the same series type (section 4.6).
    by_type: dict[tuple[str, str], list[SeriesForecast]] = {}
    multi = len(group.antigens) > 1
    for antigen in group.antigens:
        for f in best.get(antigen, []):
            kind = "Risk" if f.evaluation.series.series_type.lower() == "risk" else "Standard"
            key = (kind, "" if multi else f.evaluation.series.series_group)
            by_type.setdefault(key, []).append(f)
    # A series group the patient has aged out of says nothing when another series group of
    # the same type still applies (e.g. childhood vs 50+ pneumococcal).
    for kind in ("Standard", "Risk"):
        keys = [k for k in by_type if k[0] == kind]
        live = [k for k in keys if any(f.status != SeriesStatus.AGED_OUT for f in by_type[k])]
        if live:
            for k in keys:
                if k not in live:
                    del by_type[k]
    everything = [f for forecasts in by_type.values() for f in forecasts]
    out: list[VaccineGroupForecast] = []
    for (kind, _series_group), forecasts in sorted(
        by_type.items(), key=lambda kv: (kv[0][0] != "Standard", kv[0][1])
    ):
        statuses = [f.status for f in forecasts]
        if not multi:
            status = statuses[0]
        elif SeriesStatus.CONTRAINDICATED in statuses:
            status = SeriesStatus.CONTRAINDICATED
        elif SeriesStatus.AGED_OUT in statuses:
            status = SeriesStatus.AGED_OUT
        elif SeriesStatus.NOT_RECOMMENDED in statuses:
            status = SeriesStatus.NOT_RECOMMENDED
        elif SeriesStatus.NOT_COMPLETE in statuses:
            status = SeriesStatus.NOT_COMPLETE
        elif all(s == SeriesStatus.IMMUNE for s in statuses):
            status = SeriesStatus.IMMUNE
        else:
            status = SeriesStatus.COMPLETE
        dated = [f for f in forecasts if f.status == SeriesStatus.NOT_COMPLETE and f.earliest]
        reasons = tuple(r for f in forecasts for r in f.reasons)
        if status != SeriesStatus.NOT_COMPLETE or not dated:
            out.append(
                VaccineGroupForecast(
                    group.name, kind, status, reasons=reasons, antigens=group.antigens
                )
            )
            continue
        earliest_dates = [f.earliest for f in dated if f.earliest]
        if multi and any(f.priority for f in dated):
            group_cvx = {d.cvx for d in doses if d.antigen in group.antigens}
            last = max((d.date for d in doses if d.cvx in group_cvx), default=MIN_DATE)
            earliest = max(min(earliest_dates), last)
        else:
            earliest = max(earliest_dates)
        recs = [f.recommended for f in dated if f.recommended]
        dues = [f.past_due for f in dated if f.past_due]
        lates = [f.latest for f in dated if f.latest]
        # Doses that completed another best series of the same antigen (e.g. a standard
        # series before a risk booster, or a travel dose before the routine series) are doses
        # the patient already has; the next dose is numbered after them.
        numbers = [
            max(
                [f.dose_number]
                + [
                    _forecast_dose_number(o.targets, _doses_of(o))
                    for o in everything
                    if o.status == SeriesStatus.COMPLETE
                    and o.evaluation.antigen == f.evaluation.antigen
                ]
            )
            for f in dated
            if f.dose_number is not None
        ]
        number = (min(numbers) if group.administer_full else max(numbers)) if numbers else None
        cvx: list[str] = []
        for f in dated:
            for code in f.recommended_cvx:
                if code not in cvx:
                    cvx.append(code)
        out.append(
            VaccineGroupForecast(
                vaccine_group=group.name,
                series_type=kind,
                status=status,
                forecast_dose_number=number,
                earliest=earliest,
                recommended=max(min(recs), earliest) if recs else earliest,
                past_due=max(min(dues), earliest) if dues else None,
                latest=min(lates) if lates else None,
                recommended_cvx=tuple(cvx),
                reasons=reasons,
                antigens=group.antigens,
            )
        )
    return out


def forecast(
    patient: PatientFacts,
    doses: Sequence[AdministeredDose],
    assessment_date: date,
    schedule: Schedule | None = None,
) -> ForecastResult:
    """Evaluate ``doses`` and forecast every vaccine group for ``patient`` at ``assessment_date``."""
    sched = schedule if schedule is not None else default_schedule()
    # Doses after the assessment date are not yet history.
    history = [d for d in doses if d.date_administered <= assessment_date]
    records = antigen_doses(history, patient.birth_date, sched)
    obs_dates: dict[str, date] = {}
    for obs in patient.observations:
        if obs.observed_on is not None:
            current = obs_dates.get(obs.code)
            if current is None or obs.observed_on > current:
                obs_dates[obs.code] = obs.observed_on
    ctx = EvalContext(
        patient=patient,
        assessment_date=assessment_date,
        schedule=sched,
        all_doses=records,
        observation_codes=frozenset(o.code for o in patient.observations),
        observation_dates=obs_dates,
    )
    by_antigen: dict[str, list[AntigenDose]] = {}
    for record in records:
        by_antigen.setdefault(record.antigen, []).append(record)

    evaluations: list[DoseEvaluation] = []
    antigen_forecasts: list[AntigenForecast] = []
    best_by_antigen: dict[str, list[SeriesForecast]] = {}
    for antigen in sched.antigens:
        facts = _antigen_facts(antigen, ctx)
        antigen_records = by_antigen.get(antigen.name, [])
        series_list = relevant_series(antigen, ctx)
        if not series_list:
            continue
        evaluated = [evaluate_series(antigen.name, s, antigen_records, ctx) for s in series_list]
        forecasts = [forecast_series(ev, ctx, facts) for ev in evaluated]
        complete = frozenset(
            (antigen.name, f.evaluation.series.series_group)
            for f in forecasts
            if f.status == SeriesStatus.COMPLETE
        )
        # "Completed Series" skip conditions need the other series' outcome: when any series
        # completed, evaluate again knowing which series groups are complete.
        if complete and _uses_completed_series(series_list):
            ctx2 = dataclasses.replace(ctx, completed_series_groups=complete)
            evaluated = [
                evaluate_series(antigen.name, s, antigen_records, ctx2) for s in series_list
            ]
            forecasts = [forecast_series(ev, ctx2, facts) for ev in evaluated]
        scored = [_scored(i, f, ctx) for i, f in enumerate(forecasts)]
        best = [forecasts[s.key] for s in select_best(scored)]
        best_by_antigen[antigen.name] = best
        antigen_forecasts.extend(_antigen_forecast(f) for f in best)
        evaluations.extend(_dose_evaluations(antigen.name, best, evaluated, history))
    groups: list[VaccineGroupForecast] = []
    for group in sched.vaccine_groups:
        groups.extend(_vaccine_group_forecasts(group, best_by_antigen, records))
    return ForecastResult(
        assessment_date=assessment_date,
        evaluations=tuple(evaluations),
        antigen_forecasts=tuple(antigen_forecasts),
        vaccine_group_forecasts=tuple(groups),
    )


# Per-series answer of _uses_completed_series, keyed by id() with the series kept alive
# beside it: the schedule's series are long-lived and scanning their skips is per-call waste.
_COMPLETED_SERIES_SKIP: dict[int, tuple[AntigenSeries, bool]] = {}


def _series_uses_completed_series(series: AntigenSeries) -> bool:
    hit = _COMPLETED_SERIES_SKIP.get(id(series))
    if hit is not None and hit[0] is series:
        return hit[1]
    uses = any(
        c.condition_type == "completed series"
        for sd in series.doses
        for skip in sd.conditional_skips
        for cset in skip.sets
        for c in cset.conditions
    )
    _COMPLETED_SERIES_SKIP[id(series)] = (series, uses)
    return uses


def _uses_completed_series(series_list: Sequence[AntigenSeries]) -> bool:
    return any(_series_uses_completed_series(series) for series in series_list)


_STATUS_RANK = {
    EvaluationStatus.VALID: 0,
    EvaluationStatus.NOT_VALID: 1,
    EvaluationStatus.SUBSTANDARD: 2,
    EvaluationStatus.EXTRANEOUS: 3,
}


def _dose_evaluations(
    antigen: str,
    best: Sequence[SeriesForecast],
    evaluated: Sequence[SeriesEvaluation],
    history: Sequence[AdministeredDose],
) -> list[DoseEvaluation]:
    """Each antigen dose's evaluation, taken from its best patient series (Valid wins)."""
    pool = [f.evaluation for f in best] or list(evaluated[:1])
    chosen: dict[int, tuple[SeriesEvaluation, DoseOutcome]] = {}
    for ev in pool:
        for outcome in ev.outcomes:
            current = chosen.get(outcome.dose.index)
            if current is None or _STATUS_RANK[outcome.status] < _STATUS_RANK[current[1].status]:
                chosen[outcome.dose.index] = (ev, outcome)
    out: list[DoseEvaluation] = []
    for index in sorted(chosen):
        ev, outcome = chosen[index]
        dose = history[index]
        out.append(
            DoseEvaluation(
                dose_index=index,
                dose_id=dose.dose_id,
                date_administered=dose.date_administered,
                cvx=dose.cvx,
                antigen=antigen,
                series_name=ev.series.name,
                status=outcome.status,
                reasons=outcome.reasons,
                target_dose_number=outcome.target_dose_number,
            )
        )
    return out
