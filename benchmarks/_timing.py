"""Batch-1 latency of the benchmarks' rows: the module to time (TorchScript, or eager when the user's code does not
script), its threshold, and the mean over images of each one's median time (``ofas_wrap._bench.latency_over_images``),
gates forced for the controls.

``timed_model``'s ``args`` carries ``runtime`` (``torchscript``, the default, or ``eager``).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Optional

import torch

from ofas_wrap._bench import latency_over_images

__all__ = ["InterleavedTimer", "timed_model", "set_threshold", "control_patterns"]


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


def control_patterns(control: dict[str, Any], own: torch.Tensor) -> torch.Tensor:
    """The gates a control row of ``ofas_wrap.training.control_rows`` forces on the timed images, one row per image:
    ``fixed_subset`` its one pattern, ``shuffled`` / ``random_rates`` OFAS's own patterns ``own`` on those images
    (bool, images x gates), permuted / redrawn with the control's seed."""
    from ofas_wrap.training import random_rate_patterns, shuffled_patterns

    if control["method"] == "fixed_subset":
        return torch.tensor(control["pattern"]).expand(own.shape[0], -1)
    if control["method"] == "shuffled":
        return shuffled_patterns(own, control["seed"])
    return random_rate_patterns(own, control["seed"])


class InterleavedTimer:
    """Batch-1 latency of many rows, timed in interleaved rounds instead of one row after the other.

    Rows of one benchmark timed one after the other drift with the machine: eight timings of the same computation
    on a paused 2-core machine spread over 9.7-11.8 ms (docs/results.md, "Four times the budget"). Here every
    registered job is timed once per round (the mean over the images of each one's median over ``runs`` runs, as
    ``latency_over_images``), the order rotating from round to round, and a job's latency is the median over the rounds,
    so a slow stretch of the machine falls on every job alike.

    >>> timer = InterleavedTimer(torch.zeros(1, 3, 8, 8), runs=2, threads=1, rounds=2)
    >>> row = {"method": "m", "latency_ms": None, "_timing": timer.add("m", torch.nn.Identity().eval())}
    >>> _ = timer.run(); timer.fill([row]); row["latency_ms"] > 0 and "_timing" not in row
    True
    """

    def __init__(self, images: torch.Tensor, runs: int, threads: int, rounds: int = 3) -> None:
        if rounds < 1 or runs < 1:
            raise ValueError(f"rounds and runs must be >= 1, got {rounds} and {runs}")
        self.images, self.runs, self.threads, self.rounds = images, runs, threads, rounds
        self.jobs: dict[str, tuple[Any, Optional[float], Optional[torch.Tensor]]] = {}
        self.results: dict[str, float] = {}

    def add(self, key: str, model: Any, threshold: Optional[float] = None,
            patterns: Optional[torch.Tensor] = None) -> str:
        """Register ``model`` (at ``threshold``, gates forced to ``patterns`` per image when given); returns the key
        to store in a row's ``_timing``."""
        if key in self.jobs:
            raise ValueError(f"timing job {key!r} registered twice")
        self.jobs[key] = (model, threshold, patterns)
        return key

    def run(self) -> dict[str, float]:
        """Time every job in ``rounds`` rotated rounds; returns key -> median latency (ms) over the rounds."""
        keys = list(self.jobs)
        times: dict[str, list[float]] = {key: [] for key in keys}
        for round_index in range(self.rounds):
            shift = round_index % max(len(keys), 1)
            for key in keys[shift:] + keys[:shift]:
                model, threshold, patterns = self.jobs[key]
                if threshold is not None:
                    set_threshold(model, threshold)
                mean, _ = latency_over_images(model, self.images, self.runs, warmup=3, threads=self.threads,
                                              patterns=patterns)
                times[key].append(mean)
        self.results = {key: statistics.median(values) for key, values in times.items()}
        return self.results

    def fill(self, rows: list[dict[str, Any]]) -> None:
        """Put each row's timed latency in ``latency_ms`` (rows that registered a job, by their ``_timing`` key)."""
        for row in rows:
            key = row.pop("_timing", None)
            if key is not None:
                row["latency_ms"] = self.results[key]
