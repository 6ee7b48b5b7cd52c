"""Issue 10: how much room does a backbone leave for ANY once-for-all skip decision above the best fixed subset?

OFAS decides every gate once, from the stem. Whatever head is trained, its patterns can only pay if images differ in
which blocks they need, and if the head can tell them apart. This benchmark bounds the first part, with no head at
all, by oracles that are given what a head would have to guess:

- ``fixed_subset``: the best fixed set of blocks, closed greedily on validation images (one pattern for all);
- ``class_oracle``: one pattern per class, each closed greedily on the validation images of that class, and every
  test image run with the pattern of its TRUE class. An upper bound on class-conditional skipping (the paper's head
  knows the class to 33.8 % on the released ResNet-56, docs/results/head_probe.md), and a loose one: a pattern
  chosen on one class may also favour predicting that class;
- ``class_patterns_shuffled``: the same ten patterns, each test image given a random class's: the control that says
  how much of the oracle's gain is matching the pattern to the image, not merely having ten patterns;
- ``predicted_class_oracle``: the same patterns, each test image given the pattern of the class the full-depth
  model predicts for it (label-free, known only after running every block: still more than a head can know; a
  predicted class without validation images runs every block);
- ``difficulty_oracle``: the images the full-depth model is most sure of (top-1 minus top-2 probability at least
  the validation median: label-free, but known only after running every block) skip twice as many gates, chosen
  greedily on the sure validation images, and the others run every block: the same mean number of closed gates.
  The BlockDrop intuition (easy images need fewer blocks), as a bound.

Every pattern is chosen on validation images (the carve the backbone never trained on); the table is on the test
split. Costs are gates closed per image (blocks of a CIFAR ResNet cost about the same; MFLOPs are printed too).

Decision rule, written before the first run. At 6 of 18 gates closed (a third of the blocks, near the issue's 35 %
latency target), on the test split:
  (1) if ``class_oracle`` beats ``fixed_subset`` by less than 1 pp, knowing the class does not make a once-for-all
      decision worth having on this backbone (and a head knows it far less well);
  (2) if ``difficulty_oracle`` beats ``fixed_subset`` by 2 pp or more, a decision that sees difficulty would pay, and
      the question becomes where in the network difficulty is visible (the probe: only in the last stage);
  (3) if neither oracle beats ``fixed_subset`` by 2 pp, the backbone leaves no room for input-adaptive skipping
      above a static pruning, whatever the head.
Added after the first run, before measuring it: that run's ``class_oracle`` beat the full-depth model itself (90.4 %
with 2 gates closed against 86.6 % with none), so its patterns carry the label and bound nothing. Hence
``predicted_class_oracle``, and
  (1') if ``predicted_class_oracle`` beats ``fixed_subset`` by 2 pp or more, class-conditional skipping has room;
      otherwise rule 3 holds for the class too.
Added in session 7, before measuring it: ``probe_class_oracle_<point>``, the same class patterns, each test image
given the class that a linear probe (``benchmarks/head_probe.py``'s) predicts from the globally pooled features at a
decision point: ``stem`` (what the paper's head sees), ``stage1`` and ``stage2`` (after the first and second stage,
every block run), fitted on ``--probe-train-images`` training images. What a head there could reach if it knew the
class as well as a linear probe does. Optimistic for the later points: their patterns may close gates before the
point, which a decision made there could not.
  (4) if no point's ``probe_class_oracle`` beats ``fixed_subset`` by 1 pp, a later decision point does not rescue
      class-conditional skipping on this backbone.

    python -m benchmarks.oracle_patterns --out docs/results          # the kept ResNet-38-SD; about 15 min on 2 cores
    python -m benchmarks.oracle_patterns --smoke --out /tmp/oracle   # a random tiny model on random images, seconds
    python -m benchmarks.oracle_patterns --reuse docs/results/oracle_patterns.json --out docs/results

(from the repository root, as a module: it imports ``benchmarks.head_probe``'s probe)
                                        # the same patterns, test rows only (about 8 min)

Writes ``OUT/oracle_patterns.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ofas_wrap._atomic import write_atomic
from ofas_wrap.training import accuracy_under_patterns, greedy_path, read_run

try:
    from benchmarks.head_probe import fit_probe, score
except ModuleNotFoundError as error:  # `python benchmarks/oracle_patterns.py`: the repository root is not on sys.path
    if error.name != "benchmarks":
        raise
    raise SystemExit("run it from the repository root as a module: python -m benchmarks.oracle_patterns ...") from None

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "benchmarks" / "weights" / "cifar10" / "resnet38_sd"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
RULE_CLOSED = 6


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="a kept OFAS folder (save_pretrained)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--val-images", type=int, default=2000, help="validation images the greedy searches use")
    parser.add_argument("--test-images", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--closed", default="2,4,6", help="gates closed per image, a comma list")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--probe-train-images", type=int, default=10000,
                        help="training images the class probes of probe_class_oracle are fitted on")
    parser.add_argument("--reuse", default=None,
                        help="an earlier run's oracle_patterns.json: take its greedy patterns (same weights and "
                             "validation images) and only evaluate on test")
    parser.add_argument("--smoke", action="store_true", help="a random cifar ResNet-14 on random images: plumbing only")
    args = parser.parse_args(argv)
    try:
        args.closed = sorted({int(v) for v in args.closed.split(",")})
    except ValueError:
        parser.error(f"--closed must be a comma list of integers, got {args.closed!r}")
    if not args.closed or args.closed[0] < 1:
        parser.error("--closed needs integers >= 1")
    return args


@torch.no_grad()
def margins(model, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Top-1 minus top-2 softmax probability of the full-depth model (label-free sureness), and its prediction."""
    model.eval()
    sure, predicted = [], []
    with model.forced_gates(torch.ones(model.num_gates, dtype=torch.bool)):
        for start in range(0, len(images), batch_size):
            probs = model(images[start:start + batch_size]).softmax(1)
            top = probs.topk(2, dim=1).values
            sure.append(top[:, 0] - top[:, 1])
            predicted.append(probs.argmax(1))
    return torch.cat(sure), torch.cat(predicted)


