"""The package's layout: imports point downward (no import cycle), ofas_wrap.data is split by concern and re-exports
its names, the core never imports a training-only dependency at module level, and the training code lives in
ofas_wrap.training, which the core never imports (``ofas_wrap.rl`` and ``ofas_wrap.training`` load on first use).

The import graph is read from the source with ``ast`` (nothing is imported): an edge ``A -> B`` for every
``import``/``from ... import`` of an ``ofas_wrap`` module executed when ``A`` is imported (module level, including
``if``/``try``/``with``/class bodies; not function bodies, not ``if TYPE_CHECKING:``). ``from .pkg import name``
points at ``pkg.name`` when that is a module, else at ``pkg``. The implicit import of a module's parent packages
is not an edge (Python always initialises them first). ``import_graph(deferred=True)`` adds the imports inside
functions, which run later but still tie the modules together.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = "ofas_wrap"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE  # the source beside the tests, read without importing it

# the [train] extra (pyproject.toml) as import names: only training code may import them at module level
TRAINING_ONLY = {"accelerate", "datasets", "PIL", "matplotlib", "tensorboard"}
TRAINING_CODE = ("ofas_wrap.training",)
# the modules that may import ofas_wrap.training: itself, the entry points, the ofas_wrap.rl alias module, and
# ofas_wrap.compare (the [train] extra's comparison, which runs the recipes' phases)
# (the package's __init__ too, but only inside its lazy module __getattr__: checked on its own)
TRAINING_IMPORTERS = ("ofas_wrap.training", "ofas_wrap.recipes", "ofas_wrap.cli", "ofas_wrap.rl", "ofas_wrap.compare")
# leaf modules, which import nothing of ofas_wrap, so that every module may use them: the atomic file write
LEAVES = ("ofas_wrap._atomic",)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: list[ast.stmt]):
    """The import statements run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            for block in (node.body, node.orelse, node.finalbody):
                yield from _import_time_statements(block)
            for handler in node.handlers:
                yield from _import_time_statements(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_statements(node.body)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _all_import_statements(body: list[ast.stmt]):
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """``{module: {intra-package modules it imports}}`` for every module of ``ofas_wrap``: at import time, or
    anywhere (function bodies too) with ``deferred=True``."""
    modules = _modules()
    statements = _all_import_statements if deferred else _import_time_statements
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in statements(_parse(path).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                           for alias in node.names]
            for target in targets:
                while target and target not in modules and target.startswith(PACKAGE + "."):
                    target = target.rpartition(".")[0]  # import a.b.name where name is not a module
                if target in modules and target != name:
                    graph[name].add(target)
                elif target == name:
                    graph[name].add(name)  # a module importing itself is a cycle too
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(graph, component) for component in components]


