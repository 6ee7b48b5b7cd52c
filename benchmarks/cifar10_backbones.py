"""Train the CIFAR-10 backbones of issue 9 one after the other, resumably, and keep each one when it finishes.

    nohup python benchmarks/cifar10_backbones.py > ../runs/backbones.log 2>&1 &      # start or continue all
    python benchmarks/cifar10_backbones.py --dry-run                                 # the commands, nothing run
    python benchmarks/cifar10_backbones.py --only resnet38 resnet20                  # some of them
    python benchmarks/cifar10_backbones.py --rescore --only resnet110_ofas_ft        # score kept folders again

Each backbone is ``recipes/train_backbone.py`` into ``RUNS/c10-<short name>`` (outside the checkout), in bf16
autocast where the CPU has native bf16 kernels (``--mixed-precision``; the recipe trains in fp32 and says so where
it has not), continued with ``--resume`` when a checkpoint exists, so a stopped session loses at most the steps
since the last checkpoint: rerun the same command. A finished run is evaluated on the whole test split (a plain
backbone with every block; an OFAS run as deployed, gated at its saved threshold, and with every block beside) and
kept as ``benchmarks/weights/cifar10/<name>/`` (the run folder without checkpoints and logs: about 2 MB of
safetensors), with its command, wall time and test accuracy in ``benchmarks/weights/cifar10/backbones.json``. A
backbone that is already kept is not trained again (a new machine has no run folders): delete its folder to retrain
it.

A new machine loses ``RUNS`` too, and with it an unfinished run. ``--stash-only`` copies each unfinished run's latest
checkpoint (with its ``args.json`` / ``data.json``: about 4-5 MB) into ``benchmarks/weights/cifar10/partial/<name>/``,
to be committed at the end of a session; a later run of this script on a machine without the run folder restores it
from there and resumes (exactly: weights, optimizer, schedule, data order and random states are in the checkpoint),
and deletes the stash once the backbone is kept.

    python benchmarks/cifar10_backbones.py --stash-only          # before a session ends, then commit partial/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
KEEP = REPO / "benchmarks" / "weights" / "cifar10"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-png.tar.gz"
# name -> (backbone spec, extra flags, run folder); the order is the order of training: the OFAS starting point and
# the static curve it is judged against first, the plain ResNet-38 (the other starting point) last
BACKBONES = {
    "resnet38_sd": ("cifar:resnet38", ["--drop-path", "0.5"], "c10-r38-sd"),
    "resnet20": ("cifar:resnet20", [], "c10-r20"),
    "resnet32": ("cifar:resnet32", [], "c10-r32"),
    "resnet26": ("cifar:resnet26", [], "c10-r26"),
    "resnet38": ("cifar:resnet38", [], "c10-r38"),
    # issue 9's accuracy goal (>= 91.5 %): the 30-epoch plain ResNet-38 reached 90.97 %, its validation still rising
    "resnet38_e60": ("cifar:resnet38", [], "c10-r38-e60"),
    # the static curve at the same 60 epochs: what an OFAS model started from resnet38_e60 must beat
    "resnet20_e60": ("cifar:resnet20", [], "c10-r20-e60"),
    "resnet26_e60": ("cifar:resnet26", [], "c10-r26-e60"),
    "resnet32_e60": ("cifar:resnet32", [], "c10-r32-e60"),
    # issue 26: the paper's deep row (Table III's ResNet-110) and the static network with half its blocks, at the
    # 30-epoch budget of the kept static curve
    "resnet110": ("cifar:resnet110", [], "c10-r110"),
    "resnet56": ("cifar:resnet56", [], "c10-r56"),
}
# issue 26: OFAS trained from the first step (e2e_finetune without weights, the gate terms annealed in), then RL,
# together the 30-epoch budget of the static curve (29 + 1 epochs). The gate flags are the pilot's choice
# (benchmarks/scratch_pilot.py, docs/results/scratch_pilot.md), fixed here before the long runs.
SCRATCH_COMMON = ["--lr", "0.1", "--gate-bias-init", "2", "--penalty-ramp", "0.1", "0.5"]
# the pilot's choice (clause 2 of its rule: the only candidate that cut FLOPs by 35 % with 5 or more input-dependent
# gates): sampled gates, a per-gate rate target of 0.6 and the information term
SCRATCH_GATES = ["--gate-sampling", "bernoulli", "--skip-weight", "0", "--target-rate", "0.6", "--info-weight", "0.1"]
# the fine-tune route's e2e flags: the recipe of the kept curve's OFAS rows (benchmarks/cifar10.py's E2E_ARGS)
FINETUNE_GATES = ["--gate-sampling", "bernoulli", "--gate-bias-init", "2", "--head-lr", "0.1", "--skip-weight", "1.0"]
BACKBONES.update({
    "resnet38_ofas_scratch": ("cifar:resnet38", ["--variant", "I", *SCRATCH_COMMON], "c10-r38-ofas-scratch"),
    "resnet38_ofas_scratch_rl": ("resnet38_ofas_scratch", [], "c10-r38-ofas-scratch-rl"),
    "resnet110_ofas_scratch": ("cifar:resnet110", ["--variant", "II", *SCRATCH_COMMON], "c10-r110-ofas-scratch"),
    "resnet110_ofas_scratch_rl": ("resnet110_ofas_scratch", [], "c10-r110-ofas-scratch-rl"),
    # issue 26: the fine-tune route on the same network, for the two routes side by side: OFAS-II e2e from the kept
    # 30-epoch ResNet-110 with the recipe of the kept curve's OFAS rows (benchmarks/cifar10.py's --e2e-args, 3 epochs),
    # then RL (1 epoch)
    "resnet110_ofas_ft": ("resnet110", ["--variant", "II", *FINETUNE_GATES], "c10-r110-ofas-ft"),
    "resnet110_ofas_ft_rl": ("resnet110_ofas_ft", [], "c10-r110-ofas-ft-rl"),
})
# the recipe of each run that is not a plain backbone; an rl_finetune run starts from the run its spec names
RECIPES = {"resnet38_ofas_scratch": "e2e_finetune", "resnet38_ofas_scratch_rl": "rl_finetune",
           "resnet110_ofas_scratch": "e2e_finetune", "resnet110_ofas_scratch_rl": "rl_finetune",
           "resnet110_ofas_ft": "e2e_finetune", "resnet110_ofas_ft_rl": "rl_finetune"}
# e2e runs that start from a kept backbone (the fine-tune route) instead of random weights
FROM_KEPT = {"resnet110_ofas_ft"}
# budgets that are part of the name; the others train for --epochs
EPOCHS = {name: 60 for name in BACKBONES if name.endswith("_e60")}
EPOCHS.update({"resnet38_ofas_scratch": 29, "resnet38_ofas_scratch_rl": 1, "resnet110_ofas_scratch": 29,
               "resnet110_ofas_scratch_rl": 1, "resnet110_ofas_ft": 3, "resnet110_ofas_ft_rl": 1})
KEPT_FILES = ("config.json", "model.safetensors", "README.md", "args.json", "data.json", "metrics.json")
RUN_FILES = ("args.json", "data.json")  # what a run folder holds before it finishes, beside checkpoints/


def complete(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()


def kept(keep_root: Path, name: str) -> bool:
    return (keep_root / name / "model.safetensors").is_file()


def command_for(name: str, args: argparse.Namespace) -> list[str]:
    spec, extra, folder = BACKBONES[name]
    recipe = RECIPES.get(name, "train_backbone")
    if recipe == "rl_finetune":  # starts from the e2e run it names (its data flags come with it)
        source = ["--init", str(Path(args.runs) / BACKBONES[spec][2])]
    elif name in FROM_KEPT:  # the fine-tune route: from the kept backbone it names (its data flags come with it)
        source = ["--init", str(Path(args.keep) / spec)]
    else:
        source = ["--model", spec, "--dataset", args.data]
    if recipe == "e2e_finetune" and name not in FROM_KEPT:
        extra = [*extra, *SCRATCH_GATES]
    command = [sys.executable, str(REPO / "recipes" / f"{recipe}.py"), *source,
               "--epochs", str(EPOCHS.get(name, args.epochs)), *extra, "--output", str(Path(args.runs) / folder),
               "--no-progress", "--mixed-precision", args.mixed_precision, *args.extra.split()]
    if (Path(args.runs) / folder / "checkpoints").is_dir():
        command.append("--resume")
    return command


def stash(run: Path, target: Path) -> Optional[Path]:
    """Copy an unfinished run's latest checkpoint and its run files into ``target`` (replaced atomically); None when
    the run has no checkpoint. The trainer keeps the previous checkpoint until the next save, so a copy taken
    while it trains is whole unless a save lands in between: then it is taken again."""
    from ofas_wrap.training import latest_checkpoint

    for _ in range(3):
        step = latest_checkpoint(run)
        if step is None:
            return None
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "checkpoints").mkdir(parents=True)
        try:
            for file in RUN_FILES:
                if (run / file).is_file():
                    shutil.copy2(run / file, staging / file)
            shutil.copytree(step, staging / "checkpoints" / step.name)
        except (FileNotFoundError, shutil.Error):  # the step was pruned while being copied: take the newer one
            continue
        (staging / "checkpoints" / "LATEST").write_text(step.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return target / "checkpoints" / step.name
    raise RuntimeError(f"could not copy a whole checkpoint of {run}: it kept changing; try again")


def restore(stashed: Path, run: Path) -> bool:
    """Put a stashed checkpoint back as ``run`` when this machine has no checkpoint of it; True when restored."""
    from ofas_wrap.training import latest_checkpoint

    if latest_checkpoint(stashed) is None or (run / "checkpoints").is_dir():
        return False
    run.mkdir(parents=True, exist_ok=True)
    for file in RUN_FILES:
        if (stashed / file).is_file() and not (run / file).exists():
            shutil.copy2(stashed / file, run / file)
    shutil.copytree(stashed / "checkpoints", run / "checkpoints")
    return True


def test_scores(folder: Path, dataset: str, gated: bool) -> dict:
    """The record's scores on the whole test split. A plain backbone: top-1 with every block (the head is not used).
    An OFAS run (``gated``): ``test_accuracy`` as deployed, gated at its saved threshold, with the blocks it ran
    (``test_blocks``, ``test_threshold``), and the same backbone with every block as ``test_accuracy_all_blocks``
    (what this step recorded as ``test_accuracy`` before session 16: a network fine-tuned to skip can score far
    below its gated self there, e.g. the ResNet-110 fine-tune route)."""
    from accelerate import Accelerator

    from ofas_wrap import OFASModel
    from ofas_wrap.data import load_image_data, make_loader
    from ofas_wrap.training import evaluate_classifier

    model = OFASModel.from_pretrained(folder)
    recorded = json.loads((folder / "args.json").read_text()) if (folder / "args.json").is_file() else {}
    data = load_image_data(dataset, in_chans=model.config["input_size"][0],
                           val_size=recorded.get("val_size", 0.1), split_seed=recorded.get("split_seed", 0),
                           augment=False, normalization=model.config.get("normalization"))
    accelerator = Accelerator(cpu=True)
    every_block = evaluate_classifier(accelerator, model.unwrap(), make_loader(data.test, 500), ofas=False)
    if not gated:
        return {"test_accuracy": every_block["accuracy"], "test_images": every_block["count"]}
    deployed = evaluate_classifier(accelerator, model, make_loader(data.test, 500), ofas=True)
    return {"test_accuracy": deployed["accuracy"], "test_images": deployed["count"],
            "test_blocks": round(deployed["executed_blocks"], 4), "test_threshold": model.threshold,
            "test_accuracy_all_blocks": every_block["accuracy"]}


def _write_record(keep_root: Path, name: str, fields: dict, merge: bool = False) -> None:
    """Write ``name``'s record of backbones.json (atomically): ``fields`` as the whole record, or merged into it."""
    from ofas_wrap._atomic import write_atomic

    index_path = keep_root / "backbones.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[name] = {**index.get(name, {}), **fields} if merge else fields
    write_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")