def search_patterns(model, val: tuple[Tensor, Tensor], closed: Sequence[int], batch_size: int = 500) -> dict[str, Any]:
    """The greedy searches on validation images: the fixed subset, one pattern per class, the sure half's pattern
    (closing twice as many gates) and the sureness cut, for every count in ``closed``."""
    val_x, val_y = val
    classes = sorted(set(val_y.tolist()))
    most = max(closed)
    if 2 * most > model.num_gates:
        raise ValueError(f"closing {most} gates on average needs {2 * most} on the sure half, and the model has "
                         f"{model.num_gates}: lower --closed")
    started = time.perf_counter()
    fixed = greedy_path(model, val_x, val_y, most, batch_size)
    per_class = {c: greedy_path(model, val_x[val_y == c], val_y[val_y == c], most, batch_size) for c in classes}
    sure_val = margins(model, val_x, batch_size)[0]
    cut = float(sure_val.median())
    sure_path = greedy_path(model, val_x[sure_val >= cut], val_y[sure_val >= cut], 2 * most, batch_size)
    return {"search_s": round(time.perf_counter() - started, 1), "sure_margin_cut": cut,
            "fixed_patterns": {k: fixed[k - 1].int().tolist() for k in closed},
            "class_patterns": {k: {c: per_class[c][k - 1].int().tolist() for c in classes} for k in closed},
            "sure_patterns": {k: sure_path[2 * k - 1].int().tolist() for k in closed}}