def _path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle inside ``component``, starting from its first module by name."""
    start = min(component)
    if start in graph[start]:
        return [start, start]
    parents = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(graph[node] & component):
            if succ == start:
                path = [node]  # node, its parent, ..., start
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return path[::-1] + [start]
            if succ not in parents:
                parents[succ] = node
                queue.append(succ)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(path) for path in found)


# ----------------------------------------------------------------------------------------- the checker itself


def test_the_checker_reads_imports_and_finds_a_cycle():
    graph = import_graph()
    assert "ofas_wrap.data" in graph["ofas_wrap"]  # from . import data, models
    assert "ofas_wrap.data._splits" in graph["ofas_wrap.data"]  # from ._splits import ...
    assert "ofas_wrap.data._cache" in graph["ofas_wrap.data._archives"]
    assert all(not target.startswith("torch") for targets in graph.values() for target in targets)
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(cycles(toy)) == [["a", "b", "c", "a"], ["d", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


# ------------------------------------------------------------------------------------------------- no cycles


@pytest.mark.parametrize("deferred", [False, True], ids=["import-time", "deferred-too"])
def test_the_data_package_is_in_no_cycle_and_never_imports_itself(deferred):
    graph = import_graph(deferred)
    data_modules = {name for name in graph if name == "ofas_wrap.data" or name.startswith("ofas_wrap.data.")}
    assert len(data_modules) > 5
    through_data = [path for path in cycles(graph) if data_modules & set(path)]
    assert not through_data, f"import cycle through ofas_wrap.data: {_describe(through_data)}"
    for name in sorted(data_modules - {"ofas_wrap.data"}):
        assert "ofas_wrap.data" not in graph[name], f"{name} imports the package ofas_wrap.data (import a sibling)"
        upward = sorted(target for target in graph[name] if target not in data_modules and target not in LEAVES)
        assert not upward, f"{name} imports {upward}: ofas_wrap.data depends on nothing else of ofas_wrap"


def test_the_leaf_modules_import_nothing_of_the_package_counting_deferred_imports():
    graph = import_graph(deferred=True)
    for leaf in LEAVES:
        assert graph[leaf] == set(), f"{leaf} imports {sorted(graph[leaf])}; a leaf module imports nothing of ofas_wrap"


def test_no_import_cycle_at_import_time():
    found = cycles(import_graph())
    assert not found, f"import cycle(s): {_describe(found)}"


def test_no_import_cycle_through_deferred_imports():
    found = cycles(import_graph(deferred=True))
    assert not found, f"import cycle(s) through deferred imports: {_describe(found)}"


# ------------------------------------------------------------------------- the files layer and the model


# what builds or holds a model: the files layer (_hub) knows files, not models, and imports none of these
MODEL_BUILDERS = ("ofas_wrap._model", "ofas_wrap._surgery", "ofas_wrap._factory", "ofas_wrap._assembly",
                  "ofas_wrap.models")


def test_the_files_layer_imports_nothing_that_builds_a_model_counting_deferred_imports():
    graph = import_graph(deferred=True)
    builders = sorted(target for target in graph["ofas_wrap._hub"] if target.startswith(MODEL_BUILDERS))
    assert not builders, f"ofas_wrap._hub (files only) imports {builders}"
    assert graph["ofas_wrap._hub"] <= {"ofas_wrap._config", "ofas_wrap._version"}, graph["ofas_wrap._hub"]


def test_the_model_calls_the_surgery_and_the_files_never_the_reverse():
    graph = import_graph(deferred=True)
    assert {"ofas_wrap._surgery", "ofas_wrap._hub", "ofas_wrap._assembly"} <= graph["ofas_wrap._model"]
    for lower in ("ofas_wrap._surgery", "ofas_wrap._block", "ofas_wrap._assembly", "ofas_wrap._hub"):
        assert "ofas_wrap._model" not in graph[lower], f"{lower} imports ofas_wrap._model (the model calls it)"
        assert "ofas_wrap._factory" not in graph[lower], f"{lower} imports ofas_wrap._factory"
    assert "ofas_wrap._surgery" not in graph["ofas_wrap._assembly"]


# ---------------------------------------------------------------------------------- ofas_wrap.data, split up


def test_the_data_package_reexports_every_name_of_the_old_module():
    data = importlib.import_module("ofas_wrap.data")
    assert not (ROOT / "data.py").exists()
    for name in data.__all__ + ["Source"]:
        value = getattr(data, name)
        home = getattr(value, "__module__", None)
        if home and home.startswith("ofas_wrap.data."):
            assert getattr(importlib.import_module(home), name) is value, name
    for path in sorted((ROOT / "data").glob("_*.py")):
        module = importlib.import_module(f"ofas_wrap.data.{path.stem}")
        assert module.__all__, f"{path.name} has an empty __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{path.name}: {name} is in __all__ but not defined"
            if not name.startswith("_"):
                assert getattr(data, name) is getattr(module, name), f"ofas_wrap.data does not re-export {name}"


# --------------------------------------------------------------------------------- training-only dependencies


def test_the_core_never_imports_training_only_dependencies_at_module_level():
    offenders = []
    for name, path in _modules().items():
        if name.startswith(TRAINING_CODE):
            continue
        for node in _import_time_statements(_parse(path).body):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            roots = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offenders += [f"{name}: {root}" for root in roots if root.split(".")[0] in TRAINING_ONLY]
    assert not offenders, f"training-only dependencies imported at module level (import them in the function): " \
                          f"{offenders}"


# ------------------------------------------------------------------------------------------ ofas_wrap.training


def _is_training(name: str) -> bool:
    return name == "ofas_wrap.training" or name.startswith("ofas_wrap.training.")


def _importers_of_training(graph: dict[str, set[str]]) -> set[str]:
    return {name for name, targets in graph.items() if any(_is_training(target) for target in targets)}


def test_the_checker_sees_the_imports_of_the_training_package():
    graph = import_graph(deferred=True)
    assert "ofas_wrap.training._trainer" in graph["ofas_wrap.training._phases"]
    assert "ofas_wrap.training" in graph["ofas_wrap.recipes.train_backbone"]  # under if __name__ == "__main__"
    assert "ofas_wrap.training.rl" in graph["ofas_wrap.rl"]  # the alias module
    assert any(_is_training(target) for target in graph["ofas_wrap"])  # the lazy __getattr__


def test_only_the_entry_points_import_the_training_package_counting_deferred_imports():
    graph = import_graph(deferred=True)
    assert len([name for name in graph if _is_training(name)]) > 8
    offenders = sorted(name for name in _importers_of_training(graph)
                       if name != "ofas_wrap" and not name.startswith(TRAINING_IMPORTERS))
    assert not offenders, f"the core imports ofas_wrap.training (only the entry points may): {offenders}"
    at_import = sorted(target for target in import_graph()["ofas_wrap"] if _is_training(target))
    assert not at_import, f"ofas_wrap/__init__.py imports {at_import} at import time (only in __getattr__, lazily)"
    alias = ROOT / "rl.py"
    assert len(alias.read_text().splitlines()) < 12, "ofas_wrap/rl.py is only the alias of ofas_wrap.training.rl"


def _run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this checkout of ofas_wrap."""
    path = os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT.parent, env={**os.environ, "PYTHONPATH": path})


