"""Architecture guard: the project's layering, read statically from every module's imports.

Nothing is imported or executed: each source file is parsed with `ast`, and every import
statement anywhere in it (module level, inside functions, under `if TYPE_CHECKING:`) becomes an
edge between project modules. Standard library and third-party imports are ignored.

Layers, from the inside out:

    domain     consumers.<service>.rules      pure business rules; imports only itself
    kernel     config, models,                settings, catalog, the envelope, tables,
               consumers.<service>.messages,  each service's messages and tables
               consumers.<service>.tables
    infra      choreo.infra                   database, redis, logs, metrics
    world      choreo.world                   the simulated outside world (sandbox gateway,
                                              user service)
    app        choreo.app,                    use cases; only choreo.app.bootstrap may reach
               consumers.order.eventstore,    the world
               consumers.order.projections
    messaging  choreo.messaging               the RabbitMQ edge; knows no handler and no adapter
    handlers   consumers (the rest)           each service's handlers, the registry
    adapters   tasks                          Celery wiring around the handlers
    ops        choreo.ops (operations: stack,  operator tooling: may import anything, and
               status, audit, replay, traces),  nothing else may import it
               choreo.cli (the commands),
               choreo.agent (the operator agent),
               choreo.devtools (chaos, cluster,
               sandbox), choreo.__main__,
               choreo.client (the Python client), bench
    root       choreo (the package __init__)  imports nothing of the project
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Folders whose modules make up the import graph. bench/ is read too: it is ops code and must be
# placed.
SCANNED = ("choreo", "tasks", "consumers", "models", "config", "bench")

# (prefix, layer, exact): first matching rule wins, so the most specific prefixes come first.
# `exact` rules match only the module itself, not its submodules.
LAYER_RULES: tuple[tuple[str, str, bool], ...] = (
    ("choreo.infra", "infra", False),
    ("choreo.world", "world", False),
    ("choreo.app", "app", False),
    ("choreo.messaging", "messaging", False),
    ("choreo.ops", "ops", False),
    ("choreo.cli", "ops", False),
    ("choreo.agent", "ops", False),
    ("choreo.devtools", "ops", False),
    ("choreo.__main__", "ops", True),
    ("choreo.client", "ops", True),
    ("choreo", "root", True),
    ("bench", "ops", False),
    ("consumers", "handlers", False),
    ("tasks", "adapters", False),
    ("config", "kernel", False),
    ("models", "kernel", False),
)

LAYERS = (
    "domain",
    "kernel",
    "infra",
    "world",
    "app",
    "messaging",
    "handlers",
    "adapters",
    "ops",
    "root",
)

# Which layers each layer may import (a layer always lists itself when it may import itself).
ALLOWED: dict[str, frozenset[str]] = {
    "domain": frozenset({"domain"}),
    "kernel": frozenset({"kernel"}),
    "infra": frozenset({"kernel", "infra"}),
    "world": frozenset({"domain", "kernel", "infra", "world"}),
    "app": frozenset({"domain", "kernel", "infra", "app"}),
    "messaging": frozenset({"kernel", "infra", "messaging"}),
    "handlers": frozenset({"domain", "kernel", "infra", "app", "messaging", "handlers"}),
    "adapters": frozenset(
        {"domain", "kernel", "infra", "app", "messaging", "handlers", "adapters"}
    ),
    "ops": frozenset(LAYERS),
    "root": frozenset(),
}

# Single modules allowed more than their layer: the composition root is where the app meets the
# simulated world, so that dependency is written in exactly one place.
EXTRA_ALLOWED: dict[str, frozenset[str]] = {
    "choreo.app.bootstrap": frozenset({"world"}),
}


# --- reading the code -------------------------------------------------------------------------


def module_name(path: Path) -> str:
    """choreo/cli/base.py -> choreo.cli.base;
    choreo/cli/__init__.py -> choreo.cli."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_files() -> dict[str, Path]:
    """Every scanned module, by dotted name."""
    files: dict[str, Path] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[module_name(path)] = path
    return files


