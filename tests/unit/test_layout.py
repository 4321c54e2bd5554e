"""The layout is the architecture: the import rules of README "What is where", checked on the
imports parsed from the source (function-level imports included, so a lazy import cannot
hide a cycle)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("devices", "rules", "ingest", "simulator")
# Who each top-level package may import, besides itself.
ALLOWED = {
    "devices": set(),
    "rules": {"devices"},
    "simulator": {"devices"},
    "ingest": {"rules", "devices"},
}
# Entry points wire everything together: the CLI offers the simulator's options and run
# function as `citysense simulate`, so `simulator` stays free of `ingest`.
ENTRY_POINTS = {"ingest.cli.running": {"simulator"}}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """The project modules ``path`` imports, resolved to modules (not names in them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target
                break


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, name, known)) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    """ingest.mqtt.session → ingest.mqtt; ingest.cli → ingest.cli; rules.engine → rules."""
    parts = module.split(".")
    if parts[0] != "ingest":
        return parts[0]
    return ".".join(parts[:2])


def test_dependencies_point_one_way() -> None:
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if target.split(".")[0] != source.split(".")[0]
        and target.split(".")[0] not in ALLOWED[source.split(".")[0]]
        and target.split(".")[0] not in ENTRY_POINTS.get(source, set())
    )
    assert wrong == []


def test_no_module_imports_in_a_cycle() -> None:
    assert cycles(graph()) == []


def test_the_rooms_of_ingest_depend_one_way() -> None:
    rooms: dict[str, set[str]] = {}
    for source, targets in graph().items():
        if source.startswith("ingest"):
            rooms.setdefault(room(source), set()).update(
                room(t) for t in targets if t.startswith("ingest.") and room(t) != room(source)
            )
    assert cycles(rooms) == []


def test_rules_has_no_io() -> None:
    io = {"sqlalchemy", "sqlite3", "aiomqtt", "paho", "httpx", "aiohttp", "socket", "asyncio"}
    wrong = []
    for path in sorted((REPO / "rules").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in io]
    assert wrong == []


@pytest.mark.parametrize("package", PACKAGES)
def test_long_modules_say_why(package: str) -> None:
    """A module over ~400 lines is one idea that needs the room, and its docstring says why."""
    unexplained = []
    for path in sorted((REPO / package).rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and "Why one module" not in doc:
            unexplained.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert unexplained == []


def test_the_checker_sees_a_cycle_and_a_wrong_way_import() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    known = modules()
    assert "rules.engine" in known and "ingest.mqtt.session" in known
    assert "devices.registry" in graph()["rules.engine"] | graph()["rules.model"] | set().union(
        *(graph()[m] for m in known if m.startswith("rules."))
    )