def reuse_patterns(path: Path, closed: Sequence[int], val_images: int, weights: Optional[str]) -> dict[str, Any]:
    """The searches of an earlier run's JSON (same weights, same validation images), keys back to ints."""
    meta = json.loads(Path(path).read_text())["meta"]
    if meta.get("val_images") != val_images or (weights and Path(meta.get("weights") or "").name != Path(weights).name):
        raise SystemExit(f"--reuse {path}: it searched {meta.get('val_images')} validation images of "
                         f"{meta.get('weights')}, this run asks {val_images} of {weights}; rerun the search instead")
    missing = [k for k in closed if str(k) not in meta["fixed_patterns"]]
    if missing:
        raise SystemExit(f"--reuse {path} has no patterns for {missing} closed gates; rerun the search instead")
    ints = lambda table: {int(k): v for k, v in table.items()}  # noqa: E731
    return {"search_s": meta["search_s"], "sure_margin_cut": meta["sure_margin_cut"],
            "fixed_patterns": ints(meta["fixed_patterns"]), "sure_patterns": ints(meta["sure_patterns"]),
            "class_patterns": {int(k): ints(v) for k, v in meta["class_patterns"].items()}, "reused": str(path)}


PROBE_POINTS = ("stem", "stage1", "stage2")


@torch.no_grad()
def decision_features(model, images: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """Globally pooled features at each of ``PROBE_POINTS``, every block run: the stem's output (the head's input),
    and the outputs of the first and second stage (blocks grouped by their names' prefix, e.g. ``layer1``)."""
    stages = [block.name.rsplit(".", 1)[0] for block in model.plan.blocks]
    ends = [i for i in range(len(stages) - 1) if stages[i] != stages[i + 1]]
    if len(ends) < 2:
        raise ValueError(f"probe points after stages 1 and 2 need three stages; the blocks are {stages}")
    at = {ends[0]: "stage1", ends[1]: "stage2"}
    pooled: dict[str, list[Tensor]] = {name: [] for name in PROBE_POINTS}
    model.eval()
    for start in range(0, len(images), batch_size):
        features = model.stem(images[start:start + batch_size])
        pooled["stem"].append(features.mean((2, 3)))
        for index, block in enumerate(model.blocks[:ends[1] + 1]):
            features = block.forward_single(features, True)
            if index in at:
                pooled[at[index]].append(features.mean((2, 3)))
    return {name: torch.cat(values) for name, values in pooled.items()}


def probe_classes(model, train: tuple[Tensor, Tensor], test_x: Tensor, batch_size: int = 500,
                  l2: float = 1e-3) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Each decision point's linear-probe class for every test image (head_probe's probe, fitted on ``train``),
    and the probes' fitting accuracy on ``train``."""
    train_x, train_y = train
    classes = int(train_y.max()) + 1
    fit_features, test_features = decision_features(model, train_x, batch_size), decision_features(model, test_x,
                                                                                                  batch_size)
    predicted, fit_accuracy = {}, {}
    for point in PROBE_POINTS:
        probe, (mean, std) = fit_probe(fit_features[point], train_y, classes, l2)
        with torch.no_grad():
            predicted[point] = probe((test_features[point] - mean) / std).argmax(1)
            fit_accuracy[point] = score(probe, (mean, std), fit_features[point], train_y, classes)["accuracy"]
    return predicted, fit_accuracy


