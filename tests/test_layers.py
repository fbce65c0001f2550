"""The house rules that imports can show: the protocol core touches no socket or clock,
and no two folders of the package import each other in a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import earmark

PACKAGE = Path(earmark.__file__).parent
#: Folders whose code takes bytes and time in and gives bytes, events and timers out.
SANS_IO = ("iscsi", "scsi", "initiator", "target", "check")
#: What only runtime/ may reach for: sockets, event loops, selectors and clocks.
IO_MODULES = {"socket", "asyncio", "selectors", "ssl", "time", "uvloop"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, wherever in the file (a lazy import is an import)."""
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imported(path) if m in modules and m != name}
            for name, path in modules.items()}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def test_the_protocol_core_imports_no_socket_loop_or_clock() -> None:
    offenders = sorted(
        f"{name} imports {dep}"
        for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
        if folder(name) in SANS_IO
        for dep in imported(path)
        if dep.split(".")[0] in IO_MODULES
    )
    assert not offenders, offenders


def test_no_import_cycle_spans_two_folders() -> None:
    edges = graph()

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, deps in edges.items() for b in deps
                    if folder(a) != folder(b) and reaches(b, a))
    assert not cycles, cycles


def test_the_checks_see_the_whole_package() -> None:
    # An empty graph would pass both tests above: make sure they looked at real imports.
    edges = graph()
    assert "earmark.runtime.connection" in edges
    assert "earmark.target.session" in edges["earmark.runtime.connection"]
    assert any(folder(m) == "runtime" for m in edges["earmark.cli.serve"])


def test_runtime_needs_nothing_of_the_simulator() -> None:
    """runtime/ carries real sockets, clocks and threads; the virtual-time loop and the
    simulated network are the simulator's, beside the models they carry out."""
    offenders = sorted(f"{name} imports {dep}" for name, deps in graph().items()
                       if folder(name) == "runtime" for dep in deps if folder(dep) == "sim")
    assert not offenders, offenders
