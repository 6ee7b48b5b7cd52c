"""Skip efficiency of OFAS on the CPU (issue 5, section 1): does a skipped FLOP turn into saved time?

For every model spec, with TorchScript (``torch.jit.script``) on the CPU at a stated thread count:

1. **overhead** -- the adapted model with T = 0 (every block runs, the OFAS head is computed) against the
   plain backbone, batch 1: ``overhead_ratio = latency(OFAS, T=0) / latency(backbone)`` (goal <= 1.02);
2. **skip efficiency** -- forced patterns that skip 25 / 50 / 75 % of the gated blocks (several random
   patterns each), batch 1: ``(1 - latency(pattern) / latency(T=0)) / (1 - FLOPs(pattern) / FLOPs(T=0))``
   with FLOPs from ``model.plan.executed_flops`` (goal >= 0.9); the median over the patterns is reported;
3. **batched per-sample routing** -- batch 32 and 256, every sample with its own random pattern skipping
   50 % of the gated blocks: the throughput gain over the plain backbone divided by the ideal (FLOP) gain,
   ``routing_vs_ideal = (latency(backbone) / latency(routed)) / (FLOPs(backbone) / mean FLOPs(routed))``
   (goal >= 0.7), next to the naive way (compute every block, mask the result);
4. **SkipNet-style control** -- the same batch-1 forced patterns through a SkipNet-style controller (a small
   gate network before every block, ``ofas_wrap.compare.SkipNetStyle``): ``skipnet_over_ofas`` = median over the
   patterns of latency(SkipNet-style) / latency(OFAS).

Timing uses ``torch.utils.benchmark.Timer`` (``num_threads`` set explicitly; on a GPU it synchronises the device
around every timed block). All sides compared within one
section are timed in interleaved rounds, in a fresh random order every round, so that machine noise hits
them alike; ratios are taken per round (paired) and their median is reported with the interquartile range.

Usage (from the repository root)::

    python benchmarks/latency.py --out docs/results    # full run, 1 thread, several minutes
    python benchmarks/latency.py --quick --json /tmp/latency.json     # about a minute
    python benchmarks/latency.py --specs torchvision:resnet50@224/112 --threads 2 --out /tmp/r50
    python benchmarks/latency.py --device cuda --block-time 0.05 --out docs/results    # writes latency_cuda.*

``--device cuda``: models and inputs on the GPU. There (or anywhere with ``--gates decided``) the batch-1 skip
patterns are *decided* by the gate networks themselves instead of forced: the last linear layer of the OFAS head
(of every SkipNet-style gate) gets zero weights and biases of +-8, so the real inference path runs -- gate network,
comparison with T, and the read back to the host that decides which blocks to launch (one synchronisation per
forward for OFAS, one per gated block for SkipNet-style). A forced mask lives on the host and would skip that
synchronisation, which on a CPU costs nothing but on a GPU stalls the kernel queue. The batched section keeps
forced per-sample masks (a bias cannot give every sample its own pattern); its one synchronisation per forward is
amortised over the batch.

A spec is ``SOURCE:NAME[@RES[/BATCHED_RES]]``: ``RES`` is the square input side for the batch-1 sections,
``BATCHED_RES`` the one for the batched routing section (batch 256 of ResNet-50 at 224 px takes minutes a
forward on two cores). Only timings taken on a quiet machine are meaningful; nothing here asserts a time.
"""

import argparse
import copy
import csv
import json
import math
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer

import ofas_wrap
from ofas_wrap.compare import MaskedExecution, SkipNetStyle

warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")

FRACTIONS = (0.25, 0.5, 0.75)
GOALS = {"overhead_ratio": 1.02, "skip_efficiency": 0.9, "routing_vs_ideal": 0.7}


