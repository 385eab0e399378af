"""The package's layering, read from the source: ``core/`` is pure torch (no vLLM), and no serving code imports
the test helpers in ``vllm_vtprune.testing`` (which ship only for ``make demo`` and ``make gpu-check``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vllm_vtprune"
# Entry points that are tools, not serving code: they may use the test helpers.
TOOLS = {"demo.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(under: Path) -> list[Path]:
    files = sorted(under.rglob("*.py"))
    assert files, under
    return files


def test_core_imports_no_vllm():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "vllm")
                 for p in modules(PACKAGE / "core")}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_serving_code_does_not_import_the_test_helpers():
    serving = [p for p in modules(PACKAGE) if "testing" not in p.relative_to(PACKAGE).parts
               and p.relative_to(PACKAGE).as_posix() not in TOOLS]
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p)
                                                     if m.startswith("vllm_vtprune.testing"))
                 for p in serving}
    assert {p: m for p, m in offenders.items() if m} == {}