def resolve(dotted: str, known: frozenset[str] | set[str]) -> str | None:
    """The longest prefix of `dotted` that is a project module (`a.b.func` -> `a.b`), else None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def imports_in(
    source: str, module: str, is_package: bool, known: frozenset[str] | set[str]
) -> set[str]:
    """Project modules imported anywhere in `source` (the whole tree is walked, so lazy imports
    count).

    Only what the code names is counted: `import a.b.c` yields a.b.c, not the parents a and a.b
    that Python loads implicitly.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := resolve(alias.name, known)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from ..x import y` in package a.b.c: climb level-1 packages from a.b.c.
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from X import Y` imports the submodule X.Y when there is one, else a name from X.
                submodule = f"{base}.{alias.name}" if base else alias.name
                target = submodule if submodule in known else resolve(base, known)
                if target is not None:
                    found.add(target)
    found.discard(module)  # `from . import x` inside a package __init__ can resolve to itself
    return found


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports."""
    files = source_files()
    known = frozenset(files)
    graph: dict[str, frozenset[str]] = {}
    for module, path in files.items():
        try:
            source = path.read_text(encoding="utf-8")
            graph[module] = frozenset(imports_in(source, module, path.name == "__init__.py", known))
        except SyntaxError as exc:  # say which file, instead of a bare parse error at collection
            raise AssertionError(f"cannot parse {path.relative_to(ROOT)}: {exc}") from exc
    return graph


# A service's folder, consumers/<service>/: each module's layer is named by its file.
SERVICE_MODULES = {
    "rules": "domain",
    "messages": "kernel",
    "tables": "kernel",
    "eventstore": "app",
    "projections": "app",
    "timers": "app",
    "retention": "app",
    "handlers": "handlers",
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "consumers" and parts[2] in SERVICE_MODULES:
        return SERVICE_MODULES[parts[2]]
    if len(parts) == 2 and parts[0] == "consumers" and parts[1] not in ("base", "registry"):
        return "root"  # a service's package __init__: a docstring, no imports
    for prefix, layer, exact in LAYER_RULES:
        if module == prefix or (not exact and module.startswith(prefix + ".")):
            return layer
    return None


def may_import(module: str, target: str) -> bool:
    source_layer, target_layer = layer_of(module), layer_of(target)
    if source_layer is None or target_layer is None:
        return True  # unplaced modules are reported by their own test, not twice
    return target_layer in ALLOWED[source_layer] | EXTRA_ALLOWED.get(module, frozenset())


def edge_line(module: str, target: str) -> str:
    return f"  {module} -> {target} ({layer_of(module)} -> {layer_of(target)})"


def edges(where=lambda module, target: True) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in import_graph().items() for t in targets if where(m, t))


class _Tarjan:
    """Tarjan's algorithm, iterative (no recursion limit to worry about): `work` is the depth-first
    path, each node with the iterator over the children it has yet to follow."""

    def __init__(self, graph: dict[str, frozenset[str]]) -> None:
        self.graph = graph
        self.index: dict[str, int] = {}
        self.lowlink: dict[str, int] = {}
        self.on_stack: set[str] = set()
        self.stack: list[str] = []
        self.work: list[tuple[str, Iterator[str]]] = []
        self.components: list[list[str]] = []

    def search(self, start: str) -> None:
        self._enter(start)
        while self.work:
            node, children = self.work[-1]
            if not self._descend(node, children):
                self._leave(node)

    def _enter(self, node: str) -> None:
        self.index[node] = self.lowlink[node] = len(self.index)
        self.stack.append(node)
        self.on_stack.add(node)
        self.work.append((node, iter(sorted(self.graph[node]))))

    def _descend(self, node: str, children: Iterator[str]) -> bool:
        """Enter node's next unvisited child and say True; lower node's lowlink by each child
        already on the stack on the way. False once node has no children left to follow."""
        for child in children:
            if child not in self.graph:
                continue
            if child not in self.index:
                self._enter(child)
                return True
            if child in self.on_stack:
                self.lowlink[node] = min(self.lowlink[node], self.index[child])
        return False

    def _leave(self, node: str) -> None:
        self.work.pop()
        if self.work:
            parent = self.work[-1][0]
            self.lowlink[parent] = min(self.lowlink[parent], self.lowlink[node])
        if self.lowlink[node] == self.index[node]:
            self.components.append(self._pop_component(node))

    def _pop_component(self, root: str) -> list[str]:
        component = []
        while True:
            member = self.stack.pop()
            self.on_stack.discard(member)
            component.append(member)
            if member == root:
                return sorted(component)


def strongly_connected_components(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components in the order Tarjan completes them, each sorted."""
    tarjan = _Tarjan(graph)
    for start in sorted(graph):
        if start not in tarjan.index:
            tarjan.search(start)
    return tarjan.components


