"""Training throughput of a CIFAR ResNet on CPU under the recipes' speed options, timed interleaved in one run.

    python benchmarks/train_speed.py                       # ResNet-38, 1 and 2 threads -> docs/results/train_speed.*
    python benchmarks/train_speed.py --quick --json out.json

For each configuration (the baseline is the recipes' old path: eager fp32, contiguous tensors) the same model is
built from the same seed and trained on the same batches with the objects the recipes use (``ofas_wrap.training``:
``channels_last``, bf16 autocast as Accelerate applies it, ``nn.Module.compile`` of the same units, stochastic
depth with skipped blocks not computed). Timing: ``--rounds`` rounds, each running ``--steps`` training steps of
every configuration in turn (so a slow spell of the machine hits them all), img/s = batch / median step time over
all rounds. Correctness: the mean loss of the last 5 of ``--check-steps`` steps from the same seed on the same
batches, against the baseline's, within ``--tolerance`` (relative). Batches are synthetic but learnable (a class
pattern plus noise), so the loss falls and the check compares training, not noise.

JSON keys: ``speedup`` (the recommended configuration's img/s over the baseline's, same run, most threads),
``recommended``, ``recommended_same_training`` (the fastest passing configuration without stochastic depth: the
baseline's training, other numerics only; what the plain backbones use) with ``speedup_same_training``,
``configs`` (name -> img/s at the most threads), ``threads`` (threads -> name -> img/s),
``loss_check`` (name -> {loss, baseline, rel_diff, ok}), ``meta``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ofas_wrap import create_model
from ofas_wrap.training import StochasticDepth, bf16_supported, compile_in_place, compile_units

OPTIONS = ("channels_last", "bf16", "compile", "drop_path")


def configurations(bf16_ok: bool) -> dict[str, dict]:
    """name -> options: the baseline, each option alone, then combinations (bf16 joins them only where native)."""
    configs = {"baseline": {}}
    for option in OPTIONS:
        configs[option] = {option: True}
    fast = ["channels_last"] + (["bf16"] if bf16_ok else [])
    if len(fast) > 1:
        configs["+".join(fast)] = {name: True for name in fast}
    for extra in (["drop_path"], ["compile"], ["compile", "drop_path"]):
        names = fast + extra
        configs["+".join(names)] = {name: True for name in names}
    return configs


def recommend(rates: dict[str, float], checks: dict[str, dict], allowed=None) -> str:
    """The rule, fixed before the runs: the fastest configuration (among ``allowed``) that passed its loss check.

    >>> recommend({"baseline": 100, "a": 150, "b": 200}, {"baseline": {"ok": True}, "a": {"ok": True}, "b": {}})
    'a'
    """
    passed = [name for name in rates if checks[name].get("ok") and (allowed is None or name in allowed)]
    return max(passed, key=lambda name: rates[name])


def make_batches(count: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(10, 3, 32, 32, generator=generator)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 10, (batch,), generator=generator)
        images = 0.5 * patterns[labels] + torch.randn(batch, 3, 32, 32, generator=generator)
        batches.append((images, labels))
    return batches


class Runner:
    """One configuration: its model, optimizer and step, kept across rounds."""

    def __init__(self, name: str, options: dict, model_spec: str, seed: int, drop_path: float) -> None:
        self.name, self.options = name, options
        torch.manual_seed(seed)
        model = create_model(model_spec, num_classes=10, input_size=(3, 32, 32), threshold=0.0)
        self.module = model.unwrap()
        if options.get("drop_path"):
            self.module = StochasticDepth(model, drop_path, seed=seed)
        if options.get("channels_last"):
            self.module.to(memory_format=torch.channels_last)
        self.module.train()
        if options.get("compile"):
            compile_in_place(compile_units(self.module))
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        if self.options.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if self.options.get("bf16") else nullcontext()
        tick = time.perf_counter()
        with cast:
            logits = self.module(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        elapsed = time.perf_counter() - tick
        return elapsed, float(loss.detach())


def measure(args: argparse.Namespace, threads: int, configs: dict[str, dict]) -> tuple[dict, dict]:
    torch.set_num_threads(threads)
    batches = make_batches(max(args.check_steps, args.steps), args.batch_size, args.seed)
    runners = {name: Runner(name, options, args.model, args.seed, args.drop_path) for name, options in configs.items()}
    # loss check (also the warm-up: compilation happens here)
    checks = {}
    for runner in runners.values():
        steps = args.check_steps if not (runner.options.get("bf16") and not bf16_supported()) else 0
        for images, labels in batches[:steps]:
            runner.losses.append(runner.step(images, labels)[1])
        if steps == 0:  # emulated bf16 is too slow to check at length: two steps of warm-up only
            for images, labels in batches[:2]:
                runner.step(images, labels)
    base = statistics.mean(runners["baseline"].losses[-5:])
    for name, runner in runners.items():
        if not runner.losses:
            checks[name] = {"loss": None, "baseline": base, "rel_diff": None, "ok": None,
                            "why": "bf16 emulated on this CPU: not checked"}
            continue
        loss = statistics.mean(runner.losses[-5:])
        rel = abs(loss - base) / base
        checks[name] = {"loss": round(loss, 4), "baseline": round(base, 4), "rel_diff": round(rel, 4),
                        "ok": rel <= args.tolerance}
    # interleaved timing
    for round_index in range(args.rounds):
        for runner in runners.values():
            steps = args.steps if not (runner.options.get("bf16") and not bf16_supported()) else 1
            for index in range(steps):
                images, labels = batches[(round_index * args.steps + index) % len(batches)]
                runner.times.append(runner.step(images, labels)[0])
    rates = {name: round(args.batch_size / statistics.median(r.times), 1) for name, r in runners.items()}
    return rates, checks


def write_markdown(path: Path, result: dict, command: str) -> None:
    meta = result["meta"]
    threads = sorted(result["threads"], key=int)
    lines = [
        "# Training throughput (img/s), CIFAR ResNet training step on CPU",
        "",
        f"Command: `{command}`. Model `{meta['model']}`, batch {meta['batch_size']}, 32 px; "
        f"{meta['rounds']} interleaved rounds of {meta['steps']} steps per configuration; img/s = batch / median "
        f"step time. CPU: {meta['cpu']}; bf16 native: {meta['bf16_native']}. torch {meta['torch']}. "
        "Nothing else ran on the machine.",
        "",
        "| configuration | " + " | ".join(f"{t} thread{'s' if int(t) > 1 else ''}" for t in threads)
        + " | x baseline | loss after N steps (rel. diff) |",
        "| --- | " + " | ".join("---" for _ in threads) + " | --- | --- |",
    ]
    top = threads[-1]
    for name in result["threads"][top]:
        rates = [f"{result['threads'][t][name]:.0f}" for t in threads]
        ratio = result["threads"][top][name] / result["threads"][top]["baseline"]
        check = result["loss_check"][name]
        text = check.get("why") or (f"{check['loss']:.3f} ({100 * check['rel_diff']:.1f} %, "
                                    f"{'ok' if check['ok'] else 'OUTSIDE tolerance'})")
        lines.append(f"| {name} | " + " | ".join(rates) + f" | {ratio:.2f}x | {text} |")
    lines += ["", f"Recommended on this machine (rule: the fastest configuration that passed the loss check): "
              f"**{result['recommended']}**, {result['speedup']:.2f}x the baseline at {top} threads. Loss tolerance: "
              f"{100 * meta['tolerance']:.0f} % relative after {meta['check_steps']} steps from the same seed.", "",
              f"Without stochastic depth (the baseline's training, other numerics only; what the plain backbones "
              f"use): **{result['recommended_same_training']}**, {result['speedup_same_training']:.2f}x.", ""]
    path.write_text("\n".join(lines))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar:resnet38")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--check-steps", type=int, default=12)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--drop-path", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 threads only, 2 rounds, fewer steps (~2-3 min)")
    parser.add_argument("--out", default="docs/results", help="folder for train_speed.{md,json} ('' = none)")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.rounds, args.steps, args.check_steps = [max(args.threads)], 2, 2, 8
    bf16_ok = bf16_supported()
    configs = configurations(bf16_ok)
    per_threads, checks = {}, {}
    for threads in args.threads:
        rates, checks = measure(args, threads, configs)
        per_threads[str(threads)] = rates
        print(f"{threads} thread(s): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()), flush=True)
    top = per_threads[str(max(args.threads))]
    best = recommend(top, checks)
    same = recommend(top, checks, allowed=[name for name, options in configs.items() if not options.get("drop_path")])
    result = {
        "speedup": round(top[best] / top["baseline"], 3), "recommended": best,
        "recommended_same_training": same, "speedup_same_training": round(top[same] / top["baseline"], 3),
        "configs": top,
        "threads": per_threads, "loss_check": checks,
        "meta": {"model": args.model, "batch_size": args.batch_size, "rounds": args.rounds, "steps": args.steps,
                 "check_steps": args.check_steps, "tolerance": args.tolerance, "drop_path": args.drop_path,
                 "bf16_native": bf16_ok, "cpu": cpu_name(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                 "cores": os.cpu_count()},
    }
    print(f"speedup of the recommended configuration: {result['speedup']:.2f}x ({best}); without stochastic depth: "
          f"{result['speedup_same_training']:.2f}x ({same})")
    for name, check in checks.items():
        print(f"loss check {name}: {check}")
    command = "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(out / "train_speed.md", result, command.strip())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