# ------------------------------------------------------------------------------------------------ configuration
@dataclass
class ModelSpec:
    """A model to benchmark: the ``create_model`` spec, the batch-1 and the batched input side."""

    spec: str
    resolution: int
    batched_resolution: int

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse ``SOURCE:NAME[@RES[/BATCHED_RES]]``; default 32 for ``cifar:`` models, 224 (112 batched) else."""
        spec, _, sizes = text.partition("@")
        cifar = spec.strip().lower().startswith("cifar:")
        resolution, batched = (32, 32) if cifar else (224, 112)
        if sizes:
            first, _, second = sizes.partition("/")
            resolution = int(first)
            batched = int(second) if second else resolution
        if resolution < 8 or batched < 8:
            raise ValueError(f"input side must be at least 8 pixels in {text!r}")
        return cls(spec.strip(), resolution, batched)

    def __str__(self) -> str:
        return f"{self.spec}@{self.resolution}/{self.batched_resolution}"


@dataclass
class Config:
    """What to measure and how long: the modes set these, every one is a command-line flag too."""

    specs: list[ModelSpec]
    batch_sizes: list[int]
    patterns: int  # random patterns per skipped fraction
    rounds: int  # interleaved timing rounds, batch-1 sections
    batched_rounds: int  # interleaved timing rounds, batched section
    block_time: float  # seconds per timed block (Timer.timeit(number) with number chosen to fill it)
    warmup: int  # untimed calls per batch-1 side before the rounds (at least 3: TorchScript optimises on call 2)
    threads: int
    seed: int
    mode: str
    device: str = "cpu"
    gates: str = "auto"  # batch-1 patterns: "forced", "decided" (by the gate networks), "auto" (decided on a GPU)

    @property
    def decided_patterns(self) -> bool:
        """Whether the batch-1 patterns are decided by the gate networks (see the module docstring: on a GPU the
        decision's host synchronisation counts, so ``auto`` decides there)."""
        return self.gates == "decided" or (self.gates == "auto" and self.device != "cpu")


MODES: dict[str, dict[str, Any]] = {
    "full": dict(specs=["cifar:resnet38@32/32", "cifar:resnet110@32/32", "torchvision:resnet50@224/112"],
                 patterns=5, rounds=15, batched_rounds=5, block_time=0.2, warmup=5),
    "quick": dict(specs=["cifar:resnet38@32/8", "cifar:resnet110@32/8", "torchvision:resnet50@64/16"],
                  patterns=2, rounds=5, batched_rounds=3, block_time=0.03, warmup=3),
    "smoke": dict(specs=["cifar:resnet20@16/8"], patterns=2, rounds=5, batched_rounds=2, block_time=0.02,
                  warmup=3),
}


# ----------------------------------------------------------------------------------------------------- timing
@dataclass
class Side:
    """One thing being timed: ``prepare()`` sets it up (a forced mask), ``fn()`` is one timed call."""

    name: str
    fn: Callable[[], Any]
    prepare: Callable[[], None] = lambda: None
    number: int = 1
    times: list[float] = field(default_factory=list)  # seconds per call, one value per round
    timer: Optional[Timer] = None


def time_interleaved(sides: Sequence[Side], rounds: int, config: Config, rng: random.Random,
                     warmup_calls: int = 3, warmup_passes: int = 2) -> None:
    """Time every side in ``rounds`` interleaved rounds (fresh random order each round) with
    ``torch.utils.benchmark.Timer``; append the per-call time of each round to ``side.times``.

    Before that, every side is called ``warmup_calls`` (at least 2) times (TorchScript's profiling
    executor optimises a graph on its second call, which takes seconds for a deep OFAS model), then all sides
    run ``warmup_passes`` untimed interleaved passes: switching patterns can make the executor re-specialise
    a graph (a few hundred ms, a bounded number of times), which should happen there, not in a timed round."""
    order = list(sides)
    for side in order:
        side.prepare()
        for _ in range(max(2, warmup_calls)):
            side.fn()
    for _ in range(warmup_passes):
        rng.shuffle(order)
        for side in order:
            side.prepare()
            side.fn()
    for side in order:
        side.prepare()
        synchronize(config.device)
        start = time.perf_counter()
        side.fn()
        synchronize(config.device)
        per_call = time.perf_counter() - start
        side.number = max(1, round(config.block_time / max(per_call, 1e-6)))
        side.timer = Timer(stmt="fn()", globals={"fn": side.fn}, num_threads=config.threads, label=side.name)
    for _ in range(rounds):
        rng.shuffle(order)
        for side in order:
            side.prepare()
            assert side.timer is not None
            side.times.append(side.timer.timeit(side.number).median)


def synchronize(device: str) -> None:
    """Wait for the accelerator's queued work (nothing on the CPU)."""
    if device != "cpu":
        torch.accelerator.synchronize()


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range."""
    return {"median": quantile(values, 0.5), "iqr": quantile(values, 0.75) - quantile(values, 0.25)}


def paired(numerator: Side, denominator: Side) -> list[float]:
    """Per-round ratios of two interleaved sides (noise that hits a whole round cancels)."""
    return [a / b for a, b in zip(numerator.times, denominator.times)]


# ------------------------------------------------------------------------------------------------ models
def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` in evaluation mode."""
    return torch.jit.script(module.eval())


def forcing_works(scripted: Any, example: Tensor, num_gates: int) -> bool:
    """Check that setting ``forced_gate_mask`` on the scripted model really forces its gates."""
    mask = torch.zeros(num_gates, dtype=torch.bool)
    mask[::2] = True
    try:
        scripted.forced_gate_mask = mask
        scripted(example)
        ok = torch.equal(scripted.last_gates.cpu(), mask.expand(example.shape[0], -1))
    except Exception:  # noqa: BLE001 - any failure means: fall back to eager
        ok = False
    finally:
        try:
            scripted.forced_gate_mask = None
        except Exception:  # noqa: BLE001
            pass
    return ok


def skip_pattern(num_gates: int, fraction: float, generator: torch.Generator) -> Tensor:
    """A bool gate mask (True = execute) skipping ``round(fraction * num_gates)`` (at least one) random gated
    blocks."""
    skipped = min(num_gates, max(1, round(fraction * num_gates)))
    order = torch.randperm(num_gates, generator=generator)
    mask = torch.ones(num_gates, dtype=torch.bool)
    mask[order[:skipped]] = False
    return mask


def setter(module: Any, mask: Optional[Tensor]) -> Callable[[], None]:
    """A ``prepare`` callback that sets ``module.forced_gate_mask = mask``."""

    def prepare() -> None:
        module.forced_gate_mask = mask

    return prepare


GATE_LOGIT = 8.0  # sigmoid(8) = 0.9997, sigmoid(-8) = 0.0003: far from T = 0.5 whatever the gate's input


def ofas_decider(model: Any, scripted: Any) -> Callable[[Tensor], Callable[[], None]]:
    """``decider(mask)`` is a ``prepare`` callback after which the OFAS head itself decides ``mask`` (True =
    execute) for every input: its last linear layer gets zero weights and biases of +-``GATE_LOGIT``, T = 0.5.
    The scripted module shares these parameters, so the timed call runs the real decision path."""
    last = model.head.fcs[-1]
    if not isinstance(last, nn.Linear) or last.out_features != model.num_gates:
        raise TypeError(f"the OFAS head's last layer is {type(last).__name__}, expected a Linear with "
                        f"{model.num_gates} outputs")

    def decider(mask: Tensor) -> Callable[[], None]:
        bias = torch.where(mask, GATE_LOGIT, -GATE_LOGIT).to(last.bias)

        def prepare() -> None:
            scripted.forced_gate_mask = None
            with torch.no_grad():
                last.weight.zero_()
                last.bias.copy_(bias)
                model.gate_threshold.fill_(0.5)

        return prepare

    return decider


def skipnet_decider(skipnet: Any, scripted: Any) -> Callable[[Tensor], Callable[[], None]]:
    """As :func:`ofas_decider` for a SkipNet-style model: gate ``i``'s own FFGate decides ``mask[i]``."""
    gated = [gate.fc for gate, block in sorted(((g, b) for g, b in zip(skipnet.gates, skipnet.blocks)
                                                 if b.gate_index >= 0), key=lambda pair: pair[1].gate_index)]
    if len(gated) != skipnet.num_gates:
        raise ValueError(f"found {len(gated)} gate networks for {skipnet.num_gates} gates")

    def decider(mask: Tensor) -> Callable[[], None]:
        values = [GATE_LOGIT if bool(run) else -GATE_LOGIT for run in mask]

        def prepare() -> None:
            scripted.forced_gate_mask = None
            with torch.no_grad():
                for fc, value in zip(gated, values):
                    fc.weight.zero_()
                    fc.bias.fill_(value)
                skipnet.gate_threshold.fill_(0.5)

        return prepare

    return decider


def graph_side(backbone: nn.Module, example: Tensor) -> Side:
    """The plain backbone captured whole in a CUDA graph and replayed (what ``torch.compile(mode=
    "reduce-overhead")`` does for a static network): no launch overhead per kernel. An OFAS or SkipNet-style model
    cannot be captured whole, since the host decides between its kernels; the row shows what a static network
    gains on a GPU that the adaptive ones cannot. Checked to reproduce the eager output before it is timed."""
    static_input = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as torch.cuda.graphs' documentation asks
        for _ in range(3):
            backbone(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = backbone(static_input)
    graph.replay()
    torch.cuda.synchronize()
    expected = backbone(static_input)
    if not torch.allclose(static_output, expected, rtol=1e-3, atol=1e-3):
        raise RuntimeError("the CUDA graph of the plain backbone does not reproduce its eager output")
    return Side("backbone cuda graph", graph.replay)


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, thread count, library versions, load average (and the GPU, when one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "ofas_wrap": ofas_wrap.__version__, "python": platform.python_version(),
        "load_average_1m_at_start": round(load[0], 2), "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------------------------ benchmark
def bench_spec(model_spec: ModelSpec, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the four measurements for one model spec; returns its JSON entry."""
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    size = model_spec.resolution
    device = torch.device(config.device)
    model = ofas_wrap.create_model(model_spec.spec, input_size=(3, size, size), threshold=0.0).eval().to(device)
    backbone = model.unwrap().eval()
    n = model.num_gates
    plan = model.plan
    example = torch.randn(1, 3, size, size, device=device)
    skipnet_eager = SkipNetStyle(model).eval().to(device)
    plain = script(backbone)
    ofas: Any = script(model)
    skipnet: Any = script(skipnet_eager)
    naive: Any = script(MaskedExecution(model).to(device))
    scripted_forcing = forcing_works(ofas, example, n) and forcing_works(skipnet, example, n)
    if not scripted_forcing:  # pragma: no cover - the core supports it; keep the benchmark usable if not
        log(f"  {model_spec.spec}: forcing a scripted model failed; timing the eager OFAS / SkipNet-style models")
        ofas, skipnet, naive = model, skipnet_eager, MaskedExecution(model).eval()
    all_on = torch.ones(n, dtype=torch.bool)
    full_flops = float(plan.executed_flops(all_on)[0])
    decided = config.decided_patterns
    if decided:
        ofas_pattern, skipnet_pattern = ofas_decider(model, ofas), skipnet_decider(skipnet_eager, skipnet)
    else:
        ofas_pattern = skipnet_pattern = None
    log(f"  {model_spec.spec}: {n} gated blocks, {full_flops / 1e6:.1f} MFLOPs at {size}x{size} on "
        f"{config.device}, TorchScript forcing {'ok' if scripted_forcing else 'FAILED (eager)'}, batch-1 patterns "
        f"{'decided by the gate networks' if decided else 'forced'}")

    def ofas_prepare(mask: Optional[Tensor]) -> Callable[[], None]:
        if ofas_pattern is None:
            return setter(ofas, mask)
        return ofas_pattern(all_on if mask is None else mask)

    def skipnet_prepare(mask: Tensor) -> Callable[[], None]:
        return setter(skipnet, mask) if skipnet_pattern is None else skipnet_pattern(mask)

    # ---- batch 1: overhead, skip efficiency, SkipNet-style at the same patterns (one interleaved run)
    side_plain = Side("backbone", lambda: plain(example))
    side_t0 = Side("ofas T=0", lambda: ofas(example), ofas_prepare(None))
    side_skip_on = Side("skipnet all-on", lambda: skipnet(example), skipnet_prepare(all_on))
    sides = [side_plain, side_t0, side_skip_on]
    side_graph = graph_side(backbone, example) if device.type == "cuda" else None
    if side_graph is not None:
        sides.append(side_graph)
    patterns: list[tuple[float, Tensor, Side, Side]] = []
    for fraction in FRACTIONS:
        for index in range(config.patterns):
            mask = skip_pattern(n, fraction, generator)
            ofas_side = Side(f"ofas {fraction:g} #{index}", lambda: ofas(example), ofas_prepare(mask))
            skip_side = Side(f"skipnet {fraction:g} #{index}", lambda: skipnet(example), skipnet_prepare(mask))
            patterns.append((fraction, mask, ofas_side, skip_side))
            sides += [ofas_side, skip_side]
    started = time.perf_counter()
    time_interleaved(sides, config.rounds, config, rng, warmup_calls=max(3, config.warmup))
    if decided:  # the timed calls must have run the patterns they are filed under
        for _, mask, ofas_side, skip_side in patterns:
            for side, module in ((ofas_side, ofas), (skip_side, skipnet)):
                side.prepare()
                side.fn()
                if not torch.equal(module.last_gates.cpu()[0], mask):
                    raise RuntimeError(f"{side.name}: the gate networks decided {module.last_gates.cpu()[0]}, "
                                       f"not the pattern {mask}")
    log(f"    batch 1: {len(sides)} sides x {config.rounds} rounds in {time.perf_counter() - started:.1f} s")

    overhead = paired(side_t0, side_plain)
    rows: list[dict[str, Any]] = []
    for side in [side_plain, side_t0, side_skip_on] + ([side_graph] if side_graph is not None else []):
        rows.append({"spec": model_spec.spec, "section": "batch1", "side": side.name, "batch": 1, "resolution": size,
                     "skip_fraction": 0.0, "mflops": full_flops / 1e6, **_ms(side.times)})
    per_fraction: dict[str, dict[str, Any]] = {}
    for fraction in FRACTIONS:
        efficiencies, skip_ratios, flop_reductions, latency_reductions, ofas_ms = [], [], [], [], []
        for frac, mask, ofas_side, skip_side in patterns:
            if frac != fraction:
                continue
            flops = float(plan.executed_flops(mask)[0])
            flop_reduction = 1.0 - flops / full_flops
            latency_reduction = 1.0 - summary(paired(ofas_side, side_t0))["median"]
            efficiencies.append(latency_reduction / flop_reduction)
            flop_reductions.append(flop_reduction)
            latency_reductions.append(latency_reduction)
            ofas_ms.append(summary(ofas_side.times)["median"] * 1e3)
            skip_ratios.append(summary(paired(skip_side, ofas_side))["median"])
            for side in (ofas_side, skip_side):
                rows.append({"spec": model_spec.spec, "section": "batch1", "side": side.name, "batch": 1,
                             "resolution": size, "skip_fraction": fraction, "mflops": flops / 1e6,
                             **_ms(side.times)})
        per_fraction[f"{fraction:g}"] = {
            "skip_efficiency": quantile(efficiencies, 0.5),
            "skip_efficiency_min": min(efficiencies), "skip_efficiency_max": max(efficiencies),
            "flop_reduction": quantile(flop_reductions, 0.5), "latency_reduction": quantile(latency_reductions, 0.5),
            "skipnet_over_ofas": quantile(skip_ratios, 0.5), "ofas_ms": quantile(ofas_ms, 0.5),
        }
    skipnet_ratios = [summary(paired(s, o))["median"] for _, _, o, s in patterns]

    # ---- batched per-sample routing at 50 % skipped
    bsize = model_spec.batched_resolution
    batched_plan = plan if bsize == size else ofas_wrap.adaptify(copy.deepcopy(backbone).cpu(),
                                                                 input_size=(3, bsize, bsize)).plan
    backbone_flops = float(batched_plan.executed_flops(all_on)[0] - batched_plan.head_flops)
    routing: dict[str, dict[str, Any]] = {}
    for batch in config.batch_sizes:
        x = torch.randn(batch, 3, bsize, bsize, device=device)
        masks = torch.stack([skip_pattern(n, 0.5, generator) for _ in range(batch)])
        mean_flops = float(batched_plan.executed_flops(masks).mean())
        b_plain = Side(f"backbone b{batch}", lambda x=x: plain(x))
        b_routed = Side(f"ofas routed b{batch}", lambda x=x: ofas(x), setter(ofas, masks))
        b_naive = Side(f"naive masked b{batch}", lambda x=x: naive(x), setter(naive, masks))
        started = time.perf_counter()
        time_interleaved([b_plain, b_routed, b_naive], config.batched_rounds, config, rng, warmup_calls=2,
                         warmup_passes=1)
        log(f"    batch {batch} at {bsize}x{bsize}: 3 sides x {config.batched_rounds} rounds in "
            f"{time.perf_counter() - started:.1f} s")
        gain = summary([1.0 / r for r in paired(b_routed, b_plain)])
        naive_gain = summary([1.0 / r for r in paired(b_naive, b_plain)])
        ideal = backbone_flops / mean_flops
        routing[str(batch)] = {
            "batch": batch, "resolution": bsize, "throughput_gain": gain["median"], "throughput_gain_iqr": gain["iqr"],
            "ideal_gain": ideal, "routing_vs_ideal": gain["median"] / ideal, "naive_gain": naive_gain["median"],
            "routed_over_naive": summary(paired(b_naive, b_routed))["median"],
            "plain_ms": summary(b_plain.times)["median"] * 1e3, "routed_ms": summary(b_routed.times)["median"] * 1e3,
            "naive_ms": summary(b_naive.times)["median"] * 1e3,
        }
        for side, flops in ((b_plain, backbone_flops), (b_routed, mean_flops), (b_naive, full_flops)):
            rows.append({"spec": model_spec.spec, "section": "batched", "side": side.name, "batch": batch,
                         "resolution": bsize, "skip_fraction": 0.0 if side is b_plain else 0.5,
                         "mflops": flops / 1e6 if side is not b_naive else float("nan"), **_ms(side.times)})

    overhead_summary = summary(overhead)
    return {
        "overhead_ratio": overhead_summary["median"],
        "skip_efficiency": {key: value["skip_efficiency"] for key, value in per_fraction.items()},
        "routing_vs_ideal": {key: value["routing_vs_ideal"] for key, value in routing.items()},
        "skipnet_over_ofas": quantile(skipnet_ratios, 0.5),
        "details": {
            "spec": str(model_spec), "resolution": size, "batched_resolution": bsize, "threads": config.threads,
            "num_gates": n, "mflops_all_blocks": full_flops / 1e6, "torchscript_forcing": scripted_forcing,
            "device": config.device, "batch1_patterns": "decided" if decided else "forced",
            "plain_ms": summary(side_plain.times)["median"] * 1e3,
            "plain_iqr_ms": summary(side_plain.times)["iqr"] * 1e3,
            "plain_cuda_graph_ms": None if side_graph is None else summary(side_graph.times)["median"] * 1e3,
            "ofas_t0_ms": summary(side_t0.times)["median"] * 1e3,
            "ofas_t0_iqr_ms": summary(side_t0.times)["iqr"] * 1e3,
            "overhead_ratio_iqr": overhead_summary["iqr"],
            "skipnet_all_on_over_plain": summary(paired(side_skip_on, side_plain))["median"],
            "per_fraction": per_fraction, "routing": routing,
            "patterns_per_fraction": config.patterns, "rounds": config.rounds, "batched_rounds": config.batched_rounds,
        },
        "rows": rows,
    }


def _ms(times: Sequence[float]) -> dict[str, float]:
    stats = summary(times)
    return {"median_ms": stats["median"] * 1e3, "iqr_ms": stats["iqr"] * 1e3, "rounds": len(times)}


# ------------------------------------------------------------------------------------------------- output
def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown report: machine, then the batch-1 table, the per-fraction table and the batched table."""
    where = f"**GPU {meta['gpu']}** (CUDA {meta['cuda']}), host " if meta.get("gpu") else ""
    patterns = ("batch-1 skip patterns **decided by the gate networks** (their host synchronisations count)"
                if meta.get("batch1_patterns") == "decided" else "batch-1 skip patterns forced")
    lines = [
        f"Machine: {where}{meta['cpu']}, {meta['cores']} cores, **{meta['threads']} thread(s)**, torch "
        f"{meta['torch']}, TorchScript (`torch.jit.script`), mode `{meta['mode']}`, 1-min load average at start "
        f"{meta['load_average_1m_at_start']}; {patterns}. Medians over interleaved rounds; ± is the interquartile "
        "range.",
        "",
        "| model | input | plain ms | OFAS T=0 ms | overhead (goal <= 1.02) | skip eff. 25 / 50 / 75 % (goal >= 0.9) "
        "| SkipNet-style / OFAS | SkipNet-style all-on / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec, entry in results.items():
        d = entry["details"]
        eff = " / ".join(f"{entry['skip_efficiency'][k]:.2f}" for k in ("0.25", "0.5", "0.75"))
        lines.append(
            f"| {spec} | {d['resolution']}px, b1 | {d['plain_ms']:.2f} ± {d['plain_iqr_ms']:.2f} "
            f"| {d['ofas_t0_ms']:.2f} ± {d['ofas_t0_iqr_ms']:.2f} | {entry['overhead_ratio']:.3f} "
            f"± {d['overhead_ratio_iqr']:.3f} | {eff} | {entry['skipnet_over_ofas']:.2f} "
            f"| {d['skipnet_all_on_over_plain']:.2f} |"
        )
    lines += [
        "",
        "| model | skipped | FLOP reduction | latency reduction | skip efficiency (min-max over patterns) "
        "| SkipNet-style / OFAS |",
        "|---|---|---|---|---|---|",
    ]
    for spec, entry in results.items():
        for key, value in entry["details"]["per_fraction"].items():
            lines.append(
                f"| {spec} | {float(key):.0%} | {value['flop_reduction']:.1%} | {value['latency_reduction']:.1%} "
                f"| {value['skip_efficiency']:.2f} ({value['skip_efficiency_min']:.2f}-"
                f"{value['skip_efficiency_max']:.2f}) | {value['skipnet_over_ofas']:.2f} |"
            )
    graphed = {spec: entry for spec, entry in results.items() if entry["details"].get("plain_cuda_graph_ms")}
    if graphed:
        lines += [
            "",
            "What a static network gains on a GPU: the plain backbone captured whole in a CUDA graph (one replay, no "
            "per-kernel launch); OFAS cannot be captured whole (the host decides between its kernels).",
            "",
            "| model | plain ms | plain, CUDA graph ms | OFAS T=0 ms | OFAS 25 / 50 / 75 % skipped ms |",
            "|---|---|---|---|---|",
        ]
        for spec, entry in graphed.items():
            d = entry["details"]
            skipped = " / ".join(f"{d['per_fraction'][k]['ofas_ms']:.2f}" for k in ("0.25", "0.5", "0.75"))
            lines.append(f"| {spec} | {d['plain_ms']:.2f} | {d['plain_cuda_graph_ms']:.2f} | {d['ofas_t0_ms']:.2f} "
                         f"| {skipped} |")
    lines += [
        "",
        "| model | input | batch | plain ms | routed ms | naive masked ms | throughput gain | ideal (FLOP) gain "
        "| routing / ideal (goal >= 0.7) | routed vs naive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, entry in results.items():
        for value in entry["details"]["routing"].values():
            lines.append(
                f"| {spec} | {value['resolution']}px | {value['batch']} | {value['plain_ms']:.1f} "
                f"| {value['routed_ms']:.1f} | {value['naive_ms']:.1f} | {value['throughput_gain']:.2f}x "
                f"± {value['throughput_gain_iqr']:.2f} | {value['ideal_gain']:.2f}x | {value['routing_vs_ideal']:.2f} "
                f"| {value['routed_over_naive']:.2f}x |"
            )
    lines += [
        "",
        "Definitions: overhead = OFAS at T = 0 (head computed, every block run) / plain backbone, batch 1. Skip "
        "efficiency = (1 - latency(pattern) / latency(T = 0)) / (1 - FLOPs(pattern) / FLOPs(T = 0)) for "
        "patterns skipping 25 / 50 / 75 % of the gated blocks (median over the random patterns). SkipNet-style / OFAS "
        "= latency of an FFGate-I-style controller (a gate network before every block) / OFAS at the same "
        "patterns (`skipnet_over_ofas` in the JSON: median over all patterns). Batched: every sample has its own "
        "random pattern skipping 50 % of the gated blocks; throughput gain = latency(plain) / latency(routed); ideal "
        "gain = FLOPs(plain) / mean FLOPs(routed); routing / ideal = `routing_vs_ideal`; naive masked = every block "
        "computed for every sample, result masked.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, dict[str, Any]], meta: dict[str, Any], report: str,
                  out_dir: Optional[Path], json_path: Optional[Path]) -> None:
    """``--json PATH``: per model spec the four metrics and details; ``--out DIR``: markdown, CSV, JSON."""
    document = {spec: {k: v for k, v in entry.items() if k != "rows"} for spec, entry in results.items()}
    for entry in document.values():
        entry["details"]["machine"] = meta
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=2) + "\n")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = "latency" if meta.get("device", "cpu") == "cpu" else f"latency_{meta['device'].split(':')[0]}"
        (out_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(f"# Latency (benchmarks/latency.py)\n\nCommand: `{meta['command']}`\n\n"
                                            + report)
        rows = [row for entry in results.values() for row in entry["rows"]]
        with open(out_dir / f"{stem}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small inputs and few rounds (about a minute)")
    mode.add_argument("--smoke", action="store_true", help="a tiny run that only checks the script works (CI)")
    parser.add_argument("--specs", help="comma-separated SOURCE:NAME[@RES[/BATCHED_RES]] (default: per mode)")
    parser.add_argument("--batch-sizes", default="32,256", help="batched routing section (default: 32,256)")
    parser.add_argument("--patterns", type=int, help="random patterns per skipped fraction")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds for batch 1")
    parser.add_argument("--batched-rounds", type=int, help="interleaved timing rounds for the batched section")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: robust on a shared machine, where a second OpenMP "
                             f"thread can stall for whole time slices; this machine has {os.cpu_count()} cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda[:N]: where the models run (see the module docstring)")
    parser.add_argument("--gates", choices=("auto", "forced", "decided"), default="auto",
                        help="batch-1 skip patterns: forced masks or decided by the gate networks themselves "
                             "(default auto: decided on a GPU, forced on the CPU)")
    parser.add_argument("--block-time", type=float,
                        help="seconds per timed block (default: per mode; 0.05 is plenty on a GPU)")
    parser.add_argument("--out", type=Path, help="write latency.md, latency.csv and latency.json into DIR "
                                                 "(latency_cuda.* with --device cuda)")
    parser.add_argument("--json", type=Path, help="write the per-spec metrics as JSON to PATH")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    """Merge the mode defaults with the flags."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    defaults = MODES[mode]
    specs = args.specs.split(",") if args.specs else defaults["specs"]
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    if args.block_time is not None and args.block_time <= 0:
        raise SystemExit(f"--block-time must be positive, got {args.block_time}")
    if args.device != "cpu":
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise SystemExit(f"--device {args.device!r} is not a device: {error}") from None
        if device.type != "cuda" or not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device!r}: no CUDA device here (torch.cuda.is_available() is "
                             f"{torch.cuda.is_available()}); use --device cpu")
    return Config(
        specs=[ModelSpec.parse(s) for s in specs if s.strip()],
        batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
        patterns=args.patterns or defaults["patterns"],
        rounds=args.rounds or defaults["rounds"],
        batched_rounds=args.batched_rounds or defaults["batched_rounds"],
        block_time=args.block_time or defaults["block_time"],
        warmup=defaults["warmup"],
        threads=args.threads,
        seed=args.seed,
        mode=mode,
        device=args.device,
        gates=args.gates,
    )


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    config = make_config(args)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    meta = machine_info(config.threads, config.device)
    meta["mode"] = config.mode
    meta["batch1_patterns"] = "decided" if config.decided_patterns else "forced"
    meta["command"] = "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"latency benchmark ({config.mode}): {meta['cpu']}, {meta['cores']} cores, {config.threads} thread(s), "
        f"torch {meta['torch']}, TorchScript, device {config.device}")
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        for model_spec in config.specs:
            results[model_spec.spec] = bench_spec(model_spec, config, log)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_1m_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    report = markdown(results, meta)
    print(report)
    write_outputs(results, meta, report, args.out, args.json)
    log(f"done in {meta['seconds']} s")
    return results


if __name__ == "__main__":
    main()
