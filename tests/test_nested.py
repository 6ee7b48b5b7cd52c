"""Residuals inside residuals (issue 28): the innermost blocks are gated, outer shortcuts stay exact around them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ofas_wrap
from ofas_wrap import SurgeryError

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


# ------------------------------------------------------------------------------------------------ building blocks
def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """A 1x1 conv + BN projection shortcut (type B of He et al.)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus an identity or projection shortcut; ``activate=False`` leaves out the final ReLU
    (RoR's last block of a stage: the stage shortcut is added before it)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, activate: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = projection(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.activate = activate

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        return F.relu(out) if self.activate else out


class RoRStage(nn.Module):
    """A RoR stage: ``n`` basic blocks and a stage-level shortcut around them (a projection where the shape
    changes), added in place before the last block's ReLU."""

    def __init__(self, cin: int, cout: int, n: int, stride: int, activate: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                 activate=i < n - 1) for i in range(n)])
        self.shortcut = projection(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.activate = activate

    def forward(self, x):
        out = self.blocks(x).add_(self.shortcut(x))  # in place on the blocks' output, a new tensor in the backbone
        return F.relu(out) if self.activate else out


class RoR3(nn.Module):
    """RoR-3 of Zhang et al. (Residual Networks of Residual Networks, 2017) for CIFAR: 3 stages of (depth - 2) / 6
    basic blocks, block shortcuts, stage shortcuts, and a root shortcut from the first conv around the body (a 1x1
    projection, stride 4), all added before the last ReLU."""

    def __init__(self, depth: int = 56, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.stages = nn.Sequential(RoRStage(widths[0], widths[0], n, 1), RoRStage(widths[0], widths[1], n, 2),
                                    RoRStage(widths[1], widths[2], n, 2, activate=False))
        self.root = projection(widths[0], widths[2], 4)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.stages(x) + self.root(x))
        return self.fc(x.mean((2, 3)))


class LongSkip(nn.Module):
    """A stage with a long skip around its residual blocks and a conv after them (as EDSR's body)."""

    def __init__(self, channels: int, n: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[BasicBlock(channels, channels) for _ in range(n)])
        self.post = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return x + self.post(self.blocks(x))


class LongSkipNet(nn.Module):
    """A stage-level long skip written in the model's own forward, a downsampling block, and a LongSkip stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 8))
        self.down = BasicBlock(8, 16, stride=2)
        self.stage2 = LongSkip(16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.stage1(x) + x)
        x = self.stage2(self.down(x))
        return self.fc(x.mean((2, 3)))


class ResidualAdapter(nn.Module):
    """A stage wrapped in a parallel residual adapter: ``adapter(x) + stage(x)``, the adapter a strided 1x1 conv
    computed before the stage's blocks run."""

    def __init__(self, stage: nn.Module, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.adapter = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.stage = stage

    def forward(self, x):
        return self.adapter(x) + self.stage(x)


class AdapterNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = ResidualAdapter(nn.Sequential(BasicBlock(8, 16, stride=2), BasicBlock(16, 16)), 8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


def ror_tiny() -> nn.Module:
    return RoR3(depth=14, widths=(4, 8, 16))


# name -> (factory, gated blocks, outer shortcuts as (module, first block, last block, shortcut))
NESTED = {
    "ror": (ror_tiny, [f"stages.{s}.blocks.{b}" for s in range(3) for b in range(2)], [
        ("stages.0", "stages.0.blocks.0", "stages.0.blocks.1", "identity"),
        ("stages.1", "stages.1.blocks.0", "stages.1.blocks.1", "projection"),
        ("stages.2", "stages.2.blocks.0", "stages.2.blocks.1", "projection"),
        ("", "stages.0.blocks.0", "stages.2.blocks.1", "projection"),
    ]),
    "long_skip": (LongSkipNet, ["stage1.0", "stage1.1", "stage1.2", "down", "stage2.blocks.0", "stage2.blocks.1"], [
        ("", "stage1.0", "stage1.2", "identity"),
        ("stage2", "stage2.blocks.0", "stage2.blocks.1", "identity"),
    ]),
    "adapter": (AdapterNet, ["layer1.0", "layer1.1", "layer2.stage.0", "layer2.stage.1"], [
        ("layer2", "layer2.stage.0", "layer2.stage.1", "projection"),
    ]),
}
SIZE = (3, 16, 16)


def _randomise_batchnorm(net: nn.Module) -> nn.Module:
    """Statistics and affine weights away from the identity, so that a wrong path shows in the output."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
    return net


def _backbone(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_batchnorm(NESTED[name][0]()).eval()


def _adapt(backbone: nn.Module, **kwargs) -> ofas_wrap.OFASModel:
    return ofas_wrap.adaptify(backbone, input_size=SIZE, **kwargs)


class ShortcutOnly(nn.Module):
    """A block with its residual branch removed by hand: only its shortcut runs (into a new tensor, as the block's
    output was, so that an in-place addition after it changes nothing else)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.shortcut = block.shortcut

    def forward(self, x):
        return self.shortcut(x).clone()


def blocks_removed_by_hand(backbone: nn.Module, names: list[str], keep: list[bool]) -> nn.Module:
    """A copy of ``backbone`` in which each block ``keep`` says False for is replaced by its shortcut alone."""
    reference = copy.deepcopy(backbone)
    for name, kept in zip(names, keep):
        if not kept:
            parent, _, child = name.rpartition(".")
            holder = reference.get_submodule(parent) if parent else reference
            setattr(holder, child, ShortcutOnly(holder.get_submodule(child)))
    return reference


def _half_pattern(count: int) -> list[bool]:
    return [index % 2 == 1 for index in range(count)]  # the first block and every other one skipped


# ------------------------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("name", list(NESTED))
def test_the_innermost_blocks_get_the_gates(name):
    model = _adapt(_backbone(name))
    assert model.gated_block_names == NESTED[name][1]


@pytest.mark.parametrize("name", list(NESTED))
def test_the_plan_says_which_outer_shortcuts_span_which_blocks(name):
    plan = _adapt(_backbone(name)).plan
    got = [(o.module, o.blocks[0], o.blocks[-1], o.shortcut) for o in plan.outer_shortcuts]
    assert got == NESTED[name][2]
    names = [b.name for b in plan]
    assert all(o.blocks == names[names.index(o.blocks[0]):names.index(o.blocks[-1]) + 1]
               for o in plan.outer_shortcuts)


@pytest.mark.parametrize("spec", ["cifar:resnet20", "torchvision:resnet18", "timm:resnet50d"])
def test_a_plain_chain_carries_nothing(spec):
    model = ofas_wrap.create_model(spec, input_size=(3, 32, 32))
    assert not model.carries and model.plan.outer_shortcuts == []
    assert all(type(block.link).__name__ == "CarryNothing" for block in model.blocks)


# -------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", list(NESTED))
def test_threshold_zero_equals_the_backbone(name):
    backbone = _backbone(name)
    model = _adapt(backbone, threshold=0.0).eval()
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        assert (model(x) - backbone(x)).abs().max().item() <= 1e-5
    assert bool(model.last_gates.all())


@pytest.mark.parametrize("name", list(NESTED))
def test_a_forced_pattern_equals_the_blocks_removed_by_hand(name):
    backbone = _backbone(name)
    model = _adapt(backbone).eval()
    keep = _half_pattern(model.num_gates)
    reference = blocks_removed_by_hand(backbone, model.gated_block_names, keep)
    x = torch.randn(1, *SIZE)
    with torch.no_grad(), model.forced_gates(torch.tensor(keep)):
        got = model(x)
    with torch.no_grad():
        assert (got - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(NESTED))
def test_skipping_every_block_keeps_the_outer_shortcuts_exact(name):
    backbone = _backbone(name)  # RoR's stages add their shortcut in place on what their blocks return
    model = _adapt(backbone).eval()
    keep = [False] * model.num_gates
    reference = blocks_removed_by_hand(backbone, model.gated_block_names, keep)
    x = torch.randn(2, *SIZE)
    with torch.no_grad(), model.forced_gates(torch.tensor(keep)):
        got = model(x)
    with torch.no_grad():
        assert (got - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(NESTED))
def test_per_sample_patterns_equal_the_blocks_removed_by_hand(name):
    backbone = _backbone(name)
    model = _adapt(backbone).eval()
    patterns = torch.rand(4, model.num_gates, generator=torch.Generator().manual_seed(1)) < 0.5
    patterns[0] = True
    patterns[1] = False
    x = torch.randn(4, *SIZE)
    with torch.no_grad(), model.forced_gates(patterns):
        got = model(x)
    with torch.no_grad():
        expected = torch.cat([blocks_removed_by_hand(backbone, model.gated_block_names, row.tolist())(x[i:i + 1])
                              for i, row in enumerate(patterns)])
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(NESTED))
def test_the_training_forward_keeps_the_outer_shortcuts_around_skipped_blocks(name):
    backbone = _backbone(name).train()  # BatchNorm on batch statistics
    keep = _half_pattern(len(NESTED[name][1]))
    reference = blocks_removed_by_hand(backbone, NESTED[name][1], keep)
    model = _adapt(backbone).train()
    x = torch.randn(4, *SIZE)
    with model.forced_gates(torch.tensor(keep)):
        got = model(x)
    assert (got - reference(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(NESTED))
def test_depth_pruning_keeps_the_outer_shortcuts(name):
    model = _adapt(_backbone(name)).eval()
    keep = _half_pattern(model.num_gates)
    pruned = ofas_wrap.prune_blocks(model, keep).eval()  # the backbone's own forward, outer shortcuts included
    x = torch.randn(2, *SIZE)
    with torch.no_grad(), model.forced_gates(torch.tensor(keep)):
        assert (pruned(x) - model(x)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("name", list(NESTED))
def test_torchscript_export_skips_inner_blocks_as_eager_does(name, tmp_path):
    model = _adapt(_backbone(name)).eval()
    with torch.no_grad():  # spread the gate probabilities so that a threshold splits the samples
        model.head.fcs[-1].weight.mul_(20)
    path = ofas_wrap.export_torchscript(model, tmp_path / "m.pt")
    scripted, _ = ofas_wrap.load_torchscript(path)
    x = torch.randn(6, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        probs = model.gate_probabilities(x)[1]
    threshold = float(probs.flatten().sort().values[probs.numel() // 2])
    for batch in (x[:1], x):
        model.threshold = threshold
        scripted.gate_threshold.fill_(threshold)
        with torch.no_grad():
            expected, got = model(batch), scripted(batch)
        assert torch.equal(model.last_gates, scripted.last_gates)
        assert (expected - got).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(NESTED))
def test_onnx_export_skips_inner_blocks_as_eager_does(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ofas_wrap._export import set_onnx_threshold

    model = _adapt(_backbone(name)).eval()
    path = ofas_wrap.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert sum(node.op_type == "If" for node in proto.graph.node) == model.num_gates
    x = torch.randn(1, *SIZE)
    for threshold in (0.0, 0.5, 0.9999):
        set_onnx_threshold(proto, threshold)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        model.threshold = threshold
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert abs(expected - got).max() < 1e-4, threshold


# ------------------------------------------------------------------------------------------- the plan, the card
def test_the_plan_table_lists_the_outer_shortcuts():
    table = _adapt(_backbone("ror")).plan.table()
    lines = [" ".join(line.split()) for line in table.splitlines()]
    assert any(line.startswith("outer shortcuts (not gated") for line in lines)
    assert "stages.1 (add__1) projection blocks 2-3 (stages.1.blocks.0 .. stages.1.blocks.1)" in lines
    assert "forward (add) projection blocks 0-5 (stages.0.blocks.0 .. stages.2.blocks.1)" in lines


def test_inspect_prints_the_outer_shortcuts(capsys):
    from ofas_wrap import cli

    assert cli.main(["inspect", f"{__file__}:ror_tiny", "--input-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "outer shortcuts (not gated" in out and "stages.2 (add__2)" in out


def test_the_card_and_the_config_show_the_outer_shortcuts(tmp_path):
    model = _adapt(_backbone("adapter"))
    folder = model.save_pretrained(tmp_path / "adapter")
    config = json.loads((folder / "config.json").read_text())
    assert config["flops"]["outer_shortcuts"] == [
        {"module": "layer2", "add": "add", "shortcut": "projection", "blocks": ["layer2.stage.0", "layer2.stage.1"]}]
    card = (folder / "README.md").read_text()
    assert "| layer2 (add) | projection | layer2.stage.0 .. layer2.stage.1 |" in card


def test_a_saved_nested_model_loads_back_equal(tmp_path):
    model = _adapt(_backbone("ror"), threshold=0.3).eval()
    folder = model.save_pretrained(tmp_path / "ror")
    loaded = ofas_wrap.OFASModel.from_pretrained(folder, backbone=ror_tiny())
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.plan.outer_shortcuts == model.plan.outer_shortcuts


class DropoutLongSkip(nn.Module):
    """A long skip with functional dropout on the blocks' output: the link's code depends on ``self.training``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + F.dropout(self.blocks(x), 0.5, self.training)
        return self.fc(x.mean((2, 3)))


def test_a_link_that_depends_on_the_mode_follows_the_models_mode():
    torch.manual_seed(0)
    backbone = _randomise_batchnorm(DropoutLongSkip()).eval()
    model = _adapt(backbone, threshold=0.0).eval()
    assert type(model.blocks[-1].link).__name__ == "CarryingModeDispatch"
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert (model(x) - backbone(x)).abs().max().item() <= 1e-5  # eval: no dropout
        assert (torch.jit.script(model)(x) - backbone(x)).abs().max().item() <= 1e-5
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x))  # training: the dropout runs


@pytest.mark.parametrize("baseline", ["SkipNetStyle", "MaskedExecution", "EarlyExitResNet"])
def test_the_chain_baselines_refuse_a_model_with_outer_shortcuts(baseline):
    from ofas_wrap import compare

    with pytest.raises(ValueError, match="outer shortcuts that carry values across blocks"):
        getattr(compare, baseline)(_adapt(_backbone("adapter")))


# ---------------------------------------------------------------------------------------------------- refusals
class InlineStage(nn.Module):
    """A stage whose inner residual blocks are written inline (no module each), inside a long skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, 1, 1) for _ in range(3)])

    def forward(self, x):
        y = x
        for conv in self.convs:
            y = y + conv(y)
        return y + x


class StemStartNet(nn.Module):
    """A root shortcut that starts inside the stem (before the stem's ReLU), not at its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.body = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        start = self.conv(x)
        return self.fc((self.body(F.relu(start)) + start).mean((2, 3)))


def test_an_outer_shortcut_around_inline_residuals_is_refused_naming_the_additions():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), BasicBlock(8, 8), InlineStage(8), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(SurgeryError) as info:
        _adapt(net)
    message = str(info.value)
    assert "module '2' (InlineStage)" in message and "its addition 'add_4'" in message
    assert "around 3 inner residual structures" in message and "'add_1', 'add_2', 'add_3'" in message
    assert "leaf_modules=[InlineStage]" in message


def test_an_outer_shortcut_from_inside_the_stem_is_refused_naming_the_additions():
    with pytest.raises(SurgeryError) as info:
        _adapt(StemStartNet())
    message = str(info.value)
    assert "the outer shortcut 'add'" in message and "starts inside the stem, at 'conv'" in message
    assert "spans the 2 blocks 'body.0' (addition 'add'), 'body.1' (addition 'add_1')" in message
    assert "adaptify(model.body)" in message


# ------------------------------------------------------------------------------------------------ RoR-3, depth 56
@pytest.fixture(scope="module")
def ror56():
    torch.manual_seed(0)
    backbone = _randomise_batchnorm(RoR3(depth=56)).eval()
    return backbone, ofas_wrap.adaptify(backbone, input_size=(3, 32, 32)).eval()


def test_ror56_gets_one_gate_per_basic_block(ror56):
    _, model = ror56
    assert model.num_gates == 27
    assert [(o.module, len(o.blocks)) for o in model.plan.outer_shortcuts] == [
        ("stages.0", 9), ("stages.1", 9), ("stages.2", 9), ("", 27)]


def test_ror56_is_exact_at_threshold_zero(ror56):
    backbone, model = ror56
    x = torch.randn(2, 3, 32, 32)
    model.threshold = 0.0
    with torch.no_grad():
        assert (model(x) - backbone(x)).abs().max().item() <= 1e-5


def test_ror56_skipping_half_the_blocks_equals_their_branches_removed_by_hand(ror56):
    backbone, model = ror56
    keep = _half_pattern(27)
    reference = blocks_removed_by_hand(backbone, model.gated_block_names, keep)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), model.forced_gates(torch.tensor(keep)):
        got = model(x)
    with torch.no_grad():
        assert (got - reference(x)).abs().max().item() <= 1e-5
    assert model.last_gates.sum(1).tolist() == [13, 13]  # 14 of the 27 blocks skipped
