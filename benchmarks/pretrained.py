"""Issue 15's evidence: a user's released 200-epoch ResNet-56 made adaptive, judged against the same repository's
ResNet-20/32/44 (the static curve at full training quality) by issue 10's decision rule (``benchmarks/verdict.py``).

The user's journey, on ``../shared/data/pretrained/akamaster-cifar10/`` (their class, their checkpoints, option-A
shortcuts) and the lossless ``cifar10-png.tar.gz``:

* ``original``: the released ResNet-56 as it is; ``static_resnet20/32/44``: the released shallower ones;
* ``original_finetuned``: the ResNet-56 after the same fine-tune as OFAS with every gate open and nothing to learn
  about skipping (``CONTROL_ARGS``): extra training is not mistaken for OFAS's merit;
* ``ofas_e2e``: ``recipes/e2e_finetune.py --model resnet.py:resnet56 --weights ...`` with ``METHOD_ARGS``, one run
  per seed, swept over T with ``recipes/evaluate.py``;
* ``ofas_rl`` (with ``--rl-args``): ``recipes/rl_finetune.py --init`` each seed's e2e run, swept and judged instead
  of the e2e run (the paper's two phases);
* the controls of issue 10 at each seed's chosen T: ``fixed_subset`` (chosen greedily on validation images),
  ``shuffled`` and ``random_rates`` (``ofas_wrap.training``).

Held-out data (issue 15 item 7): the released models saw all 50,000 training images, so T is chosen on a fixed,
seeded half of the test split (``--val-from test``) and everything is reported on the other half.

The operating point, fixed before the runs: for each seed, the T that is the most accurate on validation among
those that execute at most ``1 - --target-cut`` of the original's MFLOPs on validation (the cheapest T if none
does). The controls are evaluated at that T.

Latency: batch 1, ``--runtime torchscript`` (default: what a deployment runs; the option-A ``LambdaLayer`` is
scripted through its ``torch.fx`` trace by ``script_with_fx_fallback``; a model that still does not script is timed
eager and its row says so in ``timed_as``) or ``eager`` for every model alike, ``--threads`` intra-op threads,
the mean over ``--latency-samples`` test images of each one's median over ``--latency-runs`` runs, every model in
this one process. Keep the machine
otherwise idle while it runs (pause a background training with ``kill -STOP``).

    python benchmarks/pretrained.py --work ../runs/pretrained --out docs/results       # the documented budget
    python benchmarks/pretrained.py --smoke --work /tmp/w --out /tmp/o                   # a check of the plumbing

Writes ``OUT/pretrained.json`` (rows in the format of ``cifar10.json``, ``meta.verdict``), ``OUT/pretrained.md``
and ``OUT/pretrained.png``. Run folders in ``--work`` are reused when complete, so a stopped run continues.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._runner import run_or_reuse, run_recipe, save_figure, work_folders, write_report  # noqa: E402
from benchmarks._timing import InterleavedTimer, control_patterns, timed_model  # noqa: E402
from ofas_wrap.compare import RULE, decide, sentence  # noqa: E402

RELEASED = REPO.parent / "shared" / "data" / "pretrained" / "akamaster-cifar10"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
CHECKPOINTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
               56: "resnet56-4bfd9763.th"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what these checkpoints were trained with (their README)
# The recipe under test (issue 10's terms on a fully trained model), fixed before the runs it is judged by:
# BatchNorm statistics protected, a gentle backbone learning rate, distillation from the released model,
# sampled gates pulled to a 60 % execution rate per gate, an information term against a fixed pattern.
COMMON_ARGS = "--freeze-bn --lr 0.002 --distill-weight 1.0 --distill-tau 4"
METHOD_ARGS = ("--gate-sampling bernoulli --gate-bias-init 1.5 --head-lr 0.05 --skip-weight 0 --target-rate 0.6 "
               "--info-weight 0.05")
CONTROL_ARGS = "--gate-sampling threshold --threshold 0 --skip-weight 0"  # every gate open: fine-tuning alone
THRESHOLDS = "0.1:0.9:0.1"
OFAS_METHODS = ("ofas_e2e", "ofas_rl")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--released", default=str(RELEASED), help="folder of resnet.py and the .th checkpoints")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", default=str(REPO.parent / "runs" / "pretrained"))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1,
                        help="fine-tune epochs (of the 50,000 training images); --max-steps in --common-args "
                             "overrides it")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--eval-subset", type=int, default=None, help="validation / test images each (all: 5,000)")
    parser.add_argument("--method-args", default=METHOD_ARGS)
    parser.add_argument("--common-args", default=COMMON_ARGS)
    parser.add_argument("--rl-args", default=None,
                        help="flags of an RL phase after each seed's e2e run (e.g. '--policy-loss blockdrop "
                             "--threshold 0.75 --max-steps 120'); its model is the one judged (method ofas_rl)")
    parser.add_argument("--thresholds", default=THRESHOLDS)
    parser.add_argument("--target-cut", type=float, default=0.35,
                        help="operating point: at least this share of the original's MFLOPs saved on validation")
    parser.add_argument("--control-val-images", type=int, default=1000,
                        help="validation images the greedy fixed_subset search uses")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--latency-runs", type=int, default=15)
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="every model is timed once per round, the order rotating; a row's latency is the median "
                             "over the rounds (slow stretches of the machine fall on every row alike)")
    parser.add_argument("--runtime", choices=["torchscript", "eager"], default="torchscript",
                        help="what is timed: the TorchScript export (a deployment's runtime) or the eager model")
    parser.add_argument("--skip", nargs="*", default=[], choices=["finetune_control"])
    parser.add_argument("--static-depths", type=int, nargs="+", default=[20, 32, 44], choices=[20, 32, 44],
                        help="the released shallower ResNets on the static curve (fine-tuned too with "
                             "--static-finetune)")
    parser.add_argument("--static-finetune", action="store_true",
                        help="also give the released ResNet-20/32/44 the control's fine-tune (every gate open): rows "
                             "static_resnetN_finetuned beside the released ones (the rule's curve stays the released "
                             "models', as written before the runs)")
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long plumbing check: 2 steps, 64 images, 1 seed, 1 threshold, the "
                             "ResNet-20 alone on the static curve (and alone fine-tuned with --static-finetune)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.train_subset, args.eval_subset = args.seeds[:1], 64, 64
        args.thresholds, args.latency_samples, args.latency_runs, args.control_val_images = "0.5", 2, 2, 16
        args.static_depths, args.latency_rounds = [20], 1  # one static network: the plumbing is the same
        args.common_args += " --max-steps 2 --batch-size 32"
        if args.rl_args:
            args.rl_args += " --max-steps 2 --batch-size 32"
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive whole number, got {args.epochs} (for part of an epoch, pass "
                     "--max-steps N in --common-args)")
    if not 0.0 < args.target_cut < 1.0:
        parser.error(f"--target-cut must be in (0, 1), got {args.target_cut}")
    return args


# ------------------------------------------------------------------------------------------- the models
def released_model(args: argparse.Namespace, depth: int) -> torch.nn.Module:
    from ofas_wrap.models._user import build_from_factory, load_checkpoint_weights

    model = build_from_factory(f"{args.released}/resnet.py:resnet{depth}")
    return load_checkpoint_weights(model, Path(args.released) / CHECKPOINTS[depth]).eval()


def load_data(args: argparse.Namespace):
    from ofas_wrap.data import load_image_data

    return load_image_data(args.data, in_chans=3, eval_subset=args.eval_subset, augment=False,
                           normalization={"mean": list(MEAN), "std": list(STD)}, val_from="test")


@torch.no_grad()
def accuracy(model: torch.nn.Module, split) -> float:
    from ofas_wrap.data import make_loader

    correct = count = 0
    for images, labels in make_loader(split, 500):
        correct += int((model(images).argmax(1) == labels).sum())
        count += int(labels.numel())
    return correct / max(count, 1)


def static_rows(args: argparse.Namespace, data, timer: InterleavedTimer) -> list[dict[str, Any]]:
    from ofas_wrap import adaptify

    rows = []
    for depth in (*args.static_depths, 56):
        model = released_model(args, depth)
        plan = adaptify(model, input_size=(3, 32, 32)).plan  # FLOPs at the 32 px the model is fed
        timed, kind = timed_model(model, args)
        rows.append({
            "method": "original" if depth == 56 else f"static_resnet{depth}", "threshold": None, "seed": None,
            "top1": accuracy(model, data.test), "val_top1": accuracy(model, data.val),
            "executed_blocks": float(3 * (depth - 2) // 6), "mflops": plan.backbone_flops / 1e6,
            "latency_ms": None, "_timing": timer.add(f"resnet{depth}", timed), "timed_as": kind, "chosen": True,
            "train_seconds": 0.0, "adaptive_gates": None, "distinct_patterns": None, "mi_bits": None,
        })
        print(f"[pretrained] released resnet{depth}: test {100 * rows[-1]['top1']:.2f} %", flush=True)
    return rows


# ------------------------------------------------------------------------------------------- the runs
def finetune(args: argparse.Namespace, run: Path, flags: str, seed: int, log: Path, depth: int = 56) -> float:
    """``recipes/e2e_finetune.py`` from a released ResNet into ``run`` (resumed / reused); its wall seconds."""
    return run_or_reuse("e2e_finetune", run, finetune_command(args, flags, seed, depth), log, "pretrained")


def finetune_command(args: argparse.Namespace, flags: str, seed: int, depth: int = 56) -> list[str]:
    """The flags of ``recipes/e2e_finetune.py`` for one fine-tune from the released ResNet-``depth``."""
    command = ["--model", f"{args.released}/resnet.py:resnet{depth}",
               "--weights", str(Path(args.released) / CHECKPOINTS[depth]),
               "--mean", *map(str, MEAN), "--std", *map(str, STD), "--dataset", args.data, "--val-from", "test",
               "--seed", str(seed), *args.common_args.split(), *flags.split()]
    if "--max-steps" not in args.common_args:
        command += ["--epochs", str(args.epochs)]
    for flag, value in (("--train-subset", args.train_subset), ("--eval-subset", args.eval_subset)):
        if value:
            command += [flag, str(value)]
    return command


def rl_phase(args: argparse.Namespace, init: Path, run: Path, seed: int, log: Path) -> float:
    """``recipes/rl_finetune.py --init INIT`` with ``--rl-args`` into ``run`` (resumed / reused); its wall seconds."""
    command = ["--init", str(init), "--trust-remote-code", "--seed", str(seed), *args.rl_args.split()]
    if args.eval_subset:
        command += ["--eval-subset", str(args.eval_subset)]
    return run_or_reuse("rl_finetune", run, command, log, "pretrained")


def sweep(args: argparse.Namespace, run: Path, log: Path) -> dict[str, Any]:
    """``recipes/evaluate.py`` over the thresholds (accuracy, cost, adaptivity; latency is timed here later)."""
    out = run / "eval"
    if not (out / "results.json").is_file():
        command = [str(run), "--trust-remote-code",
                   "--thresholds", args.thresholds, "--latency-samples", "0", "--no-plot", "--output", str(out)]
        if args.eval_subset:
            command += ["--eval-subset", str(args.eval_subset)]
        print(f"[pretrained] recipes/evaluate.py {' '.join(command)}", flush=True)
        run_recipe("evaluate", command, log)
    return json.loads((out / "results.json").read_text())


def operating_point(rows: list[dict[str, Any]], original_val_mflops: float, cut: float) -> dict[str, Any]:
    """The most accurate row on validation among those within the cost budget on validation; else the cheapest."""
    budget = (1.0 - cut) * original_val_mflops
    within = [r for r in rows if r["val_mflops"] <= budget]
    if within:
        return max(within, key=lambda r: (r["val_accuracy"], -r["val_mflops"]))
    return min(rows, key=lambda r: r["val_mflops"])


def ofas_rows(args: argparse.Namespace, seed: int, run: Path, result: dict[str, Any], seconds: float,
              original_val_mflops: float, data, timer: InterleavedTimer,
              method: str = "ofas_e2e") -> tuple[list[dict[str, Any]], list[dict]]:
    from ofas_wrap import OFASModel
    from ofas_wrap.training import control_rows

    chosen = operating_point(result["rows"], original_val_mflops, args.target_cut)
    model = OFASModel.from_pretrained(run, trust_remote_code=True).eval()
    timed, kind = timed_model(model, args)
    rows = []
    images = timer.images
    for row in result["rows"]:
        rows.append({
            "method": method, "threshold": row["threshold"], "seed": seed, "top1": row["test_accuracy"],
            "val_top1": row["val_accuracy"], "executed_blocks": row["executed_blocks"], "mflops": row["mflops"],
            "val_mflops": row["val_mflops"], "latency_ms": None, "timed_as": kind,
            "_timing": timer.add(f"{method}/seed{seed}/T{row['threshold']}", timed, threshold=row["threshold"]),
            "chosen": row is chosen, "train_seconds": seconds, "adaptive_gates": row.get("adaptive_gates"),
            "distinct_patterns": row.get("distinct_patterns"), "mi_bits": row.get("mi_bits"),
            "difficulty_corr": row.get("difficulty_corr"),
        })
    threshold = chosen["threshold"]
    test_split = data.test.__getitems__(list(range(len(data.test))))
    val_count = min(args.control_val_images, len(data.val))
    val_split = data.val.__getitems__(list(range(val_count)))
    controls = control_rows(model, threshold, test_split, val_split, seeds=(seed,))
    model.threshold = threshold
    with torch.no_grad():
        _, probs = model.gate_probabilities(images)
    own = (probs >= threshold).cpu()
    for control in controls:
        patterns = control_patterns(control, own)
        control.update({"seed": seed, "val_top1": None, "latency_ms": None, "timed_as": kind,
                        "_timing": timer.add(f"{control['method']}/seed{seed}", timed, threshold, patterns),
                        "executed_blocks": control["executed_gates"] + (len(model.blocks) - model.num_gates),
                        "chosen": True, "train_seconds": seconds, "adaptive_gates": 0 if
                        control["method"] == "fixed_subset" else None, "distinct_patterns": None, "mi_bits": None})
    print(f"[pretrained] seed {seed}: T = {threshold:.2f}, test {100 * chosen['test_accuracy']:.2f} %, "
          f"{chosen['executed_blocks']:.2f} blocks; controls "
          + ", ".join(f"{c['method']} {100 * c['top1']:.2f} %" for c in controls), flush=True)
    return rows, controls


# ------------------------------------------------------------------------------------------- the report
def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    original = next(r for r in rows if r["method"] == "original")
    lines = ["| method | seed | T | val top-1 (%) | test top-1 (%) | Δ test (pp) | blocks | MFLOPs | latency (ms) "
             "| Δ latency | adaptive gates / patterns | MI (bits) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["method"] in OFAS_METHODS and not row["chosen"]:
            continue

        def cell(value, spec="", scale=1.0):
            return "-" if value is None else format(scale * value, spec)

        lines.append(
            f"| {row['method']} | {cell(row.get('seed'), 'd', 1)} | {cell(row['threshold'], '.2f')} "
            f"| {cell(row.get('val_top1'), '.2f', 100)} | {100 * row['top1']:.2f} "
            f"| {100 * (row['top1'] - original['top1']):+.2f} | {row['executed_blocks']:.2f} | {row['mflops']:.2f} "
            f"| {cell(row['latency_ms'], '.3f')} "
            f"| {_change(row['latency_ms'], original['latency_ms'])} "
            f"| {cell(row.get('adaptive_gates'))} / {cell(row.get('distinct_patterns'))} "
            f"| {cell(row.get('mi_bits'), '.2f')} |")
    verdict = meta["verdict"]
    lines += ["", f"**Verdict**: {sentence(verdict)}", "", f"Rule (written before the runs): {RULE}",
              f"Operating point: {meta['operating_point']}", f"Held-out data: {meta['held_out']}",
              f"Budget: {meta['budget']}", f"Wall time of the user's journey: {meta['journey']}",
              f"Machine: {meta['machine']}", f"Command: `{meta['command']}`", f"Commit: {meta['commit']}"]
    return "\n".join(lines)


def released_static(row: dict[str, Any]) -> bool:
    """A released ResNet-20/32/44 as it is: the decision rule's static curve (not the fine-tuned controls)."""
    return row["method"].startswith("static") and not row["method"].endswith("_finetuned")


