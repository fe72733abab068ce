"""Conformance validation: CDC IG R1.5 profiles (NIST's computable form) plus a local overlay.

`Validator.load()` compiles `profiles/` once at start-up; `Validator.validate()` checks one
inbound message and returns a `ValidationResult` (Issues in message order, what was dropped or
emptied, whether the whole message is rejected). `format_report` renders a result for an
operator's terminal. See profiles/README.md for the data format and the rule ids.
"""

from __future__ import annotations

from engine.validation.report import format_report
from engine.validation.validator import ValidationResult, Validator

__all__ = ["ValidationResult", "Validator", "format_report"]
