"""Evaluation: :func:`evaluate_classifier` (the validation numbers of every phase) and the threshold sweep of
``recipes/evaluate.py``: accuracy, executed blocks, FLOPs and latency per T.

For every threshold T: top-1 accuracy on the validation split (carved from train, used to *choose* T) and on the
test split (reported, never used for a choice), mean executed blocks and MFLOPs per test image, and the mean
batch-1 latency of the TorchScript export on this machine (the median of ``--latency-runs`` timed runs per image,
averaged over ``--latency-samples`` test images, since the executed blocks depend on the image). The original
backbone (the ``train_backbone`` run at the root of the ``--init`` chain, or ``--baseline RUN``) is measured the
same way and marked on the plots. Writes ``results.csv``, ``results.json``, ``accuracy_vs_cost.png`` and the
TorchScript model at the chosen T into ``--output`` (default ``RUN/eval``).

With ``--int8``, the model is also quantized (:func:`ofas_wrap.quantize_onnx`: onnxruntime's static quantization,
calibrated on ``--calib-images`` images of the *training* split, never validation or test; the stem and the head
stay float32) and evaluated through onnxruntime at batch 1, one image at a time as deployed: INT8 rows (runtime
``onnxruntime-int8``) with the same columns, plus the float32 ONNX graph's latency at the same T for the INT8 /
FP32 ratio, and the share of test images whose INT8 gates equal the float head's. T for INT8 is chosen on the INT8
validation accuracy by the same rule; the INT8 file at that T is written beside the TorchScript one.

Example:
    >>> from ofas_wrap.training import parse_thresholds
    >>> parse_thresholds("0.3:0.5:0.1")
    [0.3, 0.4, 0.5]
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .._atomic import atomic_path
from .._bench import latency_over_images
from .._calibration import fold_head_temperature, head_temperature
from .._config import DEFAULT_CALIBRATION_IMAGES, check_threshold
from .._plan import FLOPS_NOTE
from ..data import load_image_data, make_loader
from ._errors import RunError
from ._runs import _write_json, read_run

__all__ = ["evaluate_classifier", "parse_thresholds", "evaluate_parser", "evaluate_run", "format_table",
           "choose_threshold", "saturation_note"]


@torch.no_grad()
def evaluate_classifier(accelerator, model: nn.Module, loader, ofas: Optional[bool] = None) -> dict[str, float]:
    """Top-1 accuracy (and, for an OFAS model, executed gates / blocks / MFLOPs per sample) over ``loader``.

    ``model`` is the plain (unwrapped) module; ``loader`` a prepared loader (sharded across processes); results
    are gathered with ``gather_for_metrics`` so duplicated padding samples are not counted twice.
    """
    from .._model import OFASModel

    ofas = isinstance(model, OFASModel) if ofas is None else ofas
    was_training = model.training
    model.eval()
    correct = count = 0
    gates_sum = flops_sum = 0.0
    try:
        for images, labels in loader:
            logits = model(images)
            predicted = logits.argmax(dim=1)
            if ofas:
                gates = model.last_gates.to(torch.bool)
                executed = gates.sum(dim=1).to(torch.float64).to(predicted.device)
                flops = model.executed_flops(gates).to(predicted.device)
                predicted, labels, executed, flops = accelerator.gather_for_metrics(
                    (predicted, labels, executed, flops))
                gates_sum += float(executed.sum())
                flops_sum += float(flops.sum())
            else:
                predicted, labels = accelerator.gather_for_metrics((predicted, labels))
            correct += int((predicted == labels).sum())
            count += int(labels.numel())
    finally:
        model.train(was_training)
    result = {"accuracy": correct / max(count, 1), "count": count}
    if ofas:
        n = max(model.num_gates, 1)
        result["executed_gates"] = gates_sum / max(count, 1)
        result["executed_blocks"] = result["executed_gates"] + (len(model.blocks) - model.num_gates)
        result["skip_ratio"] = 1.0 - result["executed_gates"] / n
        result["mflops"] = flops_sum / max(count, 1) / 1e6
    return result


def check_int8_request(calib_images: int) -> None:
    """``--int8 --calib-images N`` of the recipes, checked before anything runs: N positive, onnx and onnxruntime's
    quantization tools installed (the error says what to install)."""
    from .._quantize import check_quantization_tools

    if calib_images < 1:
        raise RunError(f"--calib-images must be positive, got {calib_images}")
    try:
        check_quantization_tools()
    except RuntimeError as exc:
        raise RunError(f"--int8: {exc}") from None


def parse_number_range(text: str) -> list[float]:
    """``"START:STOP:STEP"`` (stop included) or a comma list as floats, in the order written; ``ValueError`` when the
    text is neither (the callers check the values' range and name their flag).

    Example:
        >>> parse_number_range("0:1:0.5"), parse_number_range("0.9,0.1")
        ([0.0, 0.5, 1.0], [0.9, 0.1])
    """
    if ":" in text:
        start, stop, step = (float(v) for v in text.split(":"))
        if step <= 0:
            raise ValueError(f"the step must be positive, got {text!r}")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        return [round(start + i * step, 6) for i in range(max(count, 0))]
    return [float(v) for v in text.split(",") if v.strip()]


def parse_thresholds(text: str) -> list[float]:
    """``"0.3:0.8:0.05"`` (start:stop:step, stop included) or ``"0.3,0.5,0.7"``; values in [0, 1).

    Example:
        >>> parse_thresholds("0,0.5,0.7")
        [0.0, 0.5, 0.7]
    """
    try:
        values = parse_number_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--thresholds takes START:STOP:STEP or a comma list, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"--thresholds gives no value, got {text!r}")
    try:
        for value in values:
            check_threshold(value, "each of --thresholds")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return sorted(set(values))


def evaluate_parser() -> argparse.ArgumentParser:
    """Flags of ``recipes/evaluate.py``."""
    parser = argparse.ArgumentParser(description="Accuracy / executed blocks / FLOPs / latency of an OFAS run per "
                                                 "threshold T, with the original backbone marked.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", help="run folder (a saved OFAS model; its data.json / args.json give the data)")
    parser.add_argument("--thresholds", type=parse_thresholds, default=parse_thresholds("0.3:0.8:0.05"),
                        help="START:STOP:STEP or a comma list")
    parser.add_argument("--output", default=None, help="where to write the results (default RUN/eval)")
    parser.add_argument("--baseline", default=None,
                        help="run folder of the original backbone (default: the train_backbone run found through "
                             "the --init chain, else the run's own backbone)")
    parser.add_argument("--dataset", default=None, help="override the run's dataset (same splits otherwise)")
    parser.add_argument("--eval-subset", type=int, default=None, help="use only N validation / test images")
    parser.add_argument("--batch-size", type=int, default=256, help="for the accuracy passes")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="choose the largest T whose validation accuracy is within this many points of the "
                             "original backbone's (of T=0 when there is no backbone run)")
    parser.add_argument("--export-threshold", type=float, default=None, help="export at this T instead")
    parser.add_argument("--latency-samples", type=int, default=32, help="test images timed per threshold (0: none)")
    parser.add_argument("--latency-runs", type=int, default=10, help="timed runs per image")
    parser.add_argument("--latency-warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while timing")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="force the CPU")
    parser.add_argument("--controls", action="store_true",
                        help="at the chosen T, also evaluate the shuffled, random_rates and fixed_subset controls "
                             "(same mean cost, no input dependence; fixed_subset chosen greedily on validation)")
    parser.add_argument("--control-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--control-val-images", type=int, default=1000,
                        help="validation images the greedy fixed_subset search uses")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a folder whose backbone comes from your own factory run that code to rebuild it")
    parser.add_argument("--calibrate-head", action="store_true",
                        help="before the sweep, fold into the head the one temperature (chosen on the validation "
                             "images) that spreads its outputs over (0.05, 0.95): decisions at T = 0.5 unchanged, "
                             "a threshold cliff becomes a knob; the exported model carries it (docs/training.md)")
    int8 = parser.add_argument_group("INT8 (pip install 'ofas-wrap[onnx]')")
    int8.add_argument("--int8", action="store_true",
                      help="also quantize the model (onnxruntime static quantization, stem and head float32) and "
                           "evaluate it through onnxruntime at batch 1: INT8 rows (runtime onnxruntime-int8) with "
                           "accuracy, executed blocks and latency beside the float ones, T for INT8 chosen on the "
                           "INT8 validation accuracy, and the INT8 .onnx file at that T")
    int8.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                      help="training-split images (never validation or test) to calibrate INT8 on, picked at random "
                           "with the run's split seed")
    int8.add_argument("--int8-thresholds", type=parse_thresholds, default=None,
                      help="the thresholds of the INT8 rows (default: the sweep's); each scores the validation and "
                           "test images one at a time")
    return parser


def _find_baseline(run: dict[str, Any], explicit: Optional[str]) -> Optional[Path]:
    if explicit:
        read_run(explicit)
        return Path(explicit)
    seen = set()
    current = run
    while current is not None:
        args = current.get("args") or {}
        if args.get("phase") == "train_backbone":
            return Path(current["path"])
        init = args.get("init")
        if not init or init in seen:
            return None
        seen.add(init)
        try:
            current = read_run(init)
        except RunError:
            return None
    return None


def choose_threshold(rows: Sequence[dict[str, Any]], reference: float, max_drop: float) -> float:
    """The largest T whose validation accuracy is at least ``reference - max_drop`` points (validation only);
    when no T is, the most accurate T on validation (the largest of equals).

    Example:
        >>> rows = [{"threshold": 0.3, "val_accuracy": 0.91}, {"threshold": 0.5, "val_accuracy": 0.905},
        ...         {"threshold": 0.7, "val_accuracy": 0.85}]
        >>> choose_threshold(rows, reference=0.91, max_drop=1.0)
        0.5
        >>> choose_threshold(rows, reference=0.95, max_drop=1.0)
        0.3
    """
    ok = [r["threshold"] for r in rows if r["val_accuracy"] * 100 >= reference * 100 - max_drop - 1e-9]
    if ok:
        return max(ok)
    best = max(r["val_accuracy"] for r in rows)
    return max(r["threshold"] for r in rows if r["val_accuracy"] == best)


def _script_backbone(backbone: nn.Module, example: torch.Tensor) -> Any:
    backbone.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(backbone)
    except Exception:  # some timm / user backbones do not script: a trace is exact for a static network
        with torch.no_grad():
            return torch.jit.trace(backbone, example)


def format_table(rows: Sequence[dict[str, Any]], baseline: Optional[dict[str, Any]] = None,
                 chosen: Optional[float] = None, int8: Optional[dict[str, Any]] = None) -> str:
    """The per-threshold results as a text table (what ``evaluate.py`` prints); ``int8`` (``results.json``'s
    ``int8`` section) adds its rows below, labelled."""
    header = (f"{'T':>5} {'val acc':>8} {'test acc':>8} {'blocks':>11} {'MFLOPs':>8} {'latency ms':>10} "
              f"{'adaptive':>8} {'patterns':>8}")
    lines = [header, "-" * len(header)]

    def fmt(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    for row in rows:
        mark = "  <- chosen on validation" if chosen is not None and row["threshold"] == chosen else ""
        blocks = f"{row['executed_blocks']:.2f}/{row['num_blocks']}"
        lines.append(f"{row['threshold']:>5.2f} {fmt(row.get('val_accuracy'), '8.4f')} "
                     f"{fmt(row['test_accuracy'], '8.4f')} {blocks:>11} {row['mflops']:>8.2f} "
                     f"{fmt(row.get('latency_ms'), '10.3f')} {fmt(row.get('adaptive_gates'), '8d')} "
                     f"{fmt(row.get('distinct_patterns'), '8d')}{mark}")
    if baseline:
        blocks = f"{baseline['num_blocks']}/{baseline['num_blocks']}"
        lines.append(f"{'orig':>5} {fmt(baseline.get('val_accuracy'), '8.4f')} "
                     f"{fmt(baseline['test_accuracy'], '8.4f')} {blocks:>11} {baseline['mflops']:>8.2f} "
                     f"{fmt(baseline.get('latency_ms'), '10.3f')} {'-':>8} {'-':>8}  original backbone "
                     f"({baseline['source']})")
    if int8 and int8.get("rows"):
        lines.append(f"INT8 ({int8['runtime']}, batch 1, calibrated on {int8['calibration_images']} training images; "
                     "stem and head float32):")
        lines.append(f"{'T':>5} {'val acc':>8} {'test acc':>8} {'blocks':>11} {'MFLOPs':>8} {'latency ms':>10} "
                     f"{'precision':>9} {'vs fp32':>7}")
        for row in int8["rows"]:
            mark = "  <- chosen on INT8 validation" if row["threshold"] == int8.get("chosen_threshold") else ""
            blocks = f"{row['executed_blocks']:.2f}/{row['num_blocks']}"
            ratio = row.get("int8_over_fp32_onnx")
            lines.append(f"{row['threshold']:>5.2f} {fmt(row.get('val_accuracy'), '8.4f')} "
                         f"{fmt(row['test_accuracy'], '8.4f')} {blocks:>11} {row['mflops']:>8.2f} "
                         f"{fmt(row.get('latency_ms'), '10.3f')} {'int8':>9} "
                         f"{(format(ratio, '.2f') + 'x') if ratio is not None else '-':>7}{mark}")
        lines.append("INT8 latency: onnxruntime (the rows above: TorchScript, float32); vs fp32: INT8 / float32 "
                     "latency, both in onnxruntime at the same T")
    lines.append(f"MFLOPs: executed per test image; {FLOPS_NOTE}")
    return "\n".join(lines)


def outputs_labels_difficulty(accelerator, model, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head outputs, labels and the full-depth backbone's per-image cross-entropy (difficulty) over ``loader``."""
    outputs, labels, losses = [], [], []
    backbone = model.unwrap()
    with torch.no_grad():
        for images, targets in loader:
            _, probs = model.gate_probabilities(images)
            loss = torch.nn.functional.cross_entropy(backbone(images), targets, reduction="none")
            probs, targets, loss = accelerator.gather_for_metrics((probs, targets, loss))
            outputs.append(probs.float().cpu())
            labels.append(targets.cpu())
            losses.append(loss.float().cpu())
    if not outputs:
        return torch.zeros(0, model.num_gates), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return torch.cat(outputs), torch.cat(labels), torch.cat(losses)


def head_outputs(accelerator, model, loader) -> torch.Tensor:
    """The head's outputs ``S_L`` (Eq. 3) for every image of ``loader``, shape (images, num_gates): stem + head only."""
    outputs = []
    with torch.no_grad():
        for images, _ in loader:
            _, probs = model.gate_probabilities(images)
            outputs.append(accelerator.gather_for_metrics(probs).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.num_gates)


def output_percentiles(outputs: torch.Tensor) -> dict[str, float]:
    """Percentiles 5/25/50/75/95 of all head outputs: a narrow band means T acts as a cliff, not a knob."""
    if outputs.numel() == 0:
        return {}
    flat = outputs.flatten()
    return {str(q): float(flat.quantile(q / 100)) for q in (5, 25, 50, 75, 95)}


SATURATED = 0.999


def saturation_note(percentiles: dict[str, float]) -> Optional[str]:
    """A warning when the head's outputs are saturated (its 5th percentile above ``SATURATED``, or its 95th below
    ``1 - SATURATED``): every T inside the sweep's range then opens, or closes, 95 % of the gates or more, and the
    gradients that would move them have vanished. None otherwise.

    >>> saturation_note({"5": 0.99998, "95": 1.0}).split(":")[0]
    'the head has saturated open'
    >>> saturation_note({"5": 0.2, "95": 0.9}) is None
    True
    """
    if not percentiles:
        return None
    if percentiles["5"] >= SATURATED:
        state, effect = "open", f"every T up to {SATURATED} runs every block for 95 % of the gate decisions"
    elif percentiles["95"] <= 1.0 - SATURATED:
        state, effect = "closed", f"every T down to {1.0 - SATURATED:.3f} skips 95 % of the gates"
    else:
        return None
    return (f"the head has saturated {state}: {effect}, and the sigmoid's gradient there is about zero, so neither "
            "more training of this head nor RL will move it much. Retrain the head with a smaller --head-lr or fewer "
            "steps; --calibrate-head rescales the outputs so that T reaches into them (it keeps their order)")


def pattern_information(gates: torch.Tensor, labels: torch.Tensor) -> float:
    """The mutual information (bits) between the skip pattern and the class, ``H(pattern) - H(pattern | class)``,
    plug-in estimate over the images. 0 when the pattern says nothing about the class (a fixed pattern, or one
    that varies independently of it).

    Example:
        >>> pattern_information(torch.tensor([[True], [False], [True], [False]]), torch.tensor([0, 1, 0, 1]))
        1.0
    """
    def entropy(keys: torch.Tensor) -> float:
        _, counts = torch.unique(keys, dim=0, return_counts=True)
        p = counts.double() / counts.sum()
        return float(-(p * torch.log2(p)).sum())

    gates = gates.to(torch.int64)
    labels = labels.to(torch.int64).reshape(-1, 1)
    joint = torch.cat([gates, labels], dim=1)
    # I(P; Y) = H(P) + H(Y) - H(P, Y)
    return max(0.0, entropy(gates) + entropy(labels) - entropy(joint))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-d tensors (average ranks for ties); 0 when either is constant.

    Example:
        >>> round(rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])), 6)
        0.5
    """
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        order = torch.argsort(x)
        sorted_x = x[order]
        rank = torch.empty_like(x)
        start = 0
        while start < len(x):
            end = start
            while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
                end += 1
            rank[order[start:end + 1]] = (start + end) / 2.0
            start = end + 1
        return rank

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else 0.0


def adaptivity(outputs: torch.Tensor, threshold: float, labels: Optional[torch.Tensor] = None,
               difficulty: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """How input-adaptive the decisions at ``threshold`` are, from the head's outputs (images, gates).

    ``adaptive_gates``: gates open for more than 5 % and fewer than 95 % of the images (the others act as a fixed
    pruning); ``distinct_patterns``: how many different skip patterns the images get. A head that learned one
    pattern for everything has 0 and 1: a static sub-network, not input-adaptive inference.

    Example:
        >>> adaptivity(torch.tensor([[0.9, 0.2], [0.9, 0.7], [0.9, 0.1]]), 0.5)
        {'adaptive_gates': 1, 'distinct_patterns': 2}
    """
    if outputs.numel() == 0:
        return {"adaptive_gates": 0, "distinct_patterns": 0}
    gates = outputs >= threshold
    rate = gates.float().mean(0)
    result: dict[str, Any] = {"adaptive_gates": int(((rate > 0.05) & (rate < 0.95)).sum()),
                              "distinct_patterns": int(torch.unique(gates, dim=0).shape[0])}
    if labels is not None:
        result["mi_bits"] = round(pattern_information(gates, labels), 4)
    if difficulty is not None:
        result["difficulty_corr"] = round(rank_correlation(gates.sum(1).double(), difficulty), 4)
    return result


def _plot(rows: Sequence[dict[str, Any]], baseline: Optional[dict[str, Any]], path: Path, title: str,
          outputs: Optional[torch.Tensor] = None, chosen: Optional[float] = None,
          int8_rows: Optional[Sequence[dict[str, Any]]] = None) -> None:
    # the object API with its own Agg canvas: a library function must not switch pyplot's backend (a notebook's)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    have_latency = all(r.get("latency_ms") is not None for r in rows)
    axes_keys = ([("latency_ms", "batch-1 latency (ms, TorchScript, this machine)")] if have_latency else [])
    axes_keys.append(("mflops", "executed MFLOPs per image"))
    panels = len(axes_keys) + (1 if outputs is not None and outputs.numel() else 0)
    figure = Figure(figsize=(5.5 * panels, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)
    accuracy = [100 * r["test_accuracy"] for r in rows]
    for axis, (key, label) in zip(axes[0], axes_keys):
        xs = [r[key] for r in rows]
        axis.plot(xs, accuracy, "o-", color="tab:blue", label="OFAS, one point per T")
        if int8_rows and all(r.get(key) is not None for r in int8_rows):
            runtime = " (onnxruntime)" if key == "latency_ms" else ""
            axis.plot([r[key] for r in int8_rows], [100 * r["test_accuracy"] for r in int8_rows], "s--",
                      color="tab:green", label=f"OFAS INT8{runtime}, one point per T")
        for row, x, y in zip(rows, xs, accuracy):
            axis.annotate(f"{row['threshold']:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if baseline and baseline.get(key) is not None:
            unit = "ms" if key == "latency_ms" else "MFLOPs"
            axis.axvline(baseline[key], color="tab:blue", linestyle="--", linewidth=1,
                         label=f"original backbone: {baseline[key]:.2f} {unit}")
            axis.axhline(100 * baseline["test_accuracy"], color="tab:red", linestyle="--", linewidth=1,
                         label=f"original backbone: {100 * baseline['test_accuracy']:.2f}%")
            axis.plot([baseline[key]], [100 * baseline["test_accuracy"]], "*", color="tab:red", markersize=12)
        axis.set_xlabel(label)
        axis.set_ylabel("top-1 test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    if panels > len(axes_keys):
        axis = axes[0][-1]
        axis.hist(outputs.flatten().numpy(), bins=50, range=(0.0, 1.0), color="tab:gray")
        if chosen is not None:
            axis.axvline(chosen, color="tab:red", linestyle="--", linewidth=1, label=f"chosen T = {chosen:.2f}")
            axis.legend(fontsize=7)
        axis.set_xlabel("head output S_L (a block runs when S_L >= T)")
        axis.set_ylabel("count (images x gates, validation)")
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:  # savefig picks the format from the name
        figure.savefig(temporary, dpi=120)


def evaluate_run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Sweep the thresholds of a run (see the module docstring); returns what ``results.json`` holds.

    Runs under ``python`` and under ``accelerate launch`` (the accuracy passes are sharded and gathered with
    ``gather_for_metrics``; the latency is measured by the main process alone while the others wait).
    """
    from accelerate import Accelerator

    from .._export import export_torchscript
    from .._model import OFASModel

    args = evaluate_parser().parse_args(argv)
    run = read_run(args.run)
    run_args, run_data = run.get("args") or {}, run.get("data") or {}
    baseline_dir = _find_baseline(run, args.baseline)
    out_dir = Path(args.output) if args.output else Path(args.run) / "eval"
    if args.export_threshold is not None:
        try:
            check_threshold(args.export_threshold, "--export-threshold")
        except ValueError as exc:
            raise RunError(str(exc)) from None
    if args.latency_samples < 0 or args.latency_runs < 1 or args.threads < 1:
        raise RunError("--latency-samples must be >= 0, --latency-runs and --threads >= 1")
    if args.int8:
        check_int8_request(args.calib_images)
    elif args.int8_thresholds is not None:
        raise RunError("--int8-thresholds is for --int8; add --int8 or leave it out")
    dataset = args.dataset or run_args.get("dataset") or run_data.get("source")
    if not dataset:
        raise RunError(f"{args.run} records no dataset; pass --dataset")

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    model = OFASModel.from_pretrained(run["path"], trust_remote_code=args.trust_remote_code).eval()
    channels = model.config["input_size"][0]
    with accelerator.main_process_first():
        data = load_image_data(
            dataset, in_chans=channels, val_size=run_args.get("val_size", 0.1) if run_args else 0.1,
            eval_subset=args.eval_subset, split_seed=run_args.get("split_seed", 0) if run_args else 0,
            image_size=run_args.get("image_size"), augment=False, train_split=run_args.get("train_split") or "train",
            test_split=run_args.get("test_split"), image_column=run_args.get("image_column"),
            label_column=run_args.get("label_column"), config_name=run_args.get("dataset_config"),
            normalization=model.config.get("normalization"),
            val_from=(run_args.get("val_from") if run_args else None) or "train",
        )
    info = data.info
    if args.int8 and len(data.train) < args.calib_images:
        raise RunError(f"--calib-images {args.calib_images}: the training split holds only {len(data.train)} images "
                       "(INT8 calibrates on training images, never on validation or test); ask for fewer")
    test_loader = accelerator.prepare(make_loader(data.test, args.batch_size))
    val_loader = accelerator.prepare(make_loader(data.val, args.batch_size)) if len(data.val) else None
    if len(data.val) == 0:
        accelerator.print("note: no validation split (--val-size 0 in the run); T is then chosen on nothing but "
                          "the reference, and reported on test only")
    # the accuracy passes run where the prepared loaders put the batches; latency, the controls and the export run
    # on a CPU copy (as they always did: latency is this machine's CPU time)
    cpu_model = model
    if accelerator.device.type != "cpu":
        cpu_model = copy.deepcopy(model)
        model.to(accelerator.device)
    temperature = None
    if args.calibrate_head:
        if val_loader is None:
            raise RunError("--calibrate-head chooses the temperature on the validation images, and this run has "
                           "none (--val-size 0): retrain with a validation split or leave the flag out")
        temperature = head_temperature(head_outputs(accelerator, model.eval(), val_loader))
        for target in {id(model): model, id(cpu_model): cpu_model}.values():
            fold_head_temperature(target.head, temperature)
        accelerator.print(f"head calibrated on {len(data.val)} validation images: temperature {temperature:.4g} "
                          f"(T = 0.5 decisions unchanged; T here is T' = sigmoid({temperature:.4g} * logit(T)) of "
                          "the saved model)")

    latency_images = data.test.__getitems__(list(range(min(args.latency_samples, len(data.test)))))[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    scripted = None
    timed_as, script_failure = ("torchscript" if len(latency_images) else None), None
    if accelerator.is_main_process and len(latency_images):
        # script once; the threshold is a buffer of the scripted model, set per T below
        scripted_path = out_dir / ".sweep.pt"
        try:
            export_torchscript(cpu_model, scripted_path, example_input=latency_images[:2])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(scripted_path))
        except Exception as exc:  # a user's backbone TorchScript cannot compile (a lambda, dynamic Python)
            script_failure = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            timed_as = "eager"
            accelerator.print(f"note: TorchScript cannot compile this model ({script_failure}); timing the eager "
                              "model instead (real skipping too: eval mode runs only the executed blocks)")
        finally:
            scripted_path.unlink(missing_ok=True)
    for threshold in [0.0] + [t for t in args.thresholds if t != 0.0]:
        model.threshold = cpu_model.threshold = threshold
        test = evaluate_classifier(accelerator, model, test_loader)
        val = evaluate_classifier(accelerator, model, val_loader) if val_loader is not None else {}
        row = {"threshold": threshold, "val_accuracy": val.get("accuracy"), "test_accuracy": test["accuracy"],
               "executed_blocks": test["executed_blocks"], "num_blocks": len(model.blocks),
               "executed_gates": test["executed_gates"], "num_gates": model.num_gates, "mflops": test["mflops"],
               "latency_ms": None, "latency_p90_ms": None, "test_count": test["count"],
               # the cost on validation: an operating point can be chosen by cost without looking at test
               "val_mflops": val.get("mflops"), "val_executed_blocks": val.get("executed_blocks")}
        if scripted is not None:
            with torch.no_grad():
                scripted.gate_threshold.fill_(threshold)
            row["latency_ms"], row["latency_p90_ms"] = latency_over_images(
                scripted, latency_images, args.latency_runs, args.latency_warmup, args.threads)
        elif script_failure is not None:
            row["latency_ms"], row["latency_p90_ms"] = latency_over_images(
                cpu_model.eval(), latency_images, args.latency_runs, args.latency_warmup, args.threads)
        accelerator.wait_for_everyone()
        rows.append(row)
        accelerator.print(f"T={threshold:.2f}: test acc {row['test_accuracy']:.4f}, blocks "
                          f"{row['executed_blocks']:.2f}/{row['num_blocks']}, {row['mflops']:.2f} MFLOPs"
                          + (f", {row['latency_ms']:.3f} ms" if row["latency_ms"] is not None else ""))
    reference = rows[0]
    rows_sweep = rows if 0.0 in args.thresholds else rows[1:]

    baseline = _measure_baseline(accelerator, baseline_dir, model, cpu_model, test_loader, val_loader, latency_images,
                                 args)
    # the reference is the original backbone when it was measured: a model trained to skip can be worse at T = 0
    if baseline is not None and baseline.get("val_accuracy") is not None:
        reference_val, reference_name = baseline["val_accuracy"], "the original backbone's"
    else:
        reference_val, reference_name = reference["val_accuracy"], "T=0's"
    if val_loader is not None:
        chosen = choose_threshold(rows_sweep, reference_val, args.max_drop)
    else:
        chosen = min(r["threshold"] for r in rows_sweep)
    export_t = args.export_threshold if args.export_threshold is not None else chosen
    model.eval()
    outputs, labels, difficulty = outputs_labels_difficulty(accelerator, model,
                                                            val_loader if val_loader is not None else test_loader)
    for row in rows_sweep:
        row.update(adaptivity(outputs, row["threshold"], labels, difficulty))
    percentiles = output_percentiles(outputs)
    result = {
        "run": str(run["path"]), "dataset": info.source, "test_images": reference["test_count"],
        "val_images": len(data.val), "val_from": info.val_from,
        "threads": args.threads, "latency_samples": len(latency_images),
        "latency_runs": args.latency_runs, "all_blocks": reference, "rows": rows_sweep, "baseline": baseline,
        "chosen_threshold": chosen, "head_temperature": temperature,
        "choice_rule": f"largest T with validation accuracy >= {reference_name} - {args.max_drop} points, else the "
                       "most accurate T", "export_threshold": export_t,
        "head_output_percentiles": percentiles, "timed_as": timed_as, "head_saturation": saturation_note(percentiles),
    }
    if args.int8:
        if accelerator.is_main_process:
            result["int8"] = _evaluate_int8(cpu_model, data, latency_images, args.int8_thresholds or [
                row["threshold"] for row in rows_sweep], reference_val, reference_name, args, out_dir,
                accelerator.print)
        accelerator.wait_for_everyone()
    if args.controls:
        if accelerator.num_processes > 1:
            accelerator.print("note: --controls runs in one process only; skipped")
        else:
            from ._controls import control_rows

            val_part = data.val if len(data.val) else data.test
            count = min(args.control_val_images, len(val_part))
            result["controls"] = control_rows(
                cpu_model, chosen, data.test.__getitems__(list(range(len(data.test)))),
                val_part.__getitems__(list(range(count))), seeds=args.control_seeds, batch_size=args.batch_size)
            for control in result["controls"]:
                accelerator.print(f"control {control['method']} (seed {control['seed']}) at T={chosen:.2f}: test acc "
                                  f"{control['top1']:.4f}, gates {control['executed_gates']:.2f}, "
                                  f"{control['mflops']:.2f} MFLOPs")
    if accelerator.is_main_process:
        model.threshold = cpu_model.threshold = export_t
        export_path = out_dir / f"model_T{export_t:.2f}.pt"
        example = latency_images[:2] if len(latency_images) >= 2 else None
        try:
            export_torchscript(cpu_model, export_path, example_input=example)
            result["exported_model"] = str(export_path)
        except Exception as exc:  # the results still get written; the export step says why it was skipped
            result["exported_model"] = None
            result["export_skipped"] = f"TorchScript export failed: {type(exc).__name__}: " + (
                (str(exc).strip().splitlines() or [""])[0][:200])
        int8 = result.get("int8")
        _write_csv(out_dir / "results.csv", rows_sweep, baseline, int8["rows"] if int8 else None)
        _write_json(out_dir / "results.json", result)
        if not args.no_plot:
            plot = out_dir / "accuracy_vs_cost.png"
            _plot(rows_sweep, baseline, plot, f"{Path(args.run).name}: {info.source} (test split, "
                                              f"{reference['test_count']} images)", outputs, chosen,
                  int8["rows"] if int8 else None)
            result["plot"] = str(plot)
        print(format_table(rows_sweep, baseline, chosen, int8))
        print(f"chosen on validation: T = {chosen:.2f} ({result['choice_rule']})")
        if int8:
            print(f"INT8: chosen on INT8 validation: T = {int8['chosen_threshold']:.2f}; test images whose INT8 gates "
                  f"are the float head's: {min(r['gates_equal_float'] for r in int8['rows']):.2%} at worst; "
                  f"INT8 model: {int8['exported_model']}")
        if result["head_output_percentiles"]:
            spread = ", ".join(f"p{q} {v:.3f}" for q, v in result["head_output_percentiles"].items())
            print(f"head outputs S_L: {spread}"
                  + (f" (after the head temperature {temperature:.4g})" if temperature is not None else ""))
        if result["head_saturation"]:
            print(f"warning: {result['head_saturation']}")
        if result["exported_model"]:
            print(f"exported TorchScript model (T = {export_t:.2f}): {export_path}")
        else:
            print(f"skipped the TorchScript export: {result['export_skipped']}")
        if timed_as:
            print(f"latency timed on the {timed_as} model")
        print(f"results: {out_dir / 'results.csv'}, {out_dir / 'results.json'}"
              + (f", {result['plot']}" if "plot" in result else ""))
    accelerator.wait_for_everyone()
    return result


