"""Readable validation report for `iz-engine validate` (an operator's terminal, never logs).

Owns the one place where message values are shown next to findings: rule, location, severity,
codes, the value found there, and the issue text.
"""

from __future__ import annotations

from engine.errors import Issue
from engine.hl7.er7 import Message
from engine.validation.validator import ValidationResult


def _value_at(issue: Issue, message: Message) -> str:
    loc = issue.location
    if not loc.segment or not loc.field:
        return ""
    seen = 0
    for seg in message.segments:
        if seg.id == loc.segment:
            seen += 1
            if seen == (loc.sequence or 1):
                if loc.component:
                    return seg.value(loc.field, loc.component, loc.subcomponent or 1,
                                     loc.repetition or 1)
                return seg.field(loc.field)
    return ""


def format_report(result: ValidationResult, message: Message) -> str:
    """One line per finding plus a summary; values are shown (terminal use only)."""
    lines = [f"profile {result.profile or '-'}: {len(result.issues)} finding(s)"
             + ("; MESSAGE REJECTED" if result.rejected else "")]
    for issue in result.issues:
        value = _value_at(issue, message)
        shown = repr(value[:60]) if value else "-"
        app = f"/{issue.application_code}" if issue.application_code is not None else ""
        lines.append(f"  {issue.severity.value} {issue.code}{app:<4} "
                     f"{issue.location.render() or '-':<16} {issue.rule:<34} value={shown}  "
                     f"{issue.text}")
    if result.dropped_segments:
        ids = [f"{message.segments[i].id}#{i}" for i in sorted(result.dropped_segments)
               if i < len(message.segments)]
        lines.append("  not stored: " + ", ".join(ids))
    return "\n".join(lines)
