"""adaptify(): discovery, equivalence, gating, real skipping, errors (issue 2)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap import OFASModel, SurgeryError
from ofas_wrap.models import cifar_resnet, create_backbone

# ------------------------------------------------------------------------------------------------ architectures
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]
TIMM = ["resnet18", "resnet26", "resnet50", "resnet50d", "seresnet50", "resnext50_32x4d", "resnetv2_50"]
CIFAR_DEPTHS = [20, 32, 38, 44, 56, 110]

# expected number of residual blocks (= gates with gate_downsample=True)
EXPECTED_BLOCKS = {
    "torchvision:resnet18": 8, "torchvision:resnet34": 16, "torchvision:resnet50": 16, "torchvision:resnet101": 33,
    "torchvision:resnet152": 50, "torchvision:resnext50_32x4d": 16, "torchvision:wide_resnet50_2": 16,
    "timm:resnet18": 8, "timm:resnet26": 8, "timm:resnet50": 16, "timm:resnet50d": 16, "timm:seresnet50": 16,
    "timm:resnext50_32x4d": 16, "timm:resnetv2_50": 16,
    **{f"cifar:resnet{d}": 3 * (d - 2) // 6 for d in CIFAR_DEPTHS},
}
ALL_SPECS = list(EXPECTED_BLOCKS)


def _input_for(spec: str, batch: int = 2) -> torch.Tensor:
    size = 32 if spec.startswith("cifar") else 64
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_threshold_zero_output_equals_backbone(spec):
    backbone = create_backbone(spec, num_classes=10).eval()
    x = _input_for(spec)
    model = ofas_wrap.adaptify(backbone, threshold=0.0, input_size=tuple(x.shape[1:])).eval()
    with torch.no_grad():
        expected = backbone(x)
        got = model(x)
    assert model.num_gates == EXPECTED_BLOCKS[spec]
    assert bool(model.last_gates.all()), "T = 0 must execute every block"
    assert (got - expected).abs().max().item() <= 1e-5


# -------------------------------------------------------------------------------------------------- a user's own
class PreActBlock(nn.Module):
    """A pre-activation block whose projection shortcut starts from the shared pre-activation."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1))
        self.proj = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        pre = torch.relu(self.norm(x))
        shortcut = x if self.proj is None else self.proj(pre)
        return self.body(pre) + shortcut


