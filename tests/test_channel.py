"""Channel pruning through Torch-Pruning (issue 25: ``channel_prune`` in compare): only the blocks' inner channels are
pruned, so option-A shortcuts (a ``lambda`` that zero-pads, which Torch-Pruning's graph cannot follow), projection
shortcuts and Bottlenecks all come out as working, thinner networks; the user's model is not changed.

The tiny ResNets are test_prune's. Skipped where Torch-Pruning is not installed (``pip install 'ofas-wrap[prune]'``;
``make setup`` installs it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ofas_wrap.compare._channel import prunable_layers, prune_channels
from tests.test_prune import CASES, adapted, inputs, same, snapshot

pytest.importorskip("torch_pruning", reason="channel pruning needs Torch-Pruning: pip install 'ofas-wrap[prune]'")

# name: the inner convolutions of its first gated block (every convolution of the block but the last)
INNER = {"option_a": ["layer1.0.conv1"], "projection": ["blocks.0.conv1"],
         "bottleneck": ["layer1.0.conv1", "layer1.0.conv2"]}


def layer_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(m.weight.shape) for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prunable_layers_are_the_inner_convolutions_of_the_gated_blocks(name):
    model, _, _ = adapted(name)
    prunable = prunable_layers(model)
    assert set(INNER[name]) <= set(prunable)
    backbone_convs = {n for n, m in model.unwrap().named_modules() if isinstance(m, nn.Conv2d)}
    assert set(prunable) <= backbone_convs
    # never a block's last convolution nor a shortcut's: their outputs are added together
    assert not any(n.endswith(("conv3", "downsample.0", "project.0")) for n in prunable)
    assert not any(n.endswith("conv2") for n in prunable if name != "bottleneck")


@pytest.mark.parametrize("name", sorted(CASES))
def test_half_the_inner_channels_go_and_every_other_layer_keeps_its_shape(name):
    model, _, size = adapted(name)
    before = snapshot(model)
    original = layer_shapes(model.unwrap())
    x = inputs(size)
    pruned = prune_channels(model, 0.5, x[:1])
    after = layer_shapes(pruned)
    prunable = set(prunable_layers(model))
    for layer, shape in original.items():
        if layer in prunable:
            assert after[layer][0] == shape[0] // 2, (layer, shape, after[layer])
        else:
            assert after[layer][0] == shape[0], (layer, shape, after[layer])
    with torch.no_grad():
        logits = pruned.eval()(x)
    assert logits.shape == model(x).shape and torch.isfinite(logits).all()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.unwrap().parameters())
    assert same(before, snapshot(model))  # the user's model is not changed


@pytest.mark.parametrize("name", sorted(CASES))
def test_ratio_zero_is_the_backbone_itself(name):
    model, _, size = adapted(name)
    x = inputs(size)
    copy = prune_channels(model, 0.0, x[:1])
    assert copy is not model.unwrap()
    with torch.no_grad():
        assert torch.equal(copy(x), model.unwrap()(x))


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_a_ratio_outside_zero_to_one_is_refused(ratio):
    model, _, size = adapted("option_a")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        prune_channels(model, ratio, inputs(size)[:1])
