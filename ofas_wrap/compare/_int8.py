"""An INT8 row for a comparison: an OFAS model quantized (:func:`ofas_wrap.quantize_onnx`) and run by onnxruntime at
batch 1, as deployed. :func:`int8_row` scores it at one threshold and returns the callable to time, which an
:class:`~ofas_wrap.compare.InterleavedTimer` times beside the float rows (``timer.add(key, row.runner)``).

The calibration images come from the training split (or another held-out part), never from the test images scored.
The stem and the gating head stay float32, so the INT8 graph takes the float head's decisions; ``gates_equal_float``
says on what share of the test images it did (float rounding at a decision's edge is the only way it can differ).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["INT8_RUNTIME", "Int8Row", "int8_row", "quantize_for_rows", "score_int8"]

INT8_RUNTIME = "onnxruntime-int8"  # the runtime label of INT8 rows, as recipes/evaluate.py writes it


@dataclass
class Int8Row:
    """What :func:`int8_row` measured; ``runner`` (not in :meth:`to_dict`) runs the INT8 session on a batch of one
    at ``threshold``: ``runner(images[i:i + 1])`` returns the logits, ``runner.last_gates`` the gates."""

    threshold: float
    top1: float
    executed_gates: float
    executed_blocks: float
    num_blocks: int
    num_gates: int
    mflops: float
    gates_equal_float: float
    test_count: int
    calibration_images: int
    max_logit_difference_on_calibration: float
    runtime: str = INT8_RUNTIME
    precision: str = "int8"
    runner: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The row without its runner (JSON-ready)."""
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name != "runner"}


def int8_row(model: Any, calibration: Any, threshold: float, test_images: Tensor, test_labels: Tensor, *,
             threads: int = 1, calibration_images: Optional[int] = None, per_channel: bool = True,
             path: Optional[Any] = None) -> Int8Row:
    """Quantize ``model`` (an OFASModel) on ``calibration`` and score the INT8 graph at ``threshold`` on the test
    images, one image at a time through onnxruntime.

    ``calibration``: what :func:`ofas_wrap.export_onnx` takes for ``quantize="int8"`` (a float tensor ``(N, C, H,
    W)`` of training images prepared as the model's inputs, a DataLoader, ...; ``calibration_images`` takes the
    first N); never the test images. ``test_images`` ``(N, C, H, W)`` float, prepared as the model's inputs;
    ``test_labels`` ``(N,)``. ``threads``: the session's intra-op threads (the timing's too). ``path``: also keep
    the INT8 file there (at ``threshold``); by default nothing is left on disk, the session holds the graph.

    Returns an :class:`Int8Row` whose ``runner`` is the session to time at batch 1.

    Example:
        >>> import torch, ofas_wrap
        >>> from ofas_wrap.compare import InterleavedTimer
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
        >>> row = int8_row(model, torch.randn(32, 3, 16, 16), 0.5, torch.randn(8, 3, 16, 16),
        ...                torch.randint(0, 10, (8,)))  # doctest: +SKIP
        >>> timer = InterleavedTimer(torch.randn(4, 3, 16, 16), runs=5, threads=1)  # doctest: +SKIP
        >>> key = timer.add("ofas-int8", row.runner)  # doctest: +SKIP
    """
    from .._config import check_threshold

    threshold = check_threshold(threshold)
    _check_test_set(model, test_images, test_labels)
    runner = quantize_for_rows(model, calibration, threads=threads, calibration_images=calibration_images,
                               per_channel=per_channel)
    if path is not None:
        _keep(runner.graph, Path(path), threshold)
    return score_int8(runner, model, threshold, test_images, test_labels)


def quantize_for_rows(model: Any, calibration: Any, *, threads: int = 1, calibration_images: Optional[int] = None,
                      per_channel: bool = True) -> Any:
    """The INT8 graph of ``model`` (an OFASModel) in an onnxruntime session, quantized once: score it at any T with
    :func:`score_int8`, time it at batch 1 (set ``runner.threshold``). ``runner.graph`` holds the file's bytes."""
    from .._bench import OnnxRuntimeModel
    from .._export import export_onnx
    from .._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(f"int8_row expects an OFASModel, got {type(model).__name__}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="ofas-compare-int8-") as work:
            written = export_onnx(model, Path(work) / "int8.onnx", quantize="int8", calibration=calibration,
                                  calibration_images=calibration_images, per_channel=per_channel)
            graph = written.read_bytes()
    finally:
        model.train(was_training)
    runner = OnnxRuntimeModel(graph, threads=threads)
    runner.graph = graph
    return runner


def score_int8(runner: Any, model: Any, threshold: float, test_images: Tensor, test_labels: Tensor) -> Int8Row:
    """The INT8 graph of :func:`quantize_for_rows` scored at ``threshold`` on the test images, one image at a time,
    beside the float ``model``'s gate decisions; the row's ``runner`` is left at ``threshold``."""
    from .._config import check_threshold
    from .._quantize import int8_scores

    threshold = check_threshold(threshold)
    _check_test_set(model, test_images, test_labels)
    runner.threshold = threshold
    predicted, gates = runner.classify(test_images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, probs = model.gate_probabilities(test_images)
    finally:
        model.train(was_training)
    record = runner.config["int8"]
    return Int8Row(
        threshold=threshold, **int8_scores(model, predicted, test_labels, gates, probs, threshold),
        calibration_images=int(record["calibration_images"]),
        max_logit_difference_on_calibration=float(record["max_logit_difference_on_calibration"]), runner=runner,
    )


def _check_test_set(model: Any, test_images: Tensor, test_labels: Tensor) -> None:
    from .._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(f"int8_row expects an OFASModel, got {type(model).__name__}")
    expected = tuple(model.config["input_size"])
    if not isinstance(test_images, Tensor) or tuple(test_images.shape[1:]) != expected or test_images.dim() != 4:
        got = tuple(test_images.shape) if isinstance(test_images, Tensor) else type(test_images).__name__
        raise ValueError(f"test_images must be a float tensor (N, {', '.join(map(str, expected))}), got {got}")
    if not isinstance(test_labels, Tensor) or test_labels.shape != (test_images.shape[0],):
        raise ValueError(f"test_labels must be a tensor ({test_images.shape[0]},), one label per test image")
    if test_images.shape[0] == 0:
        raise ValueError("int8_row needs at least one test image")


def _keep(graph: bytes, path: Path, threshold: float) -> None:
    """The INT8 file at ``threshold``, written atomically."""
    import onnx

    from .._atomic import atomic_path
    from .._export import set_onnx_threshold

    proto = set_onnx_threshold(onnx.load_from_string(graph), threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as temporary:
        onnx.save(proto, str(temporary))