def _measure_baseline(accelerator, baseline_dir: Optional[Path], model, cpu_model, test_loader, val_loader,
                      latency_images, args) -> dict[str, Any]:
    """The original backbone's accuracy (on the loaders' device) and latency (a CPU copy, as the OFAS rows)."""
    from .._model import OFASModel

    if baseline_dir is not None:
        source = str(baseline_dir)
        timed = OFASModel.from_pretrained(baseline_dir, trust_remote_code=args.trust_remote_code).unwrap().eval()
        backbone = timed if accelerator.device.type == "cpu" else copy.deepcopy(timed).to(accelerator.device)
    else:
        source = "the run's own backbone, every block"
        backbone, timed = model.unwrap().eval(), cpu_model.unwrap().eval()
    test = evaluate_classifier(accelerator, backbone, test_loader, ofas=False)
    val = evaluate_classifier(accelerator, backbone, val_loader, ofas=False) if val_loader is not None else {}
    plan = model.plan
    baseline = {"source": source, "test_accuracy": test["accuracy"], "val_accuracy": val.get("accuracy"),
                "mflops": plan.backbone_flops / 1e6, "num_blocks": len(model.blocks), "latency_ms": None,
                "latency_p90_ms": None}
    if accelerator.is_main_process and len(latency_images):
        scripted = _script_backbone(timed, latency_images[:1])
        baseline["latency_ms"], baseline["latency_p90_ms"] = latency_over_images(
            scripted, latency_images, args.latency_runs, args.latency_warmup, args.threads)
    accelerator.wait_for_everyone()
    return baseline


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], baseline: Optional[dict[str, Any]],
               int8_rows: Optional[Sequence[dict[str, Any]]] = None) -> None:
    fields = ["threshold", "val_accuracy", "test_accuracy", "executed_blocks", "num_blocks", "executed_gates",
              "num_gates", "mflops", "latency_ms", "latency_p90_ms"]
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model"] + fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({"model": "ofas", **row})
        for row in int8_rows or ():
            writer.writerow({"model": "ofas-int8", **row})
        if baseline:
            writer.writerow({"model": "original", "threshold": "", "executed_blocks": baseline["num_blocks"],
                             "num_blocks": baseline["num_blocks"], **{k: baseline.get(k) for k in
                                                                        ("val_accuracy", "test_accuracy", "mflops",
                                                                         "latency_ms", "latency_p90_ms")}})