def oracle_rows(model, test: tuple[Tensor, Tensor], closed: Sequence[int], patterns: dict[str, Any],
                batch_size: int = 500, seed: int = 0,
                probe_predictions: Optional[dict[str, Tensor]] = None) -> list[dict[str, Any]]:
    """Every method's test accuracy at each count of closed gates (see the module docstring)."""
    test_x, test_y = test
    full = torch.ones(model.num_gates, dtype=torch.bool)
    as_mask = lambda values: torch.tensor(values, dtype=torch.bool)  # noqa: E731

    def row(method: str, k: int, chosen: Tensor) -> dict[str, Any]:
        return {"method": method, "closed_target": k,
                "executed_gates": float(chosen.float().sum(1).mean()),
                "mflops": float(model.executed_flops(chosen).double().mean()) / 1e6,
                "top1": accuracy_under_patterns(model, test_x, test_y, chosen, batch_size)}

    sureness, predicted = margins(model, test_x, batch_size)
    test_sure = sureness >= patterns["sure_margin_cut"]
    shuffled_class = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed))]
    rows = [row("full_depth", 0, full.expand(len(test_x), -1))]
    for k in closed:
        rows.append(row("fixed_subset", k, as_mask(patterns["fixed_patterns"][k]).expand(len(test_x), -1)))
        table = {c: as_mask(v) for c, v in patterns["class_patterns"][k].items()}
        pick = lambda classes, table=table: torch.stack([table.get(int(c), full) for c in classes])  # noqa: E731
        rows.append(row("class_oracle", k, pick(test_y)))
        rows.append(row("class_patterns_shuffled", k, pick(shuffled_class)))
        rows.append(row("predicted_class_oracle", k, pick(predicted)))
        for point, classes in (probe_predictions or {}).items():
            rows.append(row(f"probe_class_oracle_{point}", k, pick(classes)))
        by_sureness = torch.where(test_sure[:, None], as_mask(patterns["sure_patterns"][k])[None, :], full[None, :])
        rows.append(row("difficulty_oracle", k, by_sureness))
    patterns["test_sure_fraction"] = float(test_sure.float().mean())
    patterns["probe_test_accuracy"] = {point: float((classes == test_y).float().mean())
                                       for point, classes in (probe_predictions or {}).items()}
    patterns["predicted_test_accuracy"] = float((predicted == test_y).float().mean())
    return rows


def verdict(rows: Sequence[dict[str, Any]], k: int = RULE_CLOSED) -> dict[str, Any]:
    """The decision rule of the module docstring (rules 1-3 and 1'), at ``k`` closed gates."""
    at = {r["method"]: r["top1"] for r in rows if r["closed_target"] == k}
    if "fixed_subset" not in at:
        return {"closed": k, "outcome": f"not measured at {k} closed gates"}
    full = next((r["top1"] for r in rows if r["method"] == "full_depth"), None)
    probes = [name for name in at if name.startswith("probe_class_oracle_")]
    gain = {name: round(100 * (at[name] - at["fixed_subset"]), 2)
            for name in ("class_oracle", "predicted_class_oracle", "difficulty_oracle", *probes) if name in at}
    if gain.get("difficulty_oracle", 0) >= 2:
        outcome = "room for a decision that sees difficulty (rule 2)"
    elif gain.get("predicted_class_oracle", 0) >= 2:
        outcome = "room for class-conditional skipping (rule 1')"
    elif gain.get("class_oracle", 0) >= 2 and "predicted_class_oracle" not in gain:
        outcome = "room for class-conditional skipping only, bounded loosely (rules 1-3 do not settle it)"
    else:
        outcome = "no room above the static pruning for any once-for-all decision (rule 3)"
    if gain.get("class_oracle", 0) < 1:
        outcome += "; knowing the class is not worth a decision (rule 1)"
    elif full is not None and at.get("class_oracle", 0) > full:
        outcome += ("; the true-class oracle beats the full-depth model, so its patterns carry the label and bound "
                    "nothing")
    if probes:
        if max(gain[name] for name in probes) < 1:
            outcome += ("; no decision point's probe class beats it by 1 pp: a later decision does not rescue it "
                        "(rule 4)")
        else:
            best = max(probes, key=gain.get)
            outcome += f"; {best} beats it by {gain[best]:+.2f} pp: a later decision point has room (rule 4)"
    return {"closed": k, **{f"{name.replace('_oracle', '')}_gain_pp": value for name, value in gain.items()},
            "outcome": outcome}


