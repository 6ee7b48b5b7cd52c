"""The benchmarks' timing: the module to time for ``--runtime`` (``timed_model``), and the package's interleaved timer
(``ofas_wrap.compare.InterleavedTimer``: every job once per round, the order rotating, the median over rounds),
with its ``set_threshold`` and ``control_patterns``, re-exported for the benchmark scripts.

``timed_model``'s ``args`` carries ``runtime`` (``torchscript``, the default, or ``eager``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ofas_wrap.compare._timing import InterleavedTimer, control_patterns, deployed, set_threshold

__all__ = ["InterleavedTimer", "timed_model", "set_threshold", "control_patterns"]


def timed_model(model: torch.nn.Module, args: argparse.Namespace) -> tuple[Any, str]:
    """The module to time for ``--runtime`` and what it is: TorchScript, or eager (said on the console) when the
    user's code does not script."""
    timed, kind = deployed(model, getattr(args, "runtime", "torchscript"))
    if kind.startswith("eager (TorchScript failed"):
        print(f"[timing] {type(model).__name__}: {kind}; timing it eager", flush=True)
        kind = "eager"
    return timed, kind
