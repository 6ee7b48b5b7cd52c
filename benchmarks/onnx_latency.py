"""Batch-1 latency of an OFAS model exported to ONNX, run by onnxruntime, at T = 0 and at skipping thresholds.

    python benchmarks/onnx_latency.py                        # cifar:resnet38, 32 px -> docs/results/onnx_latency.*
    python benchmarks/onnx_latency.py --quick --out ''       # fewer runs, nothing written

The ONNX file has an ``If`` per gated block (``ofas_wrap.export_onnx``); if onnxruntime really skips the branch
that is not taken, latency falls with the number of executed blocks. The head is untrained, so the thresholds are
chosen from its own outputs on the timing images to execute about 100 %, 75 %, 50 % and 25 % of the gates; each
row reports the executed blocks the PyTorch model gives on the same images. Timing: one image at a time, each
threshold's session timed over ``--runs`` runs per image after ``--warmup``, 1 intra-op thread, the median of
each image averaged over the images (as the other latency tables); thresholds are interleaved per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ofas_wrap
from ofas_wrap._export import set_onnx_threshold


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.runs, args.warmup = 4, 5, 2
    import onnx
    import onnxruntime

    torch.manual_seed(0)
    model = ofas_wrap.create_model(args.model, num_classes=10, input_size=(3, args.size, args.size)).eval()
    images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, probs = model.gate_probabilities(images)
    flat = probs.flatten().sort().values
    thresholds = []
    for fraction in args.fractions:  # T that leaves about `fraction` of the gates open on these images
        index = min(len(flat) - 1, max(0, int(round((1.0 - fraction) * len(flat)))))
        thresholds.append(0.0 if fraction >= 1.0 else float(flat[index]))
    with tempfile.TemporaryDirectory() as folder:
        path = ofas_wrap.export_onnx(model, Path(folder) / "model.onnx", images[:1])
        proto = onnx.load(str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {}
    for threshold in thresholds:
        set_onnx_threshold(proto, threshold)
        sessions[threshold] = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                                           providers=["CPUExecutionProvider"])
    name = sessions[thresholds[0]].get_inputs()[0].name
    medians = {t: [] for t in thresholds}
    for index in range(args.images):
        feed = {name: images[index:index + 1].numpy()}
        for threshold, session in sessions.items():
            for _ in range(args.warmup):
                session.run(None, feed)
            times = []
            for _ in range(args.runs):
                tick = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - tick)
            medians[threshold].append(statistics.median(times) * 1e3)
    rows = []
    for fraction, threshold in zip(args.fractions, thresholds):
        model.threshold = threshold
        with torch.no_grad():
            model(images)
            executed = float(model.last_gates.float().sum(1).mean()) + (len(model.blocks) - model.num_gates)
            mflops = float(model.executed_flops().double().mean()) / 1e6
        rows.append({"target_fraction": fraction, "threshold": round(threshold, 6), "executed_blocks": executed,
                     "num_blocks": len(model.blocks), "mflops": round(mflops, 2),
                     "latency_ms": round(statistics.mean(medians[threshold]), 4)})
    base = rows[0]["latency_ms"]
    lines = [f"# ONNX (onnxruntime {onnxruntime.__version__}, CPU, 1 thread) batch-1 latency, {args.model} at "
             f"{args.size} px", "",
             f"Command: `python benchmarks/onnx_latency.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             f"{args.images} images, {args.runs} runs each after {args.warmup} warm-up runs; mean of per-image "
             "medians. Untrained head: thresholds picked from its outputs to run a given share of the gates.", "",
             "| T | executed blocks | MFLOPs | latency (ms) | vs T = 0 |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['threshold']:.4f} | {row['executed_blocks']:.2f}/{row['num_blocks']} | "
                     f"{row['mflops']:.1f} | {row['latency_ms']:.3f} | {row['latency_ms'] / base:.2f}x |")
        print(lines[-1], flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "onnx_latency.json").write_text(json.dumps({"rows": rows, "model": args.model,
                                                           "onnxruntime": onnxruntime.__version__}, indent=2) + "\n")
        (out / "onnx_latency.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
