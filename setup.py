"""Build script: the package metadata lives in pyproject.toml; this file only adds the native
build of the message hot path.

`engine/hl7` (decoding, ER7 parser, escapes) and `engine/validation` are compiled to C
extension modules with mypyc (from the build requirements in pyproject.toml) whenever the
package is installed, editable or not: they run on every inbound message, and compiled they
cost about half the CPU (README, design notes). The sources stay plain, `mypy --strict`-clean
Python and are the same code either way.
`IZ_PURE_PYTHON=1` at install time skips the native build (a machine without a C compiler);
the engine then runs the identical modules interpreted.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

PACKAGES = ("engine/hl7", "engine/validation")
NATIVE = sorted(str(p) for package in PACKAGES for p in Path(package).glob("*.py"))


def ext_modules() -> list[object]:
    if os.environ.get("IZ_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(NATIVE, opt_level="3", group_name="engine_native"))


setup(ext_modules=ext_modules())
