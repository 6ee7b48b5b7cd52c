"""Latency on the machine it runs on, with ``torch.utils.benchmark``; per-threshold sweeps of an OFAS model.

FLOPs are not measured here: they come from the surgery plan (``model.plan``, counted once with
``torch.utils.flop_counter``) or, for a TorchScript export, from the ``flops`` section of its config.
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._config import check_threshold
from ._export import ONNX_CONFIG_KEY, ONNX_THRESHOLD_NAME
from ._plan import FLOPS_NOTE, _executed_flops

__all__ = ["LatencyResult", "SweepResult", "OnnxRuntimeModel", "measure_latency", "per_image_latency",
           "latency_over_images", "sweep_thresholds", "format_sweep"]


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one forward pass of a batch, in milliseconds, over ``runs`` timed runs."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int
    threads: int
    batch_size: int
    device: str
    times_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def per_sample_ms(self) -> float:
        """Median latency divided by the batch size."""
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("times_ms")
        return data

    def __str__(self) -> str:
        return (f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, IQR {self.iqr_ms:.3f} ms "
                f"({self.runs} runs, batch {self.batch_size}, {self.threads} threads, {self.device})")


@dataclass(frozen=True)
class SweepResult:
    """One threshold of :func:`sweep_thresholds`: latency and how much of the network ran on the input."""

    threshold: float
    latency: LatencyResult
    mean_executed_blocks: float  # residual blocks run per sample, always-on blocks included
    num_blocks: int
    mean_executed_gates: float  # gated blocks run per sample
    num_gates: int
    mean_mflops: Optional[float]  # executed MFLOPs per sample, when the FLOPs per block are known

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = self.latency.to_dict()
        return data


def measure_latency(module: Callable[[Tensor], Any], example_input: Tensor, runs: int = 50, warmup: int = 10,
                    threads: Optional[int] = None, device: Union[str, torch.device] = "cpu") -> LatencyResult:
    """Median / p90 / IQR latency of ``module(example_input)`` with ``torch.utils.benchmark.Timer``.

    ``warmup`` untimed calls run first; then each of the ``runs`` calls is timed on its own with
    ``Timer.timeit(1)`` (which synchronises CUDA before and after), so the spread is per call. Everything
    runs under ``torch.inference_mode`` with ``threads`` intra-op threads (default: the current setting).
    An ``nn.Module`` is moved to ``device`` (in place, like ``.to``); put it in eval mode first.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> result = ofas_wrap.measure_latency(model, torch.randn(1, 3, 16, 16), runs=5, warmup=1)
        >>> result.runs, result.batch_size, result.p90_ms >= result.median_ms > 0
        (5, 1, True)
    """
    from torch.utils.benchmark import Timer

    device = _check_device(device)
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise TypeError("example_input must be a batched tensor, e.g. torch.randn(1, 3, 224, 224)")
    if isinstance(module, nn.Module):
        if module.training:
            warnings.warn("measuring a module in training mode (an OFAS model then runs every block); "
                          "call .eval() first", stacklevel=2)
        module.to(device)
    x = example_input.to(device)
    num_threads = threads or torch.get_num_threads()

    def call() -> None:
        with torch.inference_mode():
            module(x)

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        for _ in range(warmup):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timer = Timer(stmt="call()", globals={"call": call}, num_threads=num_threads, label="ofas-wrap latency")
        times_ms = tuple(timer.timeit(1).times[0] * 1e3 for _ in range(runs))
    finally:
        torch.set_num_threads(previous)
    ordered = sorted(times_ms)
    return LatencyResult(
        median_ms=statistics.median(ordered), p90_ms=_quantile(ordered, 0.9),
        iqr_ms=_quantile(ordered, 0.75) - _quantile(ordered, 0.25), mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0], runs=runs, warmup=warmup, threads=num_threads, batch_size=int(x.shape[0]),
        device=str(device), times_ms=times_ms,
    )


def per_image_latency(module: Any, images: Tensor, runs: int = 5, warmup: int = 3, threads: Optional[int] = None,
                      forced_gates: Optional[Tensor] = None) -> list[float]:
    """Each image's median batch-1 latency in ms (``measure_latency`` on ``images[i:i+1]``).

    An OFAS model takes its own decisions per image, so its latency is a distribution over images: the benchmarks
    report the mean of these medians. ``forced_gates`` (images x gates, bool) forces image i's gates through the
    model's ``forced_gate_mask`` (eager or TorchScript), as the controls of issue 10 need; it is cleared after.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> times = ofas_wrap.per_image_latency(model, torch.randn(2, 3, 16, 16), runs=2, warmup=1)
        >>> len(times), all(t > 0 for t in times)
        (2, True)
    """
    if forced_gates is not None and forced_gates.shape[0] != images.shape[0]:
        raise ValueError(f"forced_gates has {forced_gates.shape[0]} rows for {images.shape[0]} images: one per image")
    medians = []
    for index in range(images.shape[0]):
        if forced_gates is not None:
            module.forced_gate_mask = forced_gates[index:index + 1]
        try:
            result = measure_latency(module, images[index:index + 1], runs=runs, warmup=warmup, threads=threads)
        finally:
            if forced_gates is not None:
                module.forced_gate_mask = None
        medians.append(result.median_ms)
    return medians


def latency_over_images(module: Any, images: Tensor, runs: int, warmup: int = 3, threads: Optional[int] = None,
                        patterns: Optional[Tensor] = None) -> tuple[float, float]:
    """The mean and the 90th percentile over ``images`` of each image's median batch-1 latency, in ms.

    What the evaluation and the benchmarks report for one model at one threshold (:func:`per_image_latency`);
    ``patterns`` (images x gates, bool) forces image i's gates, as the controls of issue 10 need.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> mean, p90 = latency_over_images(model, torch.randn(3, 3, 16, 16), runs=2, warmup=1,
        ...                                 patterns=torch.ones(3, model.num_gates, dtype=torch.bool))
        >>> 0 < mean and 0 < p90
        True
    """
    if images.dim() < 1 or images.shape[0] == 0:
        raise ValueError(f"latency_over_images needs at least one image, got a tensor of shape {tuple(images.shape)}")
    medians = per_image_latency(module, images, runs=runs, warmup=warmup, threads=threads, forced_gates=patterns)
    ordered = sorted(medians)
    return statistics.fmean(medians), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def sweep_thresholds(model: Any, example_input: Tensor, thresholds: Sequence[float], runs: int = 50,
                     warmup: int = 10, threads: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                     config: Optional[dict[str, Any]] = None) -> list[SweepResult]:
    """Latency and executed blocks of an OFAS model (eager or TorchScript) at each threshold.

    The gates depend on the input, so use real images as ``example_input`` for meaningful numbers. The
    model's threshold is restored afterwards. ``config`` (from :func:`ofas_wrap.load_torchscript`) gives a
    TorchScript model's FLOPs per block; an eager model's come from its plan.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> rows = ofas_wrap.sweep_thresholds(model, torch.randn(2, 3, 16, 16), [0.0, 0.9], runs=3, warmup=1)
        >>> [(row.threshold, row.mean_executed_blocks) for row in rows][0]
        (0.0, 3.0)
    """
    thresholds = [check_threshold(t, "each of thresholds") for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must be a non-empty list of numbers in [0, 1), got []")
    if config is None and isinstance(getattr(model, "config", None), dict):
        config = model.config
    if not hasattr(model, "gate_threshold") or not (hasattr(model, "blocks") or config):
        raise TypeError("sweep_thresholds expects an OFAS model (OFASModel, its TorchScript export or an "
                        "OnnxRuntimeModel)")
    plan = getattr(model, "plan", None) if isinstance(model, nn.Module) and not isinstance(
        model, torch.jit.ScriptModule) else None
    num_blocks = len(list(model.blocks.children())) if hasattr(model, "blocks") else len(config["ofas"]["blocks"])
    original = float(model.gate_threshold)
    results = []
    try:
        for threshold in thresholds:
            with torch.no_grad():
                model.gate_threshold.fill_(threshold)
            latency = measure_latency(model, example_input, runs=runs, warmup=warmup, threads=threads, device=device)
            with torch.inference_mode():
                model(example_input.to(device))
            if model.last_gates is None:
                raise ValueError("this model reports no gates (an ONNX file exported before the 'gates' output): "
                                 "export it again with ofas-wrap export --format onnx")
            gates = model.last_gates.detach().cpu().bool()
            num_gates = int(gates.shape[1])
            executed = gates.sum(dim=1).double()
            mflops = None
            if plan is not None:
                mflops = float(plan.executed_flops(gates).mean()) / 1e6
            elif config and config.get("flops"):
                mflops = float(executed_flops_from_config(config["flops"], gates).mean()) / 1e6
            results.append(SweepResult(
                threshold=threshold, latency=latency,
                mean_executed_blocks=float(executed.mean()) + (num_blocks - num_gates), num_blocks=num_blocks,
                mean_executed_gates=float(executed.mean()), num_gates=num_gates, mean_mflops=mflops,
            ))
    finally:
        with torch.no_grad():
            model.gate_threshold.fill_(original)
    return results


class OnnxRuntimeModel:
    """An ``export_onnx`` file in onnxruntime that answers like the TorchScript export: call it on a tensor (a batch
    of one), set T with ``gate_threshold.fill_(T)`` or ``threshold = T`` (the session is rebuilt with the threshold
    initializer overridden on the next call), read ``last_gates`` (the file's ``gates`` output) and ``config``. So
    :func:`sweep_thresholds` and ``ofas-wrap bench`` time ``.onnx`` files as they time ``.pt`` files.

    ``source`` is the file's path or its bytes (an INT8 file of :func:`ofas_wrap.quantize_onnx` alike: ``precision``
    says which); ``threads`` the session's intra-op threads (default: onnxruntime's).
    """

    def __init__(self, source: Union[str, os.PathLike, bytes], threads: Optional[int] = None) -> None:
        import onnxruntime

        self._ort, self.threads = onnxruntime, threads
        self.path = source if isinstance(source, bytes) else str(source)
        self._session, self._session_threshold = self._open(None), None
        raw = self._session.get_modelmeta().custom_metadata_map.get(ONNX_CONFIG_KEY)
        if not raw:
            name = "these bytes" if isinstance(source, bytes) else source
            raise ValueError(f"{name} is ONNX but not an OFAS export (no {ONNX_CONFIG_KEY} metadata)")
        self.config = json.loads(raw)
        self.precision = "int8" if "int8" in self.config else "fp32"
        self.gate_threshold = torch.tensor(float(self.config["ofas"]["threshold"]))
        self.last_gates: Optional[Tensor] = None

    @property
    def threshold(self) -> float:
        return float(self.gate_threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.gate_threshold.fill_(check_threshold(value))

    def _open(self, threshold: Optional[float]) -> Any:
        options = self._ort.SessionOptions()
        options.log_severity_level = 3  # not the exporter's unused initializers, once per session
        if self.threads:
            options.intra_op_num_threads = self.threads
        if threshold is not None:
            self._value = self._ort.OrtValue.ortvalue_from_numpy(np.array(threshold, dtype=np.float32))
            options.add_initializer(ONNX_THRESHOLD_NAME, self._value)  # the value must outlive the session
        return self._ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor) -> Tensor:
        threshold = float(self.gate_threshold)
        if threshold != self._session_threshold:
            self._session, self._session_threshold = self._open(threshold), threshold
        if x.shape[0] != 1:
            raise ValueError(f"an ONNX export runs a batch of one, got {x.shape[0]}; TorchScript routes batches")
        outputs = self._session.run(None, {self._session.get_inputs()[0].name: x.detach().cpu().numpy()})
        self.last_gates = torch.from_numpy(outputs[1]).bool() if len(outputs) > 1 else None
        return torch.from_numpy(outputs[0])

    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Each image's predicted class and gates at the current T, one image at a time (as deployed): a tensor
        ``(N,)`` of class indices and a bool tensor ``(N, num_gates)``."""
        predicted, gates = [], []
        for index in range(images.shape[0]):
            logits = self(images[index:index + 1])
            predicted.append(int(logits.argmax()))
            gates.append(self.last_gates[0])
        if not gates:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, len(self.config["ofas"].get("gated_blocks", [])),
                                                                   dtype=torch.bool)
        return torch.tensor(predicted, dtype=torch.int64), torch.stack(gates)