class ContextGate(nn.Module):
    """A residual structure of its own (global-context style), nested inside a block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.fc(x.mean((2, 3), keepdim=True))


class SplitBlock(nn.Module):
    """Res2Net-like hierarchical additions inside the block, plus a nested residual module."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.conv_a = nn.Conv2d(channels // 2, channels // 2, 3, padding=1)
        self.conv_b = nn.Conv2d(channels // 2, channels // 2, 3, padding=1)
        self.context = ContextGate(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        a, b = torch.chunk(self.conv_in(x), 2, dim=1)
        a = self.conv_a(a)
        b = self.conv_b(b + a)  # hierarchical addition: not a residual of the block
        out = self.context(torch.cat([a, b], dim=1))
        return self.act(out + x)


class MyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.ModuleList(
            [PreActBlock(8, 8, 1), SplitBlock(8), PreActBlock(8, 16, 2), PreActBlock(16, 16, 1)]
        )
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        x = self.entry(x)
        for block in self.features:
            x = block(x)
        return self.classifier(x.mean((2, 3)))


def test_users_own_resnet_blocks_found_without_overlap():
    model = ofas_wrap.adaptify(MyResNet().eval(), input_size=(3, 16, 16))
    assert [b.name for b in model.plan] == ["features.0", "features.1", "features.2", "features.3"]
    assert [b.shortcut for b in model.plan] == ["identity", "identity", "projection", "identity"]
    assert model.plan[1].nested == ["features.1.context"]


def test_users_own_resnet_equivalence():
    backbone = MyResNet().eval()
    model = ofas_wrap.adaptify(backbone, threshold=0.0, input_size=(3, 16, 16)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), backbone(x), atol=1e-5)


# -------------------------------------------------------------------------------------- forced patterns, routing
def _reference_cifar(backbone, x, pattern):
    """Hand-written forward that runs only the chosen blocks (shortcut for the others)."""
    h = backbone.relu(backbone.bn1(backbone.conv1(x)))
    blocks = [b for stage in (backbone.layer1, backbone.layer2, backbone.layer3) for b in stage]
    for run, block in zip(pattern.tolist(), blocks):
        if run:
            h = block(h)
        elif block.downsample is not None:
            h = block.downsample(h)
    return backbone.fc(backbone.avgpool(h).flatten(1))


def _reference_torchvision(backbone, x, pattern):
    h = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    blocks = [b for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for b in stage]
    for run, block in zip(pattern.tolist(), blocks):
        if run:
            h = block(h)
        elif block.downsample is not None:
            h = block.downsample(h)
    return backbone.fc(torch.flatten(backbone.avgpool(h), 1))


REFERENCES = [
    ("cifar:resnet20", _reference_cifar, 32),
    ("torchvision:resnet18", _reference_torchvision, 64),
]


@pytest.mark.parametrize("spec,reference,size", REFERENCES)
def test_forced_pattern_batch_of_one_matches_reference(spec, reference, size):
    backbone = create_backbone(spec).eval()
    model = ofas_wrap.adaptify(backbone, input_size=(3, size, size)).eval()
    x = torch.randn(1, 3, size, size)
    pattern = torch.rand(model.num_gates) < 0.5
    with torch.no_grad(), model.forced_gates(pattern):
        got = model(x)
        expected = reference(backbone, x, pattern)
    assert torch.equal(model.last_gates[0], pattern)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("spec,reference,size", REFERENCES)
def test_per_sample_patterns_match_reference(spec, reference, size):
    backbone = create_backbone(spec).eval()
    model = ofas_wrap.adaptify(backbone, input_size=(3, size, size)).eval()
    x = torch.randn(6, 3, size, size)
    patterns = torch.rand(6, model.num_gates) < 0.5
    patterns[0] = True  # one sample runs everything, one nothing: fast paths mixed with routing
    patterns[1] = False
    with torch.no_grad(), model.forced_gates(patterns):
        got = model(x)
        expected = torch.cat([reference(backbone, x[i:i + 1], patterns[i]) for i in range(6)])
    assert torch.allclose(got, expected, atol=1e-5)


def _count_block_calls(model):
    calls: dict[str, list[int]] = {}
    handles = []
    for gated in model.blocks:
        def hook(module, inputs, name=gated.name):
            calls.setdefault(name, []).append(inputs[0].shape[0])
        handles.append(gated.block.register_forward_pre_hook(hook))
    return calls, handles


def test_skipped_blocks_are_not_run_batch_of_one():
    model = ofas_wrap.adaptify(cifar_resnet(20)).eval()
    pattern = torch.tensor([True, False, True, False, False, True, False, True, False])
    calls, _ = _count_block_calls(model)
    with torch.no_grad(), model.forced_gates(pattern):
        model(torch.randn(1, 3, 32, 32))
    executed = {b.name for b, run in zip(model.blocks, pattern) if run}
    assert set(calls) == executed


def test_per_sample_routing_runs_blocks_only_on_their_samples():
    model = ofas_wrap.adaptify(cifar_resnet(20)).eval()
    patterns = torch.rand(8, model.num_gates) < 0.5
    calls, _ = _count_block_calls(model)
    with torch.no_grad(), model.forced_gates(patterns):
        model(torch.randn(8, 3, 32, 32))
    for index, gated in enumerate(model.blocks):
        executed = int(patterns[:, index].sum())
        assert calls.get(gated.name, []) == ([executed] if executed else [])


def test_threshold_decides_gates_from_head_output():
    model = ofas_wrap.adaptify(cifar_resnet(20), threshold=0.5).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(x)
        _, probs = model.gate_probabilities(x)
    assert torch.equal(model.last_gates, probs >= 0.5)
    model.threshold = 0.0
    with torch.no_grad():
        model(x)
    assert bool(model.last_gates.all())


def test_executed_flops_follow_gates():
    model = ofas_wrap.adaptify(cifar_resnet(20)).eval()
    everything = torch.ones(model.num_gates, dtype=torch.bool)
    nothing = torch.zeros(model.num_gates, dtype=torch.bool)
    full = model.executed_flops(everything)
    empty = model.executed_flops(nothing)
    assert full.item() == pytest.approx(model.plan.total_flops)
    projections = sum(b.skip_flops for b in model.plan)
    assert empty.item() == pytest.approx(model.plan.total_flops - sum(b.flops for b in model.plan) + projections)


# ------------------------------------------------------------------------------------------------------ training
def test_head_receives_gradients_through_straight_through_gates():
    model = ofas_wrap.adaptify(cifar_resnet(20), threshold=0.5).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_sampled_gates_are_bernoulli_draws_with_a_straight_through_gradient():
    from ofas_wrap._gating import sampled_straight_through_gates

    probs = torch.tensor([0.1, 0.5, 0.9]).repeat(20000, 1).requires_grad_()
    gates = sampled_straight_through_gates(probs, torch.Generator().manual_seed(0))
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(gates.detach().mean(0), torch.tensor([0.1, 0.5, 0.9]), atol=0.01)
    (grad,) = torch.autograd.grad((gates * torch.arange(3.0)).sum(), probs)
    assert torch.equal(grad, torch.arange(3.0).expand_as(probs))


def test_detached_head_input_sends_no_gradient_into_stem():
    for detach, expect_grad in ((True, False), (False, True)):
        model = ofas_wrap.adaptify(cifar_resnet(20), detach_input=detach).train()
        _, probs = model.gate_probabilities(torch.randn(2, 3, 32, 32))
        probs.sum().backward()
        stem_grad = model.unwrap().conv1.weight.grad
        assert (stem_grad is not None and stem_grad.abs().sum() > 0) == expect_grad


def test_training_forward_mixes_block_and_shortcut_with_forced_gates():
    backbone = cifar_resnet(20)
    model = ofas_wrap.adaptify(backbone).train()
    pattern = torch.rand(model.num_gates) < 0.5
    x = torch.randn(2, 3, 32, 32)
    with model.forced_gates(pattern):
        got = model(x)
    expected = _reference_cifar(backbone, x, pattern)  # both in training mode: same batch statistics
    assert torch.allclose(got, expected, atol=1e-4)


def test_head_works_at_batch_size_one_in_training():
    model = ofas_wrap.adaptify(cifar_resnet(20)).train()
    logits = model(torch.randn(1, 3, 32, 32))  # a batch of one must not be squeezed away in the head
    assert logits.shape == (1, 10)
    assert model.last_probs.shape == (1, model.num_gates)
    assert model.last_gates.shape == (1, model.num_gates)


# -------------------------------------------------------------------------------------------------- the head
@pytest.mark.parametrize("variant,widths", [("I", [(16, 32), (32, 9)]), ("II", [(16, 16), (16, 48), (48, 9)])])
def test_head_layers_follow_table_two(variant, widths):
    model = ofas_wrap.adaptify(cifar_resnet(20), variant=variant)
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == widths
    assert not any(isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU)) for m in model.head.modules())


