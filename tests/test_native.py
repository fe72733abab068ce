"""The message hot path (engine/hl7, engine/validation) runs as mypyc-compiled C modules
(setup.py), built from its Python sources.

A compiled module shadows its `.py` on import, so a stale build would run yesterday's code:
these tests fail when a compiled module is older than any source of its package, and, where
the environment says the build is expected (CI: IZ_EXPECT_NATIVE=1), when any of those
modules runs interpreted.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

import engine

ROOT = Path(engine.__file__).resolve().parent
PACKAGES = ("hl7", "validation")
EXTENSION = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _modules(package: str) -> list[str]:
    return sorted(f"engine.{package}" if p.stem == "__init__" else f"engine.{package}.{p.stem}"
                  for p in (ROOT / package).glob("*.py"))


def _compiled(package: str) -> dict[str, Path]:
    """Module name -> its loaded file, for the package's modules loaded as extensions."""
    out = {}
    for name in _modules(package):
        path = Path(importlib.import_module(name).__file__ or "")
        if path.name.endswith(EXTENSION):
            out[name] = path
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_compiled_modules_are_built_from_the_current_sources(package: str) -> None:
    newest_source = max(p.stat().st_mtime for p in (ROOT / package).glob("*.py"))
    stale = sorted(name for name, path in _compiled(package).items()
                   if path.stat().st_mtime < newest_source)
    assert not stale, (f"compiled modules older than their sources: {stale}; "
                       "rebuild with `make install` (or run `make test`)")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_compiled_when_the_native_build_is_expected(package: str) -> None:
    if os.environ.get("IZ_EXPECT_NATIVE") != "1":
        pytest.skip("IZ_EXPECT_NATIVE is not set (CI sets it)")
    assert sorted(_compiled(package)) == _modules(package)