def executed_flops_from_config(flops: dict[str, Any], gates: Tensor) -> Tensor:
    """FLOPs per sample from the ``flops`` section of a saved config and bool ``gates`` (batch, num_gates)."""
    return _executed_flops(flops["fixed"], [(b["gated"], b["gate_index"], b["flops"], b["skip_flops"])
                                            for b in flops["blocks"]], gates)


def format_sweep(results: Sequence[SweepResult]) -> str:
    """The rows of :func:`sweep_thresholds` as a text table."""
    if not results:
        return "(no results)"
    first = results[0].latency
    lines = [
        f"device {first.device}, {first.threads} threads, batch {first.batch_size}, {first.runs} runs "
        f"after {first.warmup} warm-up (torch {torch.__version__})",
        f"{'T':>6} {'median ms':>10} {'p90 ms':>10} {'IQR ms':>9} {'ms/sample':>10} {'blocks':>13} {'MFLOPs':>9}",
    ]
    for row in results:
        lat = row.latency
        mflops = f"{row.mean_mflops:9.2f}" if row.mean_mflops is not None else f"{'-':>9}"
        blocks = f"{row.mean_executed_blocks:.2f}/{row.num_blocks}"
        lines.append(f"{row.threshold:>6.3g} {lat.median_ms:>10.3f} {lat.p90_ms:>10.3f} {lat.iqr_ms:>9.3f} "
                     f"{lat.per_sample_ms:>10.3f} {blocks:>13} {mflops}")
    if any(row.mean_mflops is not None for row in results):
        lines.append(f"MFLOPs: executed per sample; {FLOPS_NOTE}")
    return "\n".join(lines)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _check_device(device: Union[str, torch.device]) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here; use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    return device
