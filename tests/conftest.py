"""Shared fixtures: where ../shared lives, and the real public messages in it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MESSAGES = SHARED / "messages"


def shared_messages() -> list[Path]:
    """Every real public message file in ../shared/messages ([] when ../shared is absent)."""
    if not MESSAGES.is_dir():
        return []
    return sorted(p for p in MESSAGES.rglob("*.hl7") if p.is_file())


def needs_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not MESSAGES.is_dir(), reason="../shared/messages is not present")