def rescore(name: str, keep_root: Path, dataset: str) -> dict:
    """Score a kept folder on the test split again and update its record's test fields (``--rescore``)."""
    scores = test_scores(keep_root / name, dataset, gated=name in RECIPES)
    _write_record(keep_root, name, scores, merge=True)
    print(f"[backbones] rescored {name}: " + ", ".join(f"{k} {v}" for k, v in scores.items()), flush=True)
    return scores


def keep(name: str, run: Path, command: list[str], keep_root: Path, dataset: str) -> dict:
    """Copy the finished run into the repository (atomically) and record it in backbones.json."""
    scores = test_scores(run, dataset, gated=name in RECIPES)
    target = keep_root / name
    staging = keep_root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file in KEPT_FILES:
        if (run / file).is_file():
            shutil.copy2(run / file, staging / file)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    metrics = json.loads((run / "metrics.json").read_text())
    recorded = json.loads((run / "args.json").read_text()) if (run / "args.json").is_file() else {}
    record = {
        "model": BACKBONES[name][0] if name in BACKBONES else None,
        "recipe": RECIPES.get(name, "train_backbone"),
        "command": " ".join(["python", *[str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c
                                         for c in command[1:] if c != "--resume"]]),
        "epochs": metrics.get("epochs_completed"), "train_seconds": metrics.get("train_seconds"),
        "samples_per_second": metrics.get("samples_per_second"), "world_size": metrics.get("world_size"),
        "resumed_from_steps": metrics.get("resumed_from_steps"),
        "mixed_precision": recorded.get("mixed_precision"),
        "channels_last": recorded.get("channels_last"),
        "val_accuracy": (metrics.get("final_val") or {}).get("accuracy"),
        **scores,
    }
    _write_record(keep_root, name, record)
    blocks = (f" with {scores['test_blocks']:.1f} blocks at T = {scores['test_threshold']}" if "test_blocks" in scores
              else "")
    print(f"[backbones] kept {name}: test top-1 {100 * scores['test_accuracy']:.2f} %{blocks} "
          f"({scores['test_images']} images) -> {target}", flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--runs", default=str(REPO.parent / "runs"), help="where the run folders go (outside)")
    parser.add_argument("--keep", default=str(KEEP), help="where finished backbones are kept")
    parser.add_argument("--epochs", type=int, default=30, help="every backbone's budget but the *_e60 ones' (60)")
    parser.add_argument("--only", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="bf16",
                        help="train_backbone's --mixed-precision (bf16 falls back to fp32 where not native)")
    parser.add_argument("--extra", default="", help="more train_backbone flags, e.g. '--max-steps 2' for a smoke run")
    parser.add_argument("--stash", default=None,
                        help="where unfinished runs' latest checkpoints are stashed (default: KEEP/partial)")
    parser.add_argument("--stash-only", action="store_true",
                        help="stash every unfinished run's latest checkpoint and exit (commit the stash after)")
    parser.add_argument("--rescore", action="store_true",
                        help="score the kept folders of --only on the test split again, update their records, exit")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    keep_root = Path(args.keep)
    if args.rescore:
        missing = [name for name in args.only if not kept(keep_root, name)]
        if missing:
            parser.error(f"--rescore: not kept in {keep_root}: {' '.join(missing)} (train them first)")
        for name in args.only:
            rescore(name, keep_root, args.data)
        return 0
    stash_root = Path(args.stash) if args.stash else keep_root / "partial"
    for name in args.only:
        run = Path(args.runs) / BACKBONES[name][2]
        if kept(keep_root, name):
            print(f"[backbones] {name} is kept in {keep_root / name}: not trained again", flush=True)
            continue
        if args.stash_only:
            if not complete(run):
                copied = stash(run, stash_root / name)
                print(f"[backbones] {name}: " + (f"stashed {copied}" if copied else "no checkpoint to stash"),
                      flush=True)
            continue
        if not args.dry_run and restore(stash_root / name, run):
            print(f"[backbones] {name}: restored the stashed checkpoint into {run}", flush=True)
        command = command_for(name, args)
        if args.dry_run:
            print(" ".join(command))
            continue
        if not complete(run):
            print(f"[backbones] {' '.join(command)}", flush=True)
            started = time.time()
            code = subprocess.run(command, cwd=REPO).returncode
            if code != 0:
                print(f"[backbones] {name} stopped with exit code {code} after {time.time() - started:.0f} s; rerun "
                      "this command to continue it", flush=True)
                return code
        keep(name, run, command, keep_root, args.data)
        shutil.rmtree(stash_root / name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