@pytest.mark.parametrize("depth,variant", [(38, "I"), (56, "II"), (110, "II")])
def test_auto_variant_uses_two_for_deeper_than_fifty_layers(depth, variant):
    assert ofas_wrap.adaptify(cifar_resnet(depth), variant="auto").config["variant"] == variant


def test_hidden_activation_option():
    model = ofas_wrap.adaptify(cifar_resnet(20), variant="II", hidden_act="relu")
    assert sum(isinstance(m, nn.ReLU) for m in model.head.modules()) == 2


def test_gate_downsample_false_keeps_projection_blocks_on():
    model = ofas_wrap.adaptify(cifar_resnet(20), gate_downsample=False).eval()
    assert model.num_gates == 7
    assert [b.gated for b in model.plan if b.shortcut == "projection"] == [False, False]
    calls, _ = _count_block_calls(model)
    with torch.no_grad(), model.forced_gates(torch.zeros(7, dtype=torch.bool)):
        model(torch.randn(1, 3, 32, 32))
    assert set(calls) == {"layer2.0", "layer3.0"}


# -------------------------------------------------------------------------------------- model object, threshold
def test_threshold_is_a_saved_buffer_and_validated():
    model = ofas_wrap.adaptify(cifar_resnet(20), threshold=0.3)
    assert model.threshold == pytest.approx(0.3)
    model.threshold = 0.7
    assert model.state_dict()["gate_threshold"].item() == pytest.approx(0.7)
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            model.threshold = bad


def test_adaptify_does_not_change_or_copy_the_backbone():
    backbone = cifar_resnet(20)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    structure = repr(backbone)
    model = ofas_wrap.adaptify(backbone)
    assert repr(backbone) == structure
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert model.unwrap() is backbone
    assert model.blocks[0].block is backbone.layer1[0]
    assert model.stem.conv1.weight.data_ptr() == backbone.conv1.weight.data_ptr()


def test_training_the_adapted_model_trains_the_backbone_in_place():
    backbone = cifar_resnet(20)
    model = ofas_wrap.adaptify(backbone).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = backbone.fc.weight.detach().clone()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert not torch.equal(before, model.unwrap().fc.weight)


