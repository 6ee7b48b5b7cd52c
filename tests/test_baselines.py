"""The other input-adaptive networks of ofas_wrap.compare (``_baselines``): SkipNet-style gating, naive masking,
BranchyNet-style early exit (issues 5 and 25), each built from an adapted model. Small models, no timing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap.compare import (
    EarlyExitResNet,
    FFGate,
    MaskedExecution,
    SkipNetStyle,
    early_exit_loss,
    exit_decisions,
    softmax_entropy,
    stage_ends,
)
from ofas_wrap.models import cifar_resnet


@pytest.fixture(scope="module")
def ofas_model() -> ofas_wrap.OFASModel:
    torch.manual_seed(0)
    return ofas_wrap.create_model("cifar:resnet20", input_size=(3, 16, 16), threshold=0.5).eval()


# ------------------------------------------------------------------------------------------------ SkipNet-style
@pytest.mark.parametrize("size", [32, 4, 1])
def test_ffgate_shapes(size: int) -> None:
    gate = FFGate(64).eval()
    probs = gate(torch.randn(3, 64, size, size))
    assert probs.shape == (3,)
    assert bool(((probs > 0) & (probs < 1)).all())
    assert FFGate(2048).conv1.out_channels == 64  # capped width for wide backbones
    assert FFGate(16).conv1.out_channels == 16  # SkipNet's own width for the CIFAR ResNets


def test_skipnet_style_shapes_and_decisions(ofas_model: ofas_wrap.OFASModel) -> None:
    skipnet = SkipNetStyle(ofas_model).eval()
    assert len(skipnet.gates) == len(ofas_model.blocks)
    with torch.no_grad():
        out = skipnet(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 10)
    assert skipnet.last_probs.shape == (4, ofas_model.num_gates)
    assert torch.equal(skipnet.last_gates, skipnet.last_probs >= 0.5)  # the decisions come from the gates


@pytest.mark.parametrize("scripted", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_skipnet_style_forced_pattern_matches_ofas(ofas_model: ofas_wrap.OFASModel, scripted: bool, batch: int) -> None:
    skipnet = SkipNetStyle(ofas_model).eval()
    x = torch.randn(batch, 3, 16, 16)
    generator = torch.Generator().manual_seed(batch)
    shapes = [(ofas_model.num_gates,), (batch, ofas_model.num_gates)]
    for shape in shapes:
        mask = torch.rand(shape, generator=generator) > 0.5
        with torch.no_grad(), ofas_model.forced_gates(mask):
            expected = ofas_model(x)
        if scripted:
            module = torch.jit.script(skipnet)
            module.forced_gate_mask = mask
            with torch.no_grad():
                got = module(x)
            gates = module.last_gates
        else:
            with torch.no_grad(), skipnet.forced_gates(mask):
                got = skipnet(x)
            gates = skipnet.last_gates
        assert torch.equal(gates, mask.expand(batch, -1))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_skipnet_style_forced_mask_is_checked(ofas_model: ofas_wrap.OFASModel) -> None:
    skipnet = SkipNetStyle(ofas_model)
    with pytest.raises(ValueError, match="num_gates"):
        with skipnet.forced_gates(torch.ones(3, dtype=torch.bool)):
            pass
    with pytest.raises(TypeError, match="OFASModel"):
        SkipNetStyle(cifar_resnet(20))


def test_skipnet_style_trains_its_gates() -> None:
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    skipnet = SkipNetStyle(model).train()
    out = skipnet(torch.randn(4, 3, 16, 16))
    (out.sum() + skipnet.last_probs.sum()).backward()
    for gate in skipnet.gates:
        if isinstance(gate, FFGate):
            assert gate.fc.weight.grad is not None


# ------------------------------------------------------------------------------------------------ naive masking
@pytest.mark.parametrize("scripted", [False, True])
def test_masked_execution_matches_routing(ofas_model: ofas_wrap.OFASModel, scripted: bool) -> None:
    naive = MaskedExecution(ofas_model).eval()
    module = torch.jit.script(naive) if scripted else naive
    x = torch.randn(6, 3, 16, 16)
    mask = torch.rand(6, ofas_model.num_gates, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.no_grad(), ofas_model.forced_gates(mask):
        expected = ofas_model(x)
    module.forced_gate_mask = mask
    with torch.no_grad():
        got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    module.forced_gate_mask = None
    with torch.no_grad():  # undecided: the OFAS head decides, as in the OFAS model
        torch.testing.assert_close(module(x), ofas_model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------- early exit
@pytest.fixture(scope="module")
def early_exit() -> EarlyExitResNet:
    torch.manual_seed(0)
    return EarlyExitResNet(ofas_wrap.create_model("cifar:resnet20"), threshold=0.0).eval()


def test_early_exit_threshold_zero_runs_the_backbone(early_exit: EarlyExitResNet) -> None:
    early_exit.threshold = 0.0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = early_exit(x)
        torch.testing.assert_close(out, early_exit.unwrap()(x))
    assert early_exit.last_exit.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("batch", [1, 3])
def test_early_exit_threshold_inf_leaves_at_the_first_exit(early_exit: EarlyExitResNet, batch: int) -> None:
    early_exit.threshold = math.inf
    x = torch.randn(batch, 3, 32, 32)
    calls = []
    hook = early_exit.stages[1].register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = early_exit(x)
    finally:
        hook.remove()
        early_exit.threshold = 0.0
    assert calls == []  # really stopped: the second stage never ran
    assert early_exit.last_exit.tolist() == [0] * batch
    with torch.no_grad():
        torch.testing.assert_close(out, early_exit.forward_all(x)[0])


@pytest.mark.parametrize("scripted", [False, True])
def test_early_exit_mixed_batch(early_exit: EarlyExitResNet, scripted: bool) -> None:
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        all_logits = early_exit.forward_all(x)
    entropy = softmax_entropy(all_logits[0])
    early_exit.threshold = float(entropy.median())  # about half leave at the first exit
    try:
        module = torch.jit.script(early_exit) if scripted else early_exit
        with torch.no_grad():
            out = module(x)
        exits = module.last_exit
    finally:
        early_exit.threshold = 0.0
    assert 0 < int((exits == 0).sum()) < 8
    for index in range(8):
        torch.testing.assert_close(out[index], all_logits[int(exits[index])][index], rtol=1e-5, atol=1e-5)


def test_early_exit_training_helpers(early_exit: EarlyExitResNet) -> None:
    model = EarlyExitResNet(ofas_wrap.create_model("cifar:resnet20")).train()
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model.forward_all(x)
    assert len(logits) == model.num_exits == 3 and all(t.shape == (4, 10) for t in logits)
    loss = early_exit_loss(logits, target, weights=[0.3, 0.3, 1.0])
    expected = sum(w * torch.nn.functional.cross_entropy(t, target) for w, t in zip([0.3, 0.3, 1.0], logits))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.exits[0].fc.weight.grad is not None
    with pytest.raises(ValueError, match="weights"):
        early_exit_loss(logits, target, weights=[1.0])
    flops = early_exit.exit_flops()
    assert len(flops) == 3 and flops[0] < flops[1] < flops[2]
    assert early_exit.executed_flops(torch.tensor([2, 0])).tolist() == [float(flops[2]), float(flops[0])]


def test_skipnet_style_with_always_on_blocks() -> None:
    model = ofas_wrap.create_model("cifar:resnet20", input_size=(3, 16, 16), gate_downsample=False).eval()
    assert model.num_gates < len(model.blocks)
    skipnet = SkipNetStyle(model).eval()
    scripted = torch.jit.script(skipnet)
    x = torch.randn(3, 3, 16, 16)
    mask = torch.rand(3, model.num_gates, generator=torch.Generator().manual_seed(2)) > 0.5
    with torch.no_grad(), model.forced_gates(mask):
        expected = model(x)
    scripted.forced_gate_mask = mask
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-6)
    assert scripted.last_probs.shape == (3, model.num_gates)


@pytest.mark.parametrize("scripted", [False, True])
@pytest.mark.parametrize("batch", [1, 6])
def test_exit_decisions_are_the_exits_the_network_takes(early_exit: EarlyExitResNet, scripted: bool,
                                                        batch: int) -> None:
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        all_logits = early_exit.forward_all(x)
    threshold = float(softmax_entropy(all_logits[0]).median()) + 1e-4  # about half leave at the first exit
    module = torch.jit.script(early_exit) if scripted else early_exit
    module.threshold = threshold
    try:
        with torch.no_grad():
            module(x)
        exits = module.last_exit
    finally:
        early_exit.threshold = 0.0
    assert exits.tolist() == exit_decisions(all_logits, threshold).tolist()


@pytest.mark.parametrize("spec, size, ends, blocks", [
    ("cifar:resnet20", 32, [2, 5], [3, 6, 9]),                 # three stages of three blocks
    ("torchvision:resnet18", 64, [1, 3, 5], [2, 4, 6, 8]),    # four stages of two
])
def test_exits_go_after_every_stage_of_any_adapted_resnet(spec, size, ends, blocks) -> None:
    model = ofas_wrap.create_model(spec, num_classes=5, input_size=(3, size, size)).eval()
    assert stage_ends(model) == ends
    network = EarlyExitResNet(model).eval()
    assert network.exit_blocks == blocks and network.num_exits == len(ends) + 1
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():  # threshold 0: nobody leaves early, the last exit is the network itself
        torch.testing.assert_close(network(x), model.unwrap()(x))
    assert network.exits[-1] is model.tail  # shared, not copied


def test_a_network_of_one_stage_gets_no_exit_and_says_why() -> None:
    from torchvision.models.resnet import BasicBlock

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), BasicBlock(8, 8),
                        BasicBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    model = ofas_wrap.adaptify(net, input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="no stage boundary"):
        EarlyExitResNet(model)
    with pytest.raises(TypeError, match="adaptify"):
        EarlyExitResNet(cifar_resnet(20))
