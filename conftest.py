"""Collection settings of the whole repository: ``tests/`` and the examples in the docstrings (``--doctest-modules``,
pyproject.toml).

An alias module (``ofas_wrap/rl.py``) puts its target (:mod:`ofas_wrap.training.rl`) in its place in
``sys.modules``, so that the old name gives the same module object. ``--doctest-modules`` imports a file by its path
and refuses a module whose file is elsewhere ("import file mismatch"); ``--import-mode=importlib`` would bind the
bare alias, not the target, as ``ofas_wrap.rl`` for the rest of the run. So an alias is imported by its name, the
way users import it, and the examples of its own docstring are collected (its target's are collected from the
target's file).
"""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule  # the collector --doctest-modules makes for a .py file

ROOT = Path(__file__).resolve().parent
# the alias modules of the package: file -> the name users import it by
ALIASES = {ROOT / "ofas_wrap" / "rl.py": "ofas_wrap.rl"}


class AliasDoctestModule(DoctestModule):
    """The examples in an alias module's own docstring, the alias imported by its name."""

    def _getobj(self) -> types.ModuleType:
        name = ALIASES[self.path]
        importlib.import_module(name)
        own = types.ModuleType(name, ast.get_docstring(ast.parse(self.path.read_text(encoding="utf-8"))))
        own.__file__ = str(self.path)
        return own


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    collected = yield
    if file_path not in ALIASES:
        return collected
    # an alias holds no tests: a test module (what a file named on the command line is collected as) is dropped
    return [AliasDoctestModule.from_parent(parent, path=file_path) if isinstance(item, DoctestModule) else item
            for item in collected if isinstance(item, DoctestModule) or not isinstance(item, pytest.Module)]
