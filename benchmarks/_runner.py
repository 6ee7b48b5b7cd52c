"""Run a recipe inside this process, its output appended to a log (``benchmarks/train_parity.py``'s runs): a fresh
interpreter per step costs about 6 s of imports here (torch, torchvision, timm), which dominated the smoke runs of
the test suite.

The recipes' own entry points do the same work (``recipes/NAME.py`` calls these functions through
``main_guard``); exit codes other than 0 become a ``SystemExit`` naming the log.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RECIPES", "complete_run", "run_compare", "run_recipe", "run_or_reuse"]

# recipe name -> (module, function) called by recipes/NAME.py
RECIPES = {
    "train_backbone": ("ofas_wrap.training", "train_backbone"),
    "e2e_finetune": ("ofas_wrap.training", "e2e_finetune"),
    "rl_finetune": ("ofas_wrap.training", "rl_finetune"),
    "evaluate": ("ofas_wrap.training", "evaluate_run"),
}


def run_recipe(name: str, argv: Sequence[str], log: Path, fresh_process: bool = False) -> float:
    """``recipes/NAME.py ARGV`` in this process, stdout and stderr into ``log``; returns the wall seconds.

    ``fresh_process``: in a new interpreter instead, for runs whose Accelerate settings differ from an earlier run's
    in this process (its ``AcceleratorState`` is set once per process: another ``--mixed-precision`` is refused).
    """
    import subprocess
    import sys

    from ofas_wrap.training import main_guard

    started = time.time()
    with open(log, "a") as handle:
        handle.write(f"$ recipes/{name}.py {' '.join(map(str, argv))}\n")
        handle.flush()
        if fresh_process:
            script = Path(__file__).resolve().parent.parent / "recipes" / f"{name}.py"
            code = subprocess.run([sys.executable, str(script), *map(str, argv)], stdout=handle,
                                  stderr=subprocess.STDOUT).returncode
        else:
            module, function = RECIPES[name]
            run = getattr(importlib.import_module(module), function)
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                code = main_guard(run, list(map(str, argv)))
    if code != 0:
        raise SystemExit(f"recipes/{name}.py stopped with exit code {code}; its output is in {log}")
    return time.time() - started


def run_compare(tag: str, argv: list[str]) -> int:
    """``ofas_wrap.compare`` on ``argv`` in this process, the command printed first with ``[tag]``; its exit code.
    Channel pruning is optional in compare (Torch-Pruning, the ``[prune]`` extra): where it is not installed the
    benchmarks leave the method out rather than refuse."""
    import shlex

    from ofas_wrap.compare import compare
    from ofas_wrap.training import main_guard

    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        argv = [a for a in argv if a != "channel_prune"]
    print(f"[{tag}] compare {shlex.join(argv)}", flush=True)
    return main_guard(compare, argv)


def complete_run(run: Path) -> bool:
    """A recipe's run folder that finished: its metrics and its saved model are there."""
    return (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()


def run_or_reuse(name: str, run: Path, flags: Sequence[str], log: Path, tag: str, fresh_process: bool = False) -> float:
    """``recipes/NAME.py FLAGS --output RUN`` in this process (or a new one, see ``run_recipe``), resuming a partial
    run; a complete run is reused. Returns the run's wall seconds (the recorded ones when reused); ``tag`` prefixes
    the printed command."""
    import json
    import math

    if complete_run(run):
        print(f"[{tag}] reuse {run}", flush=True)
        return float(json.loads((run / "metrics.json").read_text()).get("wall_seconds", math.nan))
    command = [*flags, "--output", str(run), "--no-progress"]
    if (run / "checkpoints").is_dir():
        command.append("--resume")
    print(f"[{tag}] recipes/{name}.py {' '.join(map(str, command))}", flush=True)
    return run_recipe(name, command, log, fresh_process=fresh_process)
