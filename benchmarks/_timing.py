"""Batch-1 latency of the benchmarks' rows: the module to time (TorchScript, or eager when the user's code does not
script), its threshold, and the mean over images of each one's median time, gates forced for the controls.

``args`` carries ``latency_runs``, ``threads`` and optionally ``runtime`` (``torchscript``, the default, or
``eager``).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Optional

import torch

__all__ = ["timed_model", "set_threshold", "latency_ms"]


def timed_model(model: torch.nn.Module, args: argparse.Namespace) -> tuple[Any, str]:
    """The module to time for ``--runtime`` and what it is: TorchScript, or eager when scripting fails."""
    from ofas_wrap import script_with_fx_fallback

    if getattr(args, "runtime", "torchscript") == "eager":
        return model.eval(), "eager"
    try:
        scripted, _ = script_with_fx_fallback(model.eval())
    except Exception as exc:  # evaluation never depends on TorchScript compiling the user's code (issue 15 item 6)
        print(f"[timing] TorchScript failed for {type(model).__name__} ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:160]}); timing it eager", flush=True)
        return model.eval(), "eager"
    return scripted, "torchscript"


def set_threshold(model: Any, threshold: float) -> None:
    """T on an OFASModel or on its TorchScript export (the ``gate_threshold`` buffer)."""
    if isinstance(model, torch.jit.ScriptModule):
        model.gate_threshold.fill_(threshold)
    else:
        model.threshold = threshold


def latency_ms(model: Any, images: torch.Tensor, args: argparse.Namespace,
               patterns: Optional[torch.Tensor] = None) -> float:
    """Mean over the images of each one's median batch-1 time; ``patterns`` forces image i's gates (controls)."""
    from ofas_wrap import measure_latency

    medians = []
    for index in range(images.shape[0]):
        example = images[index:index + 1]
        if patterns is not None:  # the eager context manager, or the scripted module's attribute
            model.forced_gate_mask = patterns[index:index + 1]
        try:
            result = measure_latency(model, example, runs=args.latency_runs, warmup=3, threads=args.threads)
        finally:
            if patterns is not None:
                model.forced_gate_mask = None
        medians.append(result.median_ms)
    return statistics.fmean(medians)
