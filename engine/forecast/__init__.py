"""CDC CDSi immunization evaluation and forecasting engine (Logic Specification 4.6).

Public API: :func:`forecast` with its input and result types. The packaged supporting data
(CDSi 4.64) is loaded once on first use; pass ``schedule=`` to use another compiled release.
"""

from engine.forecast.forecast import forecast
from engine.forecast.model import (
    AdministeredDose,
    AntigenForecast,
    DoseEvaluation,
    EvaluationStatus,
    ForecastResult,
    Observation,
    PatientFacts,
    SeriesStatus,
    VaccineGroupForecast,
)
from engine.forecast.schedule import Schedule, default_schedule, load_schedule

__all__ = [
    "AdministeredDose",
    "AntigenForecast",
    "DoseEvaluation",
    "EvaluationStatus",
    "ForecastResult",
    "Observation",
    "PatientFacts",
    "Schedule",
    "SeriesStatus",
    "VaccineGroupForecast",
    "default_schedule",
    "forecast",
    "load_schedule",
]