# --- the rules --------------------------------------------------------------------------------


def test_the_import_reader_sees_lazy_relative_and_from_imports():
    # Guards against a vacuous pass: if the reader missed imports, every rule below would hold.
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "other"}
    source = (
        "import json\n"
        "from pkg.a import helper\n"  # a name from pkg.a -> pkg.a
        "def later():\n"
        "    import pkg.sub.c.deep\n"  # lazy, dotted past the module -> pkg.sub.c
        "    from .. import b\n"  # relative, submodule -> pkg.b
        "class K:\n"
        "    def m(self):\n"
        "        from other import thing\n"  # lazy inside a method -> other
    )
    assert imports_in(source, "pkg.sub.x", False, known) == {"pkg.a", "pkg.sub.c", "pkg.b", "other"}
    assert imports_in("def f():\n    from . import c\n", "pkg.sub", True, known) == {"pkg.sub.c"}


def test_the_graph_covers_the_code_base():
    graph = import_graph()
    assert len(graph) > 40, (
        f"only {len(graph)} modules found under {SCANNED}: is ROOT right? ({ROOT})"
    )
    assert len(edges()) > 40, (
        f"only {len(edges())} project imports found: the reader is missing imports"
    )


def test_every_module_belongs_to_a_layer():
    # A new top-level folder or module has to be placed in LAYER_RULES deliberately.
    unplaced = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not unplaced, "modules in no layer (add them to LAYER_RULES):\n  " + "\n  ".join(
        unplaced
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_what_it_may(layer):
    bad = edges(lambda m, t: layer_of(m) == layer and not may_import(m, t))
    allowed = ", ".join(sorted(ALLOWED[layer])) or "nothing of the project"
    assert not bad, f"{layer} may import {allowed}; these imports break that:\n" + "\n".join(
        edge_line(m, t) for m, t in bad
    )


def test_nothing_outside_ops_imports_ops():
    # Ops (command line, chaos, bench) sits on top of everything; product code must run without it.
    bad = edges(lambda m, t: layer_of(t) == "ops" and layer_of(m) not in ("ops", None))
    assert not bad, "product code imports ops code:\n" + "\n".join(edge_line(m, t) for m, t in bad)


def test_the_domain_imports_nothing_outside_the_domain():
    # The business rules must be testable and reasoned about with no database, broker or config.
    bad = edges(lambda m, t: layer_of(m) == "domain" and layer_of(t) != "domain")
    assert not bad, "the domain imports project code outside the rules modules:\n" + "\n".join(
        edge_line(m, t) for m, t in bad
    )


def test_messaging_knows_no_handler_and_no_adapter():
    # The broker edge is shared by every service; it must not depend on any one of them.
    bad = edges(lambda m, t: layer_of(m) == "messaging" and layer_of(t) in ("handlers", "adapters"))
    assert not bad, (
        "choreo.messaging imports handlers (consumers.*) or adapters (tasks.*):\n"
        + "\n".join(edge_line(m, t) for m, t in bad)
    )


def test_no_import_cycles():
    # Lazy imports count: they hide a cycle from Python's loader, not from the design.
    cycles = [c for c in strongly_connected_components(dict(import_graph())) if len(c) > 1]
    assert not cycles, "import cycles (each line one strongly connected group):\n" + "\n".join(
        "  " + ", ".join(c) for c in cycles
    )


def test_the_cycle_finder_finds_cycles():
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
    }
    assert sorted(c for c in strongly_connected_components(graph) if len(c) > 1) == [
        ["a", "b", "c"]
    ]
