"""INT8 with real skipping (issue 27): float32 and INT8 ONNX graphs of adaptive and static CIFAR-10 ResNets, batch 1.

    python benchmarks/int8.py                  # the full run -> docs/results/int8.{md,json}
    python benchmarks/int8.py --smoke --out /tmp/x   # a random resnet8 at 16 px on random images: seconds

Models: the kept ResNet-38 (an OFAS run folder) and the released ResNet-56 (akamaster, adaptified; its gates are
forced, so their training does not matter), each in float32 and INT8 at forced patterns skipping 0 / 25 / 50 / 75 %
of the gated blocks (the same random patterns in both precisions); the plain static ResNet-20 / 32 (kept) and
ResNet-44 (released) at full depth. INT8 is :func:`ofas_wrap.quantize_onnx` calibrated on ``--calib-images``
training images (never test images). A forced pattern replaces the head's decisions inside the graph (the head
still runs). Accuracy: every image of the test split, one at a time through onnxruntime. Latency: one thread,
``--rounds`` interleaved rounds (every session once per round, in a shuffled order), each the median of
``--runs`` calls on one image; the median over rounds is reported. ``skip_efficiency`` = (1 - latency / latency at
full depth) / (1 - FLOPs / FLOPs at full depth), in the row's precision (as benchmarks/latency.py defines it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ofas_wrap  # noqa: E402

RELEASED = REPO.parent / "shared" / "data" / "pretrained" / "akamaster-cifar10"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
WEIGHTS = REPO / "benchmarks" / "weights" / "cifar10"
CHECKPOINTS = {44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}
RELEASED_MEAN, RELEASED_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the released checkpoints' README
FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 (lossless PNG archive)")
    parser.add_argument("--released", default=str(RELEASED), help="the akamaster folder (resnet.py, .th files)")
    parser.add_argument("--weights", default=str(WEIGHTS), help="the kept OFAS runs (resnet20, resnet32, resnet38)")
    parser.add_argument("--calib-images", type=int, default=256, help="training images to calibrate INT8 on")
    parser.add_argument("--eval-images", type=int, default=None, help="test images scored (default: all)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50, help="calls per session per round (median)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "results"), help="folder for int8.{md,json}; '' none")
    parser.add_argument("--smoke", action="store_true", help="a random resnet8 at 16 px, random images: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calib_images, args.eval_images, args.rounds, args.runs, args.warmup = 16, 8, 2, 3, 1
    return args


# ----------------------------------------------------------------------------------------------- models
def models(args: argparse.Namespace) -> list[tuple[str, Any, bool, str]]:
    """(name, OFASModel, adaptive, data key); the data key picks the normalisation."""
    if args.smoke:
        torch.manual_seed(args.seed)
        return [("resnet8-random", ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval(), True,
                 "random")]
    from ofas_wrap.models._user import build_from_factory, load_checkpoint_weights

    def released(depth: int) -> Any:
        network = build_from_factory(f"{args.released}/resnet.py:resnet{depth}")
        network = load_checkpoint_weights(network, Path(args.released) / CHECKPOINTS[depth]).eval()
        return ofas_wrap.adaptify(network, input_size=(3, 32, 32), threshold=0.0).eval()

    def kept(name: str) -> Any:
        return ofas_wrap.OFASModel.from_pretrained(Path(args.weights) / name, trust_remote_code=True).eval()

    return [("resnet38", kept("resnet38"), True, "kept"), ("resnet56", released(56), True, "released"),
            ("resnet20", kept("resnet20"), False, "kept"), ("resnet32", kept("resnet32"), False, "kept"),
            ("resnet44", released(44), False, "released")]


def images(args: argparse.Namespace, key: str, model: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(calibration images from the training split, test images, test labels), normalised for ``model``."""
    if key == "random":
        generator = torch.Generator().manual_seed(args.seed)
        size = model.config["input_size"]
        return (torch.randn(args.calib_images, *size, generator=generator),
                torch.randn(args.eval_images, *size, generator=generator),
                torch.randint(0, 10, (args.eval_images,), generator=generator))
    from ofas_wrap.data import load_image_data

    if key == "released":
        normalization = {"mean": list(RELEASED_MEAN), "std": list(RELEASED_STD)}
    else:  # a kept run: the normalisation it was trained with, recorded in its config
        normalization = model.config.get("normalization")
        if not normalization:
            raise SystemExit(f"{key} model records no normalisation in its config.json")
    bundle = load_image_data(args.data, in_chans=3, val_size=0, augment=False, normalization=normalization,
                             split_seed=args.seed, eval_subset=args.eval_images)
    pick = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(args.seed))[:args.calib_images]
    calibration, _ = bundle.train.__getitems__(pick.tolist())
    test, labels = bundle.test.__getitems__(list(range(len(bundle.test))))
    return calibration, test, labels


# ---------------------------------------------------------------------------------------------- sessions
def forced(proto: Any, mask: Optional[torch.Tensor]) -> Any:
    """A copy of ``proto`` whose gates are ``mask`` (True = run); the head still runs. ``None``: as it is."""
    import onnx
    from onnx import helper, numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    if mask is None:
        return copy
    head = next(node for node in copy.graph.node if "gates" in node.output)
    head.output[list(head.output).index("gates")] = "gates_head"
    pattern = mask.numpy().reshape(1, -1)
    copy.graph.initializer.extend([numpy_helper.from_array(np.zeros_like(pattern), "gates_off"),
                                   numpy_helper.from_array(pattern, "gates_forced")])
    index = list(copy.graph.node).index(head) + 1
    for offset, node in enumerate([helper.make_node("And", ["gates_head", "gates_off"], ["gates_none"]),
                                   helper.make_node("Or", ["gates_none", "gates_forced"], ["gates"])]):
        copy.graph.node.insert(index + offset, node)
    return copy


