"""The message hot path (engine/hl7, engine/validation) runs as mypyc-compiled C modules
(setup.py), built from its Python sources.

A compiled module shadows its `.py` on import, so a stale build would run yesterday's code:
these tests fail when a compiled module is older than any source of its package or has no
source left, when the installed package cannot import the build from outside the checkout
(the console script's view), and, where the environment says the build is expected (CI:
IZ_EXPECT_NATIVE=1), when any of those modules runs interpreted.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
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


@pytest.mark.parametrize("package", PACKAGES)
def test_no_compiled_module_outlives_its_source(package: str) -> None:
    folder = ROOT / package
    orphans = sorted(p.name for p in folder.iterdir() if p.name.endswith(EXTENSION)
                     and not (folder / f"{p.name.split('.')[0]}.py").exists())
    assert not orphans, f"compiled modules without a source: {orphans}; run `make install`"


def test_the_installed_package_loads_the_build_from_outside_the_checkout(tmp_path: Path) -> None:
    """What `iz-engine` sees: no repository root on sys.path, only the installed package."""
    code = ("import engine.validation.validator as v, engine.hl7.er7 as p; "
            "print(v.__file__); print(p.__file__)")
    env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = [Path(line) for line in done.stdout.split()]
    assert all(path.resolve().is_relative_to(ROOT) for path in loaded), loaded
