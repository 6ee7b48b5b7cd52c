"""What skipping a block saves: the per-gate cost model of the e2e penalty and the RL reward (issue 10 item 2).

Three cost models, each a ``(num_gates,)`` tensor normalised to sum 1 (so a penalty or a reward keeps its scale
whatever the model):

- ``uniform``: every gate costs the same (the paper's count of executed gates);
- ``flops``: the FLOPs a skip saves, from the surgery plan (``block.flops - block.skip_flops``);
- a **block table**: the milliseconds a skip saves on the target device, measured there with
  ``measure_block_table`` (``ofas-wrap bench MODEL --block-table PATH``) and saved as JSON. FLOPs are not time:
  on ResNet-50 here, blocks differ by up to 1.5x in time per FLOP (docs/results.md).

A block's saving is measured directly: its recorded batch-1 input is fed to the executed form and to the
skipped form (the shortcut) of the block, each timed with ``torch.utils.benchmark`` (``measure_latency``);
the saving is the difference of the medians, floored at zero. Timing the whole network once per skipped block
would bury a small block's saving in the noise of the rest.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ._atomic import write_atomic

__all__ = ["COST_KINDS", "BLOCK_TABLE_FORMAT", "gate_costs", "measure_block_table", "save_block_table",
           "read_block_table", "block_table_costs"]

COST_KINDS = ("uniform", "flops")
BLOCK_TABLE_FORMAT = "ofas-wrap-block-table"
BLOCK_TABLE_VERSION = 1
_REMEASURE = "measure it for this model with `ofas-wrap bench MODEL --block-table PATH`"


def _normalised(costs: Tensor, what: str) -> Tensor:
    total = float(costs.sum())
    if not total > 0:
        raise ValueError(f"{what}: every gated block costs 0, so no cost model can be built from it; {_REMEASURE} "
                         "or use --cost-table flops")
    return costs / total


def gate_costs(model: nn.Module, cost: Union[str, os.PathLike, dict] = "flops") -> Tensor:
    """The ``(num_gates,)`` saving of each gate's skip, normalised to sum 1.

    ``cost``: ``"uniform"``, ``"flops"`` (the plan's; uniform when the model has no plan) or a block table (a
    path to its JSON or the dict of ``measure_block_table``), checked against the model's gated blocks.

    Example:
        >>> import ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> [round(c, 4) for c in gate_costs(model, "uniform").tolist()]
        [0.3333, 0.3333, 0.3333]
    """
    n = int(model.num_gates)
    if isinstance(cost, dict) or (isinstance(cost, (str, os.PathLike)) and str(cost) not in COST_KINDS):
        table = cost if isinstance(cost, dict) else read_block_table(cost)
        return block_table_costs(table, model)
    costs = torch.ones(n)
    if cost == "flops" and getattr(model, "plan", None) is not None:
        for block in model.plan:
            if block.gated:
                costs[block.gate_index] = float(max(block.flops - block.skip_flops, 0))
    return _normalised(costs, f"--cost-table {cost}") if n else costs


def read_block_table(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read and check a block table written by ``save_block_table`` (its format, not yet its model)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--cost-table {path}: no such file; give uniform, flops or a block table "
                         f"(JSON): {_REMEASURE}")
    try:
        table = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--cost-table {path}: not a JSON block table ({error}); {_REMEASURE}") from None
    if not isinstance(table, dict) or table.get("format") != BLOCK_TABLE_FORMAT:
        raise ValueError(f"--cost-table {path}: not a block table (its 'format' is not {BLOCK_TABLE_FORMAT!r}); "
                         f"{_REMEASURE}")
    if table.get("format_version") != BLOCK_TABLE_VERSION:
        raise ValueError(f"--cost-table {path}: format_version {table.get('format_version')!r}, this version of "
                         f"ofas-wrap reads {BLOCK_TABLE_VERSION}; {_REMEASURE}")
    blocks = table.get("blocks")
    if not isinstance(blocks, list) or not all(
            isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("saved_ms"), (int, float))
            and b["saved_ms"] >= 0 for b in blocks):
        raise ValueError(f"--cost-table {path}: 'blocks' must be a list of {{'name': str, 'saved_ms': number >= 0, "
                         f"...}}; {_REMEASURE}")
    return table


def block_table_costs(table: dict[str, Any], model: nn.Module) -> Tensor:
    """The normalised per-gate costs of a block table, after checking it was measured on this model's blocks."""
    names = [b["name"] for b in table["blocks"]]
    expected = list(model.gated_block_names)
    if names != expected:
        extra, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        detail = (f"blocks not in the model: {extra[:5]}; gated blocks not in the table: {missing[:5]}"
                  if extra or missing else "the same blocks in another order")
        raise ValueError(f"the block table does not match this model's {len(expected)} gated blocks ({detail}); "
                         f"{_REMEASURE}")
    return _normalised(torch.tensor([float(b["saved_ms"]) for b in table["blocks"]]), "the block table")


def measure_block_table(model: nn.Module, example_input: Tensor, runs: int = 50, warmup: int = 10,
                        threads: Optional[int] = None, device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Time what each gated block's skip saves at batch 1 on this machine; returns the block table (a dict).

    The model runs once at full depth to record each gated block's input; then, per block, its executed form
    and its skipped form (the shortcut) are timed on that input with ``measure_latency``.

    Example:
        >>> import torch, ofas_wrap
        >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
        >>> table = measure_block_table(model, torch.randn(1, 3, 16, 16), runs=3, warmup=1)
        >>> [b["name"] for b in table["blocks"]] == model.gated_block_names
        True
    """
    from ._bench import measure_latency
    from ._model import OFASModel

    if not isinstance(model, OFASModel):
        raise TypeError(f"a block table is measured on an OFASModel (eager), got {type(model).__name__}; a "
                        "TorchScript or ONNX file has no separable blocks: time its save_pretrained folder")
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] != 1:
        raise ValueError("example_input must be one input of batch 1, e.g. torch.randn(1, *model.config"
                         "['input_size']): skipping saves what it saves per image")
    was_training = model.training
    model.eval().to(device)
    inputs: dict[int, Tensor] = {}
    handles = [block.block.register_forward_pre_hook(
        lambda _module, args, index=index: inputs.__setitem__(index, args[0].detach()))
        for index, block in enumerate(model.blocks) if block.gate_index >= 0]
    try:
        with torch.inference_mode(), model.forced_gates(torch.ones(model.num_gates, dtype=torch.bool)):
            model(example_input.to(device))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    try:
        for index, block in enumerate(model.blocks):
            if block.gate_index < 0:
                continue
            x = inputs[index]
            run = measure_latency(lambda t, b=block: b.forward_single(t, True), x, runs, warmup, threads, device)
            skip = measure_latency(lambda t, b=block: b.forward_single(t, False), x, runs, warmup, threads, device)
            rows.append({"gate": block.gate_index, "name": block.name, "run_ms": run.median_ms,
                         "skip_ms": skip.median_ms, "saved_ms": max(run.median_ms - skip.median_ms, 0.0),
                         "run_iqr_ms": run.iqr_ms})
        with model.forced_gates(torch.ones(model.num_gates, dtype=torch.bool)):
            full = measure_latency(model, example_input, runs, warmup, threads, device)
    finally:
        model.train(was_training)
    rows.sort(key=lambda row: row["gate"])
    return {"format": BLOCK_TABLE_FORMAT, "format_version": BLOCK_TABLE_VERSION,
            "what": "milliseconds a skip of each gated block saves at batch 1 (median executed - median shortcut)",
            "device": str(device), "threads": full.threads, "runs": runs, "warmup": warmup,
            "input_size": list(example_input.shape[1:]), "torch_version": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor() or None,
            "full_depth_ms": full.median_ms, "blocks": rows}


def save_block_table(table: dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write a block table as JSON, atomically (a temporary file beside it, then renamed)."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a folder: give the block table a file name, e.g. {path / 'blocks.json'}")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such folder for the block table")
    return write_atomic(path, json.dumps(table, indent=2) + "\n")