def test_import_ofas_wrap_loads_no_training_code():
    result = _run_python(f"""
        import sys
        import ofas_wrap
        assert ofas_wrap.__file__.startswith({str(ROOT)!r}), ofas_wrap.__file__
        loaded = sorted(m for m in sys.modules if m == "ofas_wrap.rl" or m.startswith("ofas_wrap.training"))
        assert not loaded, loaded
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("accelerate", "datasets", "matplotlib"))
        assert not heavy, heavy
        assert "rl" in ofas_wrap.__all__ and "rl" in dir(ofas_wrap) and "training" in dir(ofas_wrap)
    """)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("first", ["from ofas_wrap import rl", "import ofas_wrap.rl as rl"])
def test_ofas_wrap_rl_is_the_training_packages_rl_module_either_way(first):
    result = _run_python(f"""
        import sys
        {first}
        import ofas_wrap
        import ofas_wrap.rl
        import ofas_wrap.training.rl
        from ofas_wrap.rl import PolicyRollout, gate_rewards
        assert rl is ofas_wrap.rl is ofas_wrap.training.rl is sys.modules["ofas_wrap.rl"], rl
        assert gate_rewards is ofas_wrap.training.rl.gate_rewards and PolicyRollout.__module__ == rl.__name__
        assert ofas_wrap.training is sys.modules["ofas_wrap.training"]
        missing = [name for name in ofas_wrap.__all__ if not hasattr(ofas_wrap, name)]
        assert not missing, missing
        try:
            ofas_wrap.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("ofas_wrap.no_such_name did not raise AttributeError")
    """)
    assert result.returncode == 0, result.stderr


def test_the_training_package_reexports_every_name_of_its_modules():
    training = importlib.import_module("ofas_wrap.training")
    for name in training.__all__:
        assert hasattr(training, name), f"ofas_wrap.training.__all__ names {name}, which it lacks"
    assert training.rl is importlib.import_module("ofas_wrap.training.rl")
    assert training.rl.__all__ and all(hasattr(training.rl, name) for name in training.rl.__all__)
    modules = sorted((ROOT / "training").glob("_*.py"))
    assert {path.stem for path in modules} - {"__init__"} >= {"_flags", "_runs", "_trainer", "_phases", "_evaluate"}
    for path in modules:
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"ofas_wrap.training.{path.stem}")
        assert module.__all__, f"training/{path.name} has an empty __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"training/{path.name}: {name} is in __all__ but not defined"
            assert getattr(training, name) is getattr(module, name), f"ofas_wrap.training does not re-export {name}"
    for old in ("_training", "_recipes", "_evaluate", "_speed", "_objectives", "_controls"):
        assert not (ROOT / f"{old}.py").exists(), f"ofas_wrap/{old}.py is back; it lives in ofas_wrap/training/"