def _evaluate_int8(model, data, latency_images: torch.Tensor, thresholds: Sequence[float], reference_val,
                   reference_name: str, args, out_dir: Path, log) -> dict[str, Any]:
    """``--int8``: quantize the (CPU) model on training images, then score and time it in onnxruntime per T."""
    import tempfile

    import onnx
    import onnxruntime

    from .._bench import OnnxRuntimeModel
    from .._export import export_onnx, quantize_onnx, set_onnx_threshold
    from .._quantize import calibration_sample, int8_scores

    onnxruntime.set_default_logger_severity(3)  # the exporter's unused initializer, warned about per session
    model.eval()
    calibration = calibration_sample(data.train, args.calib_images, seed=data.info.split_seed)
    with tempfile.TemporaryDirectory(prefix="ofas-eval-int8-") as work:
        float_path = export_onnx(model, Path(work) / "float.onnx")
        int8_path = quantize_onnx(float_path, Path(work) / "int8.onnx", calibration)
        float_bytes, int8_bytes = float_path.read_bytes(), int8_path.read_bytes()
    fp32, int8 = OnnxRuntimeModel(float_bytes, threads=args.threads), OnnxRuntimeModel(int8_bytes, threads=args.threads)
    record = dict(int8.config["int8"])
    log(f"INT8: quantized on {len(calibration)} training images (largest |logit difference| to float32 on them "
        f"{record['max_logit_difference_on_calibration']:.3g})")
    splits = {"test": data.test, "val": data.val}
    float_probs = {name: _head_probabilities(model, split) for name, split in splits.items() if len(split)}
    rows = []
    for threshold in thresholds:
        int8.threshold = fp32.threshold = threshold
        scores = {name: _score_onnx(int8, split) for name, split in splits.items() if len(split)}
        predicted, labels, gates = scores["test"]
        measured = int8_scores(model, predicted, labels, gates, float_probs["test"], threshold)
        row = {"threshold": threshold, "runtime": "onnxruntime-int8", "precision": "int8",
               "val_accuracy": float((scores["val"][0] == scores["val"][1]).double().mean()) if "val" in scores
               else None,
               "test_accuracy": measured.pop("top1"), **measured,
               "latency_ms": None, "latency_p90_ms": None, "fp32_onnx_latency_ms": None, "int8_over_fp32_onnx": None}
        if len(latency_images):
            row["latency_ms"], row["latency_p90_ms"] = latency_over_images(
                int8, latency_images, args.latency_runs, args.latency_warmup, args.threads)
            row["fp32_onnx_latency_ms"] = latency_over_images(
                fp32, latency_images, args.latency_runs, args.latency_warmup, args.threads)[0]
            row["int8_over_fp32_onnx"] = row["latency_ms"] / row["fp32_onnx_latency_ms"]
        rows.append(row)
        log(f"INT8 T={threshold:.2f}: test acc {row['test_accuracy']:.4f}, blocks {row['executed_blocks']:.2f}/"
            f"{row['num_blocks']}" + (f", {row['latency_ms']:.3f} ms ({row['int8_over_fp32_onnx']:.2f}x the float32 "
                                      "ONNX graph)" if row["latency_ms"] is not None else ""))
    if rows[0]["val_accuracy"] is not None:
        chosen = choose_threshold(rows, reference_val, args.max_drop)
    else:
        chosen = min(row["threshold"] for row in rows)
    export_t = args.export_threshold if args.export_threshold is not None else chosen
    proto = set_onnx_threshold(onnx.load_from_string(int8_bytes), export_t)
    exported = out_dir / f"model_T{export_t:.2f}-int8.onnx"
    with atomic_path(exported, suffix=".onnx") as temporary:
        onnx.save(proto, str(temporary))
    record.pop("float_nodes", None)
    return {"runtime": "onnxruntime-int8", "rows": rows, "calibration_images": len(calibration),
            "calibration_split": "train", "threads": args.threads, "chosen_threshold": chosen,
            "choice_rule": f"largest T with INT8 validation accuracy >= {reference_name} - {args.max_drop} points, "
                           "else the most accurate T", "export_threshold": export_t, "exported_model": str(exported),
            "quantization": record}


def _head_probabilities(model, split, batch: int = 256) -> torch.Tensor:
    """The float head's outputs for every image of ``split``, in order (stem + head only)."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(split), batch):
            images, _ = split.__getitems__(list(range(start, min(start + batch, len(split)))))
            outputs.append(model.gate_probabilities(images)[1].float())
    return torch.cat(outputs)


def _score_onnx(runner, split, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted classes, labels and gates of every image of ``split`` through an OnnxRuntimeModel, one at a time."""
    predicted, labels, gates = [], [], []
    for start in range(0, len(split), batch):
        images, targets = split.__getitems__(list(range(start, min(start + batch, len(split)))))
        classes, chunk_gates = runner.classify(images)
        predicted.append(classes)
        labels.append(targets.to(torch.int64))
        gates.append(chunk_gates)
    return torch.cat(predicted), torch.cat(labels), torch.cat(gates)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``recipes/evaluate.py``: exit 2 with a message for a bad run folder, flag or dataset."""
    from ._errors import main_guard

    return main_guard(evaluate_run, argv)