def format_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Oracle skip patterns: room for input-adaptive skipping ({meta['model']})", "",
             f"Command: `{meta['command']}`", "",
             f"{meta['test_images']} test images, patterns chosen on {meta['val_images']} validation images (greedy "
             f"search {meta['search_s']} s); {meta['machine']}. See the script's docstring for the methods and the "
             "decision rule, written before the first run.", "",
             *([f"Class accuracy on test: the full model {100 * meta['predicted_test_accuracy']:.1f} %; linear probes ("
                f"fitted on {meta['probe_train_images']} training images) "
                + ", ".join(f"{point} {100 * value:.1f} %" for point, value in meta["probe_test_accuracy"].items())
                + ".", ""] if meta.get("probe_test_accuracy") else []),
             "| method | gates closed (target) | executed gates | MFLOPs | test top-1 |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['closed_target']} | {r['executed_gates']:.2f} | {r['mflops']:.1f} | "
                     f"{100 * r['top1']:.2f} % |")
    v = meta["verdict"]
    gains = ", ".join(f"{key[:-len('_gain_pp')].replace('_', ' ')} oracle {value:+.2f} pp"
                      for key, value in v.items() if key.endswith("_gain_pp"))
    lines += ["", f"**Rule at {v['closed']} closed gates:** "
              + (f"{gains} over fixed_subset: " if gains else "") + v["outcome"] + ".", ""]
    return "\n".join(lines)


def load(args: argparse.Namespace):
    import ofas_wrap
    from ofas_wrap.data import load_image_data

    if args.smoke:
        torch.manual_seed(0)
        model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(14), input_size=(3, 32, 32)).eval()
        g = torch.Generator().manual_seed(0)
        make = lambda n: (torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 2)  # noqa: E731
        return model, make(24), make(16), make(32), "random cifar_resnet14 (smoke)"
    model = ofas_wrap.OFASModel.from_pretrained(args.weights).eval()
    run_args = read_run(args.weights).get("args", {})  # the carve the backbone was trained with
    data = load_image_data(args.data, in_chans=3, augment=False, val_size=run_args.get("val_size", 0.1),
                           split_seed=run_args.get("split_seed", 0), normalization=model.config.get("normalization"))
    val = data.val.__getitems__(list(range(min(args.val_images, len(data.val)))))
    test_count = len(data.test) if not args.test_images else min(args.test_images, len(data.test))
    test = data.test.__getitems__(list(range(test_count)))
    train = data.train.__getitems__(list(range(min(args.probe_train_images, len(data.train)))))
    return model, tuple(val[:2]), tuple(test[:2]), tuple(train[:2]), Path(args.weights).name


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.closed = [1, 2]
    started = time.perf_counter()
    model, val, test, train, name = load(args)
    if args.reuse:
        meta = reuse_patterns(Path(args.reuse), args.closed, len(val[0]), None if args.smoke else args.weights)
    else:
        meta = search_patterns(model, val, args.closed, args.batch_size)
    probe_predictions, probe_fit = probe_classes(model, train, test[0], args.batch_size)
    meta["probe_fit_accuracy"], meta["probe_train_images"] = probe_fit, len(train[0])
    rows = oracle_rows(model, test, args.closed, meta, args.batch_size, probe_predictions=probe_predictions)
    meta.update({"model": name, "weights": None if args.smoke else str(args.weights),
                 "data": None if args.smoke else str(args.data), "val_images": len(val[0]),
                 "test_images": len(test[0]), "threads": torch.get_num_threads(),
                 "machine": f"{platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                            f"torch {torch.__version__}",
                 "command": "python -m benchmarks.oracle_patterns " + shlex.join(argv if argv is not None
                                                                                   else sys.argv[1:]),
                 "wall_s": None})
    meta["verdict"] = verdict(rows)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_markdown(rows, meta)
    for path, content in ((out / "oracle_patterns.md", text + "\n"),
                          (out / "oracle_patterns.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")):
        write_atomic(path, content)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