def _change(value: Optional[float], reference: float) -> str:
    return "-" if value is None else f"{100 * (value / reference - 1):+.1f} %"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    static = sorted((r["latency_ms"], 100 * r["top1"]) for r in rows
                    if released_static(r) or r["method"] == "original")
    axis.plot(*zip(*static), "D--", color="gray", label="released ResNet-20/32/44/56")
    for seed in sorted({r["seed"] for r in rows if r["method"] in OFAS_METHODS}):
        points = sorted((r["latency_ms"], 100 * r["top1"]) for r in rows
                        if r["method"] in OFAS_METHODS and r["seed"] == seed)
        axis.plot(*zip(*points), "o-", markersize=3, alpha=0.7, label=f"OFAS seed {seed}")
    tuned = sorted((r["latency_ms"], 100 * r["top1"]) for r in rows if r["method"].endswith("_finetuned")
                   and r["method"].startswith("static"))
    if tuned:
        axis.plot(*zip(*tuned), "d", color="dimgray", markerfacecolor="none", label="ResNet-20/32/44, same fine-tune")
    for method, marker in (("fixed_subset", "s"), ("shuffled", "x"), ("random_rates", "+"),
                           ("original_finetuned", "*")):
        points = [(r["latency_ms"], 100 * r["top1"]) for r in rows if r["method"] == method]
        if points:
            axis.plot(*zip(*points), marker, linestyle="none", label=method)
    chosen = [(r["latency_ms"], 100 * r["top1"]) for r in rows if r["method"] in OFAS_METHODS and r["chosen"]]
    axis.plot(*zip(*chosen), "o", markersize=9, markerfacecolor="none", color="tab:red", label="chosen T")
    shown = [s[1] for s in static] + [point[1] for point in chosen]  # every operating point stays on the chart
    axis.set_ylim(min(shown) - 2, max(shown) + 1)
    runtimes = sorted({r.get("timed_as") or "eager" for r in rows if r.get("latency_ms") is not None})
    axis.set_xlabel(f"batch-1 CPU latency, {' / '.join(runtimes)} (ms)")
    axis.set_ylabel("test top-1 (%), held-out half")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title("Released CIFAR-10 ResNet-56 + OFAS against the released static ResNets")
    save_figure(figure, path)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    work, out, log = work_folders(args.work, args.out)
    torch.manual_seed(0)

    seconds, results = {}, {}
    if "finetune_control" not in args.skip:
        seconds["control"] = finetune(args, work / "finetuned", CONTROL_ARGS, 0, log)
    method = "ofas_rl" if args.rl_args else "ofas_e2e"
    judged = {}
    for seed in args.seeds:
        run = judged[seed] = work / f"ofas_seed{seed}"
        seconds[seed] = finetune(args, run, args.method_args, seed, log)
        if args.rl_args:
            judged[seed] = work / f"ofas_seed{seed}_rl"
            seconds[seed] += rl_phase(args, run, judged[seed], seed, log)
        results[seed] = sweep(args, judged[seed], log)

    data = load_data(args)
    images = data.test.__getitems__(list(range(min(args.latency_samples, len(data.test)))))[0]
    timer = InterleavedTimer(images, runs=args.latency_runs, threads=args.threads, rounds=args.latency_rounds)
    rows = static_rows(args, data, timer)
    original = next(r for r in rows if r["method"] == "original")
    from ofas_wrap import OFASModel

    original_val_mflops = original["mflops"]  # every block runs whatever the image
    if "finetune_control" not in args.skip:
        tuned = OFASModel.from_pretrained(work / "finetuned", trust_remote_code=True).unwrap().eval()
        rows.append({**original, "method": "original_finetuned", "top1": accuracy(tuned, data.test),
                     "val_top1": accuracy(tuned, data.val), "train_seconds": seconds["control"]})  # timed as it
    controls, chosen = [], []
    for seed in args.seeds:
        seed_rows, seed_controls = ofas_rows(args, seed, judged[seed], results[seed], seconds[seed],
                                             original_val_mflops, data, timer, method)
        rows += seed_rows + seed_controls
        controls += seed_controls
        chosen += [r for r in seed_rows if r["chosen"]]
    if args.static_finetune:
        for depth in args.static_depths:
            released = next(r for r in rows if r["method"] == f"static_resnet{depth}")
            run = work / f"finetuned_resnet{depth}"
            spent = finetune(args, run, CONTROL_ARGS, 0, log, depth)
            tuned = OFASModel.from_pretrained(run, trust_remote_code=True).unwrap().eval()
            rows.append({**released, "method": f"static_resnet{depth}_finetuned", "top1": accuracy(tuned, data.test),
                         "val_top1": accuracy(tuned, data.val), "train_seconds": spent})
    print(f"[pretrained] timing {len(timer.jobs)} models in {args.latency_rounds} interleaved rounds", flush=True)
    timer.run()
    timer.fill(rows)  # the fine-tuned controls copied their released model's key: the same architecture
    static = [(r["latency_ms"], r["top1"]) for r in rows
              if released_static(r) or r is original]
    verdict = decide(static, chosen, controls, method)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    journey = statistics.fmean(seconds[s] for s in args.seeds)
    meta = {
        "verdict": verdict,
        "operating_point": (f"per seed, the most accurate T on validation among those executing at most "
                            f"{100 * (1 - args.target_cut):.0f} % of the original's MFLOPs on validation "
                            f"(the cheapest T if none does); thresholds {args.thresholds}"),
        "held_out": ("val-from test: T chosen on a fixed, seeded half of the test split "
                     f"({len(data.val)} images), reported on the other half ({len(data.test)} images); the released "
                     "models saw every training image"),
        "budget": (f"fine-tune from the released ResNet-56 on {args.train_subset or 'all 50,000'} training images: "
                   f"{args.common_args}"
                   + ("" if "--max-steps" in args.common_args else f" --epochs {args.epochs}")
                   + f" (batch 128 unless set); OFAS: {args.method_args}"
                   + (f"; then RL: {args.rl_args}" if args.rl_args else "") + "; control original_finetuned: "
                   f"{CONTROL_ARGS}"),
        "journey": f"{journey / 60:.1f} min of fine-tuning per seed on this machine (evaluation excluded)",
        "machine": (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                    f"latency with {args.threads} thread(s), batch 1, {args.runtime} (a row that did not script: "
                    f"timed_as eager), mean over {len(images)} test images "
                    f"of each one's median over {args.latency_runs} runs, the median over "
                    f"{args.latency_rounds} rounds in which every model is timed in turn"),
        "command": "python benchmarks/pretrained.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": commit,
    }
    write_report(out, "pretrained", rows, meta, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