def test_forced_gates_validates_mask():
    model = ofas_wrap.adaptify(cifar_resnet(20))
    with pytest.raises(ValueError, match="num_gates=9"):
        with model.forced_gates(torch.ones(5, dtype=torch.bool)):
            pass
    with pytest.raises(TypeError, match="bool"):
        with model.forced_gates(torch.ones(9)):
            pass


def test_scripted_model_matches_eager_and_keeps_threshold_knob():
    model = ofas_wrap.adaptify(cifar_resnet(20), gate_bias_init=0.0).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(3, 3, 32, 32)
    for threshold in (0.0, 0.5, 0.9):
        model.threshold = threshold
        scripted.gate_threshold.fill_(threshold)
        with torch.no_grad():
            assert torch.allclose(scripted(x), model(x), atol=1e-5)


# ------------------------------------------------------------------------------------------------------- errors
class TinyVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


MLP = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("model", [TinyVGG(), MLP], ids=["vgg", "mlp"])
def test_model_without_residual_blocks_is_rejected(model):
    with pytest.raises(SurgeryError, match="no residual addition"):
        ofas_wrap.adaptify(model, input_size=(3, 2, 2))


class DataDependentBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace this
            return self.conv(x) + x
        return x


class UntraceableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = BasicResidual(8)
        self.odd = DataDependentBlock()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.odd(self.block(self.stem(x))).mean((2, 3)))


class BasicResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def test_untraceable_module_is_named_with_leaf_hint():
    with pytest.raises(SurgeryError) as info:
        ofas_wrap.adaptify(UntraceableNet(), input_size=(3, 8, 8))
    message = str(info.value)
    assert "'odd'" in message and "DataDependentBlock" in message
    assert "x.sum() > 0" in message
    assert "leaf_modules=" in message


def test_leaf_modules_make_an_untraceable_model_work():
    net = UntraceableNet().eval()
    model = ofas_wrap.adaptify(net, leaf_modules=[DataDependentBlock], threshold=0.0, input_size=(3, 8, 8)).eval()
    assert [b.name for b in model.plan] == ["block"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-6)


def test_failed_adaptify_leaves_model_as_it_was():
    net = UntraceableNet().train()
    before = copy.deepcopy(net.state_dict())
    modes = [m.training for m in net.modules()]
    with pytest.raises(SurgeryError):
        ofas_wrap.adaptify(net, input_size=(3, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes


def test_bad_arguments_are_rejected_before_tracing():
    model = cifar_resnet(20)
    with pytest.raises(ValueError, match="'I', 'II', 'auto'"):
        ofas_wrap.adaptify(model, variant="III")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ofas_wrap.adaptify(model, threshold=1.5)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ofas_wrap.adaptify("resnet50")
    with pytest.raises(ValueError, match="hidden_act"):
        ofas_wrap.adaptify(model, hidden_act="tanhh")
    with pytest.raises(TypeError, match="already an OFASModel"):
        ofas_wrap.adaptify(ofas_wrap.adaptify(model))


def test_profiling_does_not_touch_batchnorm_statistics():
    backbone = cifar_resnet(20).train()
    before = backbone.bn1.running_mean.clone()
    ofas_wrap.adaptify(backbone)
    assert torch.equal(before, backbone.bn1.running_mean)
    assert backbone.training


def test_a_threshold_that_rounds_to_one_in_float32_is_refused():
    model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8))
    with pytest.raises(ValueError, match="rounds to 1.0"):
        model.threshold = 0.999999999
    assert model.threshold == 0.5  # unchanged (adaptify's default)
    model.threshold = 0.9999
    assert model.threshold < 1.0


def test_inspect_refuses_a_non_resnet_and_an_absurd_depth_with_exit_2(capsys):
    from ofas_wrap import cli

    assert cli.main(["inspect", "torchvision:vgg11"]) == 2
    assert "no residual addition" in capsys.readouterr().err
    assert cli.main(["inspect", "cifar:resnet600002"]) == 2
    assert "beyond 1202" in capsys.readouterr().err


def test_one_training_forward_changes_the_buffers_as_the_backbones_does():
    import torchvision

    backbone = torchvision.models.resnet18(num_classes=10)
    reference = copy.deepcopy(backbone).train()
    model = ofas_wrap.adaptify(backbone, input_size=(3, 32, 32), threshold=0.0).train()
    x = torch.randn(4, 3, 32, 32)
    model(x)
    reference(x)
    ours, theirs = model.unwrap().state_dict(), reference.state_dict()
    assert int(ours["layer2.0.downsample.1.num_batches_tracked"]) == 1
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in theirs if "running" in k)


class PooledAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(torch.relu(self.bn(self.conv(x)) + x), 2)


def test_a_block_that_changes_its_output_after_the_addition_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), PooledAfterAdd(), PooledAfterAdd(), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.randn(1, 3, 32, 32))
    with pytest.raises(SurgeryError, match="changes its output after the residual addition"):
        ofas_wrap.adaptify(net, input_size=(3, 32, 32))


def test_the_adapted_model_follows_train_and_eval_like_the_backbone(tmp_path):
    # timm's functional dropout (F.dropout(x, training=self.training)) in the head of the backbone
    model = ofas_wrap.create_model("timm:resnet18", num_classes=10, backbone_kwargs={"drop_rate": 0.5},
                                   input_size=(3, 32, 32), threshold=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no dropout
        torch.manual_seed(0)
        assert torch.allclose(model(x), model.unwrap().eval()(x), atol=1e-5)
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x))  # training: dropout runs
    model.eval()
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-5)
    folder = model.save_pretrained(tmp_path / "dropout")
    loaded = ofas_wrap.OFASModel.from_pretrained(folder)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_backbones_adapt_with_the_head_in_their_dtype(dtype):
    backbone = cifar_resnet(8).to(dtype).eval()
    model = ofas_wrap.adaptify(backbone, input_size=(3, 16, 16), threshold=0.0).eval()
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    assert next(model.head.parameters()).dtype == dtype
    assert torch.equal(model(x), backbone(x))


def test_nf_resnets_are_refused_with_the_reason():
    model = create_backbone("timm:nf_resnet26", num_classes=10)
    with pytest.raises(SurgeryError, match=r"could not look into NormFreeBlock \(x8\).*register_notrace_module"):
        ofas_wrap.adaptify(model, input_size=(3, 64, 64))


@pytest.mark.parametrize("spec", ["timm:resnet18", "cifar:resnet8", "torchvision:resnet18"])
def test_the_adapted_model_answers_timms_interface(spec):
    model = ofas_wrap.create_model(spec, num_classes=7, input_size=(3, 32, 32), threshold=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.allclose(model.forward_head(features), model(x), atol=1e-6)
    assert features.dim() == 4 and features.shape[1] == model.num_features
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    assert tuple(model.pretrained_cfg["input_size"])[0] == 3


@pytest.mark.parametrize("spec", ["timm:resnet18", "cifar:resnet8", "torchvision:resnet18"])
def test_reset_classifier_replaces_it_everywhere_and_survives_a_save(tmp_path, spec):
    model = ofas_wrap.create_model(spec, num_classes=7, input_size=(3, 32, 32), threshold=0.0).eval()
    gates = [p.clone() for p in model.head.parameters()]
    model.reset_classifier(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 3) and model.num_classes == 3
        assert torch.allclose(model(x), model.unwrap()(x), atol=1e-5)  # the tail uses the backbone's new classifier
    assert all(torch.equal(a, b) for a, b in zip(gates, model.head.parameters()))  # the gates are kept
    loaded = OFASModel.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_reset_classifier_refuses_bad_values_before_changing_anything():
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    before = model.get_classifier()
    for value, message in ((0, "positive integer"), (True, "positive integer")):
        with pytest.raises(ValueError, match=message):
            model.reset_classifier(value)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")
    assert model.get_classifier() is before and model.num_classes == 10


def test_timm_resolves_the_backbones_data_config_through_the_adapted_model():
    timm_data = pytest.importorskip("timm.data")
    model = ofas_wrap.create_model("timm:resnet18", num_classes=7)
    assert timm_data.resolve_model_data_config(model) == timm_data.resolve_model_data_config(model.unwrap())


def test_grad_checkpointing_gives_the_same_gradients_and_still_scripts():
    torch.manual_seed(0)
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16), threshold=0.3)
    model.train()
    for module in model.modules():  # frozen statistics: recomputation then changes nothing
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    x = torch.randn(4, 3, 16, 16)

    calls = []
    hook = model.blocks[0].block.register_forward_hook(lambda *_: calls.append(1))

    def grads():
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(calls) == 3  # the block ran again in the backward pass: its activations were not kept
    assert len(plain) == len(checkpointed) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
    with pytest.raises(TypeError, match="True or False"):
        model.set_grad_checkpointing("yes")
    hook.remove()
    torch.jit.script(model.eval())  # the switch does not reach the scripted inference path
