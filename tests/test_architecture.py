"""The house has one-way stairs: no module of the package imports, directly or through
others, a module that imports it back (the README's layout).

Every import counts, at the top of a module or deferred inside a function: a deferred
import hides a cycle from Python at import time, not from the reader. The plugin
loader's import by name (``importlib.import_module``) is not an import statement and is
exempt, which is what lets the built-in cells import ``tinygrad_rnn`` like any plugin.

And every citation leads somewhere: no file cites notes that the repository does not ship.
"""
import ast
import os

import pytest

import tinygrad_rnn

PACKAGE = "tinygrad_rnn"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tinygrad_rnn.__file__)))

# Imports exempt from the cycle check, each with its reason. Empty: every import runs one way.
ALLOWED_IMPORTS = set()


def modules(root=ROOT, package=PACKAGE):
    """Dotted module name -> (path, is a package's __init__) for every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                is_package = parts[-1] == "__init__"
                found[".".join(parts[:-1] if is_package else parts)] = (os.path.join(folder, f), is_package)
    return found


def import_graph(mods):
    """Module -> {module it imports: line of the first such import}, among ``mods`` only.

    ``from X import name`` is an edge to ``X.name`` where that is a module, else to ``X``;
    relative imports are resolved against the importing module's package. Importing a
    submodule is not counted as importing its parent packages (Python runs their
    ``__init__`` first, but that is the parent's business, not an arrow of this module).
    """
    graph = {}
    for name, (path, is_package) in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = graph.setdefault(name, {})
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(tree):  # every import statement, at any depth (deferred ones too)
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here[:len(here) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                if target in mods and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def cycles(graph):
    """Every elementary cycle, each as a tuple starting at its smallest module name (few
    dozen modules: a depth-first search from each start, over larger names only)."""
    found = set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.add(tuple(path))
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(found, key=lambda c: (len(c), c))


def describe(cycle, graph, mods):
    """``a (a.py:12) -> b (b.py:3) -> a``: each arrow with the line that makes it."""
    steps = []
    for i, name in enumerate(cycle):
        nxt = cycle[(i + 1) % len(cycle)]
        where = os.path.relpath(mods[name][0], ROOT)
        steps.append(f"{name} ({where}:{graph[name][nxt]} imports {nxt})")
    return " -> ".join(steps) + f" -> {cycle[0]}"


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph(modules())
    assert "tinygrad_rnn.tensor" in graph["tinygrad_rnn.module"]      # from .tensor import Tensor
    assert "tinygrad_rnn.backend" in graph["tinygrad_rnn.optim"]      # from . import backend
    assert "tinygrad_rnn.training" in graph["tinygrad_rnn.distributed.mpi"]  # from .. import training
    assert "tinygrad_rnn.backend.cuda" in graph["tinygrad_rnn.backend"]      # deferred, inside get()


def test_the_cycle_finder_finds_a_cycle_and_names_its_lines():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "b": 4}}
    assert cycles(graph) == [("b", "c"), ("a", "b", "c")]


def test_no_import_cycles():
    mods = modules()
    graph = import_graph(mods)
    present = {(a, b) for a, targets in graph.items() for b in targets}
    gone = sorted(ALLOWED_IMPORTS - present)
    assert not gone, f"allowed imports that no longer exist (take them off ALLOWED_IMPORTS): {gone}"
    for a, b in ALLOWED_IMPORTS:
        graph[a] = {k: v for k, v in graph[a].items() if k != b}
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph, mods) for c in found)


if __name__ == "__main__":  # python tests/test_architecture.py: every cycle, allowed or not
    mods = modules()
    graph = import_graph(mods)
    for c in cycles(graph):
        print(describe(c, graph, mods))
    pytest.main([__file__, "-q"])


def test_no_file_cites_notes_that_are_not_in_the_repository():
    """Comments and docs cite the measurement or the benchmark that makes it: the project's
    working notes are not shipped, so a reader could not follow a citation of them."""
    notes = tuple(name + ".md" for name in ("FACTS", "DESIGN", "STYLE"))
    cited = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("build", "dist", "__pycache__")
                         and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith((".py", ".md", ".toml", ".txt", ".cfg")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        cited += [f"{os.path.relpath(path, ROOT)}:{number}: {note}" for note in notes if note in line]
    assert not cited, "\n".join(cited)
