"""Timing rows as deployed, in interleaved rounds: batch 1 (the mean over images of each image's median) and one
server batch size (the median time of a whole batch).

Rows of one comparison timed one after the other drift with the machine: eight timings of the same computation on a
paused 2-core machine spread over 9.7-11.8 ms (docs/results.md, "Four times the budget"). Here every registered job
is timed once per round, the order rotating from round to round, and a job's latency is the median over the rounds,
so a slow stretch of the machine falls on every job alike.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

import torch
from torch import nn

from .._bench import latency_over_images, measure_latency

__all__ = ["deployed", "set_threshold", "control_patterns", "InterleavedTimer"]


def deployed(model: nn.Module, runtime: str = "torchscript") -> tuple[Any, str]:
    """The module to time and what it is: TorchScript (the deployed form; user code that does not script is traced
    through ``script_with_fx_fallback``), or eager when ``runtime == "eager"`` or scripting fails (named in the
    result, never silent)."""
    from .._export import script_with_fx_fallback

    if runtime not in ("torchscript", "eager"):
        raise ValueError(f"runtime must be 'torchscript' or 'eager', got {runtime!r}")
    model = model.eval()
    if runtime == "eager":
        return model, "eager"
    try:
        scripted, _ = script_with_fx_fallback(model)
    except Exception as exc:  # timing never depends on TorchScript compiling the user's code
        return model, f"eager (TorchScript failed: {type(exc).__name__})"
    return scripted, "torchscript"


def set_threshold(model: Any, threshold: float) -> None:
    """The threshold of a model or of its TorchScript export: T of an OFAS model (its ``gate_threshold`` buffer),
    or an early-exit network's entropy threshold (its ``threshold`` attribute)."""
    if isinstance(model, torch.jit.ScriptModule) and hasattr(model, "gate_threshold"):
        model.gate_threshold.fill_(threshold)
    else:
        model.threshold = threshold


def control_patterns(control: dict[str, Any], own: torch.Tensor) -> torch.Tensor:
    """The gates a control row of ``ofas_wrap.training.control_rows`` forces on the timed images, one row per image:
    ``fixed_subset`` its one pattern, ``shuffled`` / ``random_rates`` OFAS's own patterns ``own`` on those images
    (bool, images x gates), permuted / redrawn with the control's seed."""
    from ..training import random_rate_patterns, shuffled_patterns

    if control["method"] == "fixed_subset":
        return torch.tensor(control["pattern"]).expand(own.shape[0], -1)
    if control["method"] == "shuffled":
        return shuffled_patterns(own, control["seed"])
    return random_rate_patterns(own, control["seed"])


class InterleavedTimer:
    """Latency of many jobs, each timed once per round, the order rotating; a job's result is its median over rounds.

    ``images``: the batch-1 images (each timed alone: the mean of their medians, ``runs`` runs each); with
    ``server_batch`` > 1, every job is also timed on one batch of that many images (``runs`` runs, median), reported
    in ms per batch.

    >>> timer = InterleavedTimer(torch.zeros(2, 3, 8, 8), runs=2, threads=1, rounds=2, server_batch=2)
    >>> key = timer.add("identity", torch.nn.Identity().eval())
    >>> result = timer.run()[key]
    >>> result["latency_ms"] > 0 and result["server_ms"] > 0
    True
    """

    def __init__(self, images: torch.Tensor, runs: int, threads: int, rounds: int = 3,
                 server_batch: int = 0, warmup: int = 3) -> None:
        if rounds < 1 or runs < 1:
            raise ValueError(f"rounds and runs must be >= 1, got {rounds} and {runs}")
        if images.dim() < 2 or images.shape[0] == 0:
            raise ValueError(f"the timing images must be a non-empty batch, got shape {tuple(images.shape)}")
        self.images, self.runs, self.threads, self.rounds, self.warmup = images, runs, threads, rounds, warmup
        self.server_batch = server_batch
        if server_batch > 1:
            repeats = -(-server_batch // images.shape[0])
            self.server_images = images.repeat(repeats, *([1] * (images.dim() - 1)))[:server_batch]
        self.jobs: dict[str, tuple[Any, Optional[float], Optional[torch.Tensor]]] = {}
        self.batch_one_only: set[str] = set()
        self.results: dict[str, dict[str, float]] = {}

    def add(self, key: str, model: Any, threshold: Optional[float] = None,
            patterns: Optional[torch.Tensor] = None, server: bool = True) -> str:
        """Register ``model`` (at ``threshold``; gates forced to ``patterns``, one row per image, when given).
        ``server=False``: batch 1 only (an ONNX If-graph runs one image at a time), no ``server_ms``."""
        if key in self.jobs:
            raise ValueError(f"timing job {key!r} registered twice")
        self.jobs[key] = (model, threshold, patterns)
        if not server:
            self.batch_one_only.add(key)
        return key

    def _server_ms(self, model: Any, patterns: Optional[torch.Tensor]) -> float:
        if patterns is not None:  # a forced pattern per image: the batch takes the first images' patterns
            repeats = -(-self.server_batch // patterns.shape[0])
            mask = patterns.repeat(repeats, 1)[:self.server_batch]
            model.forced_gate_mask = mask
            try:
                return measure_latency(model, self.server_images, runs=self.runs, warmup=1,
                                       threads=self.threads).median_ms
            finally:
                model.forced_gate_mask = None
        return measure_latency(model, self.server_images, runs=self.runs, warmup=1, threads=self.threads).median_ms

    def run(self) -> dict[str, dict[str, float]]:
        """Time every job in ``rounds`` rotated rounds; returns key -> {"latency_ms", "latency_p90_ms"[,
        "server_ms"]}, each the median over the rounds."""
        keys = list(self.jobs)
        times: dict[str, dict[str, list[float]]] = {key: {} for key in keys}
        for round_index in range(self.rounds):
            shift = round_index % max(len(keys), 1)
            for key in keys[shift:] + keys[:shift]:
                model, threshold, patterns = self.jobs[key]
                if threshold is not None:
                    set_threshold(model, threshold)
                mean, p90 = latency_over_images(model, self.images, runs=self.runs, warmup=self.warmup,
                                                threads=self.threads, patterns=patterns)
                times[key].setdefault("latency_ms", []).append(mean)
                times[key].setdefault("latency_p90_ms", []).append(p90)
                if self.server_batch > 1 and key not in self.batch_one_only:
                    times[key].setdefault("server_ms", []).append(self._server_ms(model, patterns))
        self.results = {key: {name: statistics.median(values) for name, values in series.items()}
                        for key, series in times.items()}
        return self.results

    def fill(self, rows: list[dict[str, Any]]) -> None:
        """Put each row's timed batch-1 latency in ``latency_ms`` (rows that registered a job, by their ``_timing``
        key; a row may share another's key, e.g. a copied row of the same model), and ``server_ms`` where timed."""
        for row in rows:
            key = row.pop("_timing", None)
            if key is not None:
                row["latency_ms"] = self.results[key]["latency_ms"]
                if "server_ms" in self.results[key]:
                    row["server_ms"] = self.results[key]["server_ms"]
