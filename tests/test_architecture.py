"""The core is pure: codec, parser, validation, mapping, decisions, forecast, responses, pipeline.

Walks each core module's imports (transitively within `engine`) and fails if any reaches
asyncio, sockets, TLS, selectors, threads-for-I/O or SQLAlchemy: those belong to the shell
(server, service, http, client, store, handlers, cli, workers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"
FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "sqlalchemy", "psycopg", "uvloop",
             "concurrent", "alembic", "http"}
SHELL = {"engine.server", "engine.service", "engine.http", "engine.client", "engine.cli",
         "engine.__main__", "engine.workers", "engine.store", "engine.handlers",
         "engine.observability"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_shell(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in SHELL)


MODULES = {_module_name(p): p for p in ENGINE.rglob("*.py")}
CORE = sorted(name for name in MODULES if not _is_shell(name))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _reach(name: str, seen: set[str]) -> set[str]:
    """Top-level non-engine packages reachable from module `name`."""
    if name in seen or name not in MODULES:
        return set()
    seen.add(name)
    external: set[str] = set()
    for imported in _imports(MODULES[name]):
        if imported.startswith("engine"):
            external |= _reach(imported, seen)
        else:
            external.add(imported.split(".")[0])
    return external


def test_there_are_core_modules_to_check() -> None:
    """The walk covers the parser, the response builder and the pipeline at least."""
    assert {"engine.hl7.er7", "engine.responses", "engine.pipeline"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_no_io_imports(module: str) -> None:
    """A core module reaches no asyncio, socket, TLS or database package, even indirectly."""
    reached = _reach(module, set())
    assert not (reached & FORBIDDEN), f"{module} reaches {sorted(reached & FORBIDDEN)}"