def session(proto: Any) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # not the exporter's unused initializers, once per session
    return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def top1(run: Any, test: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    for i in range(len(test)):
        logits = run.run(["logits"], {"image": test[i:i + 1].numpy()})[0]
        correct += int(logits.argmax() == int(labels[i]))
    return correct / max(len(test), 1)


def interleaved(sessions: dict[str, Any], image: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """Median over ``args.rounds`` rounds of each session's median call time (ms), sessions shuffled each round."""
    rng, rounds = random.Random(args.seed), {key: [] for key in sessions}
    for run in sessions.values():
        for _ in range(args.warmup):
            run.run(None, {"image": image})
    for _ in range(args.rounds):
        order = list(sessions)
        rng.shuffle(order)
        for key in order:
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                sessions[key].run(None, {"image": image})
                times.append(time.perf_counter() - start)
            rounds[key].append(statistics.median(times) * 1e3)
    return {key: statistics.median(values) for key, values in rounds.items()}


# ----------------------------------------------------------------------------------------------------- run
def bench_model(name: str, model: Any, adaptive: bool, key: str, args: argparse.Namespace, work: Path,
                log) -> list[dict[str, Any]]:
    import onnx

    calibration, test, labels = images(args, key, model)
    model.threshold = 0.0
    float_path = ofas_wrap.export_onnx(model, work / f"{name}.onnx")
    int8_path = ofas_wrap.quantize_onnx(float_path, work / f"{name}-int8.onnx", calibration)
    protos = {"fp32": onnx.load(str(float_path)), "int8": onnx.load(str(int8_path))}
    generator = torch.Generator().manual_seed(args.seed)
    n = model.num_gates
    masks = {0.0: torch.ones(n, dtype=torch.bool)}
    for fraction in (FRACTIONS[1:] if adaptive else ()):
        mask = torch.ones(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:max(1, round(fraction * n))]] = False
        masks[fraction] = mask
    flops = {fraction: float(model.plan.executed_flops(mask)) for fraction, mask in masks.items()}
    sessions = {(precision, fraction): session(forced(proto, mask))
                for precision, proto in protos.items() for fraction, mask in masks.items()}
    log(f"{name}: timing {len(sessions)} sessions")
    latency = interleaved({f"{p}@{f}": s for (p, f), s in sessions.items()}, test[:1].numpy(), args)
    rows = []
    for (precision, fraction), run in sessions.items():
        accuracy = top1(run, test, labels)
        ms = latency[f"{precision}@{fraction}"]
        full = latency[f"{precision}@0.0"]
        cut = 1 - flops[fraction] / flops[0.0]
        rows.append({"model": name, "adaptive": adaptive, "precision": precision, "skip_fraction": fraction,
                     "executed_blocks": int(masks[fraction].sum()), "gated_blocks": n,
                     "mflops": flops[fraction] / 1e6, "top1": accuracy, "latency_ms": ms,
                     "int8_over_fp32": (ms / latency[f"fp32@{fraction}"]) if precision == "int8" else None,
                     "skip_efficiency": ((1 - ms / full) / cut) if cut > 0 else None})
        log(f"  {precision} skip {fraction:.2f}: top-1 {accuracy:.4f}, {ms:.3f} ms")
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# INT8 with real skipping (batch 1, {meta['threads']} thread, onnxruntime {meta['onnxruntime']})", "",
             f"Calibration: {meta['calib_images']} training images; accuracy on {meta['eval_images']} test images; "
             f"latency: median of {meta['rounds']} interleaved rounds x {meta['runs']} calls. {meta['note']}", "",
             "| model | precision | skipped | blocks run | MFLOPs | top-1 | latency (ms) | INT8 / FP32 | "
             "skip efficiency |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = f"{row['int8_over_fp32']:.3f}" if row["int8_over_fp32"] is not None else ""
        efficiency = f"{row['skip_efficiency']:.2f}" if row["skip_efficiency"] is not None else ""
        lines.append(f"| {row['model']}{'' if row['adaptive'] else ' (static)'} | {row['precision']} | "
                     f"{row['skip_fraction']:.0%} | {row['executed_blocks']}/{row['gated_blocks']} | "
                     f"{row['mflops']:.1f} | {row['top1']:.2%} | {row['latency_ms']:.3f} | {ratio} | {efficiency} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    import onnxruntime

    args = parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ofas-int8-bench-") as work:
        for name, model, adaptive, key in models(args):
            rows += bench_model(name, model, adaptive, key, args, Path(work), lambda text: print(text, flush=True))
    meta = {"threads": 1, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "calib_images": args.calib_images, "eval_images": args.eval_images or "all", "rounds": args.rounds,
            "runs": args.runs, "seed": args.seed, "smoke": args.smoke, "seconds": round(time.time() - started, 1),
            "note": "Smoke run: a random model on random images, no meaning." if args.smoke else ""}
    table = markdown(rows, meta)
    print(table)
    if args.out:
        from ofas_wrap._atomic import write_atomic

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "int8.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        write_atomic(out / "int8.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
