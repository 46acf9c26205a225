"""The layers of the code, checked on its import graph (every import, TYPE_CHECKING and function-level ones
included): memsim is a library of its own, the recipe's domain code never reaches up into the pipeline that
drives it, nothing imports the command-line scripts, and no module imports itself through others.

`make lint` runs this file too, so the layers hold in CI before any test runs.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("memsim", "asr")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    found |= {module_name(p): p for p in (ROOT / "scripts").glob("*.py")}
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in (*PACKAGES, "scripts")}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) for name, path in known.items()}


def violations(graph: dict[str, set[str]], importer, imported) -> list[str]:
    return sorted(f"{a} imports {b}" for a, targets in graph.items() if importer(a) for b in targets if imported(b))


def test_memsim_imports_nothing_from_the_recipe(graph):
    assert violations(graph, lambda a: a.startswith("memsim"), lambda b: b.startswith("asr")) == []


def test_the_recipes_domain_code_imports_nothing_from_its_pipeline(graph):
    domain = lambda a: a.startswith("asr") and not a.startswith("asr.pipeline")  # noqa: E731
    assert violations(graph, domain, lambda b: b.startswith("asr.pipeline")) == []


def test_decoding_chips_and_reports_import_nothing_from_the_trainer(graph):
    readers = ("asr.decode", "asr.chips", "asr.transcribe", "asr.reports")
    assert violations(graph, lambda a: a.startswith(readers), lambda b: b == "asr.train") == []


def test_nothing_imports_the_scripts(graph):
    assert violations(graph, lambda a: True, lambda b: b.startswith("scripts")) == []


def test_no_module_imports_itself_through_others(graph):
    """No cycle among modules (a package's __init__ importing its own submodules excepted: that is how a
    package exports them, and Python imports the package first)."""

    def edges(a: str) -> set[str]:
        return {b for b in graph.get(a, set()) if b != a and not a.startswith(f"{b}.") and b in graph}

    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges(node)):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []
