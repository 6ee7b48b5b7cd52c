"""The trained CIFAR-10 backbones kept in ``benchmarks/weights/cifar10`` (issue 26: "kept weights load"): every
folder ``backbones.json`` records loads strictly with ``OFASModel.from_pretrained`` (torch alone, nothing
downloaded), is the network its record names, and gives finite 10-class logits. Their test accuracy was measured on
the whole lossless test split when they were kept (``benchmarks/cifar10_backbones.py``; seconds per model here would
be minutes there), and is recorded beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

KEPT = Path(__file__).resolve().parents[1] / "benchmarks" / "weights" / "cifar10"
RECORDS = json.loads((KEPT / "backbones.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_kept_backbone_loads_as_the_network_its_record_names(name):
    from ofas_wrap import OFASModel

    record = RECORDS[name]
    folder = KEPT / name
    assert (folder / "model.safetensors").is_file(), f"{folder} has no model.safetensors (kept, then not committed?)"
    model = OFASModel.from_pretrained(folder)
    backbone = model.config["backbone"]
    if record["model"].startswith("cifar:"):  # an RL run records the e2e run it started from as its model
        assert f"{backbone['source']}:{backbone['name']}" == record["model"]
    recorded = json.loads((folder / "metrics.json").read_text())
    assert recorded["final_val"]["accuracy"] == pytest.approx(record["val_accuracy"], abs=1e-4)
    assert record["test_images"] == 10000 and 0.8 < record["test_accuracy"] < 1.0
    with torch.no_grad():
        logits = model.unwrap()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
