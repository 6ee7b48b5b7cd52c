"""Depth pruning (issue 25, item 2): an adapted model with a fixed pattern written as a plain backbone with those
blocks removed; equal to the OFAS model with the pattern forced, loadable with torch alone and by from_pretrained.

Three tiny ResNets written here, as users write theirs: option-A shortcuts (a ``lambda`` that subsamples and
zero-pads, as the released CIFAR ResNets), 1x1 projection shortcuts with blocks in a ``ModuleList`` the forward
loops over, and torchvision-style Bottleneck blocks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import ofas_wrap
from ofas_wrap import CheckpointError, OFASModel

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- the tiny ResNets
class LambdaLayer(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class OptionABlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            pad = (cout - cin) // 2
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class OptionAResNet(nn.Module):
    """Option-A shortcuts: stage 2 and 3 open with a block whose shortcut subsamples and zero-pads (no weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        widths, cin, stages = (4, 8, 16), 4, []
        for index, width in enumerate(widths):
            stages.append(nn.Sequential(*[OptionABlock(cin if b == 0 else width, width, 2 if index and b == 0 else 1)
                                          for b in range(2)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(16, 5)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ProjectionBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.project = None
        if stride != 1 or cin != cout:
            self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        shortcut = x if self.project is None else self.project(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + shortcut)


class ProjectionResNet(nn.Module):
    """1x1 projection shortcuts; the blocks sit in one ModuleList that the forward loops over."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([ProjectionBlock(4, 4, 1), ProjectionBlock(4, 8, 2), ProjectionBlock(8, 8, 1),
                                     ProjectionBlock(8, 16, 2), ProjectionBlock(16, 16, 1)])
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class BottleneckResNet(nn.Module):
    """torchvision's layout at a tiny width: 7x7 stem and max-pool, stages of Bottlenecks, ``downsample`` shortcuts."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(4, 2, 1)
        self.layer2 = self._make_layer(8, 2, 2)
        self.layer3 = self._make_layer(8, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name: (factory, input size, the blocks the pattern removes: identity and projection shortcuts both)
CASES = {
    "option_a": (OptionAResNet, (3, 16, 16), ["layer1.1", "layer2.0", "layer3.1"]),
    "projection": (ProjectionResNet, (3, 16, 16), ["blocks.1", "blocks.2", "blocks.4"]),
    "bottleneck": (BottleneckResNet, (3, 32, 32), ["layer1.0", "layer1.1", "layer2.1"]),
}


def build(factory, seed: int = 0) -> nn.Module:
    """The backbone with seeded weights and BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    backbone = factory()
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return backbone.eval()


def adapted(name: str) -> tuple[OFASModel, list[bool], tuple[int, ...]]:
    factory, size, removed = CASES[name]
    model = ofas_wrap.adaptify(build(factory), input_size=size).eval()
    assert set(removed) <= set(model.gated_block_names), model.gated_block_names
    return model, [block not in removed for block in model.gated_block_names], size


def forced(model: OFASModel, keep: list[bool], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.forced_gates(torch.tensor(keep)):
        return model(x)


def inputs(size, batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))


def snapshot(model: OFASModel) -> dict:
    backbone = model.unwrap()
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "backbone_state": {k: v.clone() for k, v in backbone.state_dict().items()},
            "modules": [(name, type(m).__name__, m.training) for name, m in backbone.named_modules()],
            "training": model.training, "forced": model.forced_gate_mask, "threshold": model.threshold}


def same(before: dict, after: dict) -> bool:
    tensors = all(torch.equal(before[key][name], after[key][name])
                  for key in ("state", "backbone_state") for name in before[key])
    return tensors and all(before[key] == after[key] for key in ("modules", "training", "forced", "threshold"))


# ------------------------------------------------------------------------------------------- the pruned network
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", sorted(CASES))
def test_pruned_network_equals_the_forced_pattern(name, batch):
    model, keep, size = adapted(name)
    x = inputs(size, batch)
    pruned = ofas_wrap.prune_blocks(model, keep).eval()
    with torch.no_grad():
        difference = (pruned(x) - forced(model, keep, x)).abs().max().item()
    assert difference <= 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_removed_blocks_are_physically_gone_and_the_rest_keeps_its_names(name):
    model, keep, _ = adapted(name)
    backbone = model.unwrap()
    pruned = ofas_wrap.prune_blocks(model, keep)
    assert type(pruned) is type(backbone)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in backbone.parameters())
    assert set(pruned.state_dict()) < set(backbone.state_dict())  # a subset, under the backbone's own names
    for block, kept in zip(model.blocks, keep):
        module = pruned.get_submodule(block.name)
        if kept:
            assert type(module) is type(block.block)
        elif block.identity_shortcut:
            assert isinstance(module, nn.Identity)
        else:  # only the projection's weights are left of it
            own = {k for k in backbone.state_dict() if k.startswith(block.name + ".")}
            left = {k for k in pruned.state_dict() if k.startswith(block.name + ".")}
            assert type(module).__name__ == "Shortcut" and left < own
            assert not any(".conv1." in k or ".bn1." in k for k in left)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_users_model_is_never_changed(name, tmp_path):
    model, keep, size = adapted(name)
    model.train()
    before = snapshot(model)
    ofas_wrap.prune_blocks(model, keep)
    ofas_wrap.export_torchscript(model, tmp_path / "pruned.pt", prune=keep)
    model.save_pretrained(tmp_path / "pruned", prune=keep)
    assert same(before, snapshot(model))


def test_the_pruned_network_is_in_the_models_mode():
    model, keep, _ = adapted("projection")
    assert not ofas_wrap.prune_blocks(model.eval(), keep).training
    pruned = ofas_wrap.prune_blocks(model.train(), keep)
    assert all(module.training for module in pruned.modules())


def test_keep_by_names_is_the_same_as_by_bools():
    model, keep, size = adapted("bottleneck")
    names = [block for block, kept in zip(model.gated_block_names, keep) if kept]
    x = inputs(size)
    with torch.no_grad():
        by_names = ofas_wrap.prune_blocks(model, names).eval()(x)
        by_tensor = ofas_wrap.prune_blocks(model, torch.tensor(keep)).eval()(x)
    assert torch.equal(by_names, by_tensor)


def test_keeping_every_block_gives_the_backbone_and_removing_every_block_runs_only_the_projections():
    model, _, size = adapted("option_a")
    x = inputs(size)
    with torch.no_grad():
        assert torch.allclose(ofas_wrap.prune_blocks(model, [True] * model.num_gates).eval()(x),
                              model.unwrap()(x), atol=1e-5)
        none = ofas_wrap.prune_blocks(model, [False] * model.num_gates).eval()
        assert torch.allclose(none(x), forced(model, [False] * model.num_gates, x), atol=1e-5)
    assert not any(isinstance(m, nn.Conv2d) for name, m in none.named_modules() if name.startswith("layer"))


def test_the_recorded_flops_are_those_of_the_pruned_network(tmp_path):
    model, keep, size = adapted("projection")
    model.save_pretrained(tmp_path / "pruned", prune=keep)
    recorded = json.loads((tmp_path / "pruned" / "config.json").read_text())["pruned"]
    flops, _ = ofas_wrap.count_flops(ofas_wrap.prune_blocks(model, keep).eval(), torch.zeros(1, *size))
    assert recorded["flops"] == flops < recorded["backbone_flops"] == model.plan.backbone_flops


# -------------------------------------------------------------------------------------------- TorchScript file
@pytest.mark.parametrize("name", sorted(CASES))
def test_torchscript_file_equals_the_forced_pattern(name, tmp_path):
    model, keep, size = adapted(name)
    path = ofas_wrap.export_torchscript(model, tmp_path / "pruned.pt", prune=keep)
    scripted = torch.jit.load(str(path))
    for batch in (1, 4):
        x = inputs(size, batch, seed=batch)
        with torch.no_grad():
            assert (scripted(x) - forced(model, keep, x)).abs().max().item() <= 1e-5


def test_torchscript_file_carries_its_config_and_has_no_gates(tmp_path):
    model, keep, _ = adapted("bottleneck")
    path = ofas_wrap.export_torchscript(model, tmp_path / "pruned.pt", prune=keep)
    module, config = ofas_wrap.load_torchscript(path)
    assert config["pruned"]["keep"] == keep and config["architecture"] == "PrunedBackbone"
    assert config["pruned"]["removed_blocks"] == CASES["bottleneck"][2]
    assert not hasattr(module, "gate_threshold") and not hasattr(module, "last_gates")


def test_torchscript_file_loads_in_a_fresh_process_without_ofas_wrap(tmp_path):
    model, keep, size = adapted("option_a")
    path = ofas_wrap.export_torchscript(model, tmp_path / "pruned.pt", prune=keep)
    x = inputs(size, 3)
    torch.save({"x": x, "expected": forced(model, keep, x)}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"ofas_config.json": ""}}
        module = torch.jit.load({str(path)!r}, _extra_files=extra)
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        with torch.no_grad():
            difference = (module(io["x"]) - io["expected"]).abs().max().item()
        print(json.dumps({{"difference": difference, "removed": json.loads(extra["ofas_config.json"])["pruned"][
            "removed_blocks"], "imported": "ofas_wrap" in sys.modules}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["difference"] <= 1e-5 and not report["imported"]
    assert report["removed"] == CASES["option_a"][2]


def test_a_failed_export_leaves_the_old_file(tmp_path, monkeypatch):
    model, keep, _ = adapted("projection")
    target = tmp_path / "pruned.pt"
    target.write_bytes(b"the previous file")

    def failing_save(module, path, _extra_files=None):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ofas_wrap.export_torchscript(model, target, prune=keep)
    assert target.read_bytes() == b"the previous file" and [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]


# ----------------------------------------------------------------------------------- save_pretrained / from_pretrained
@pytest.mark.parametrize("name", sorted(CASES))
def test_from_pretrained_returns_the_pruned_network(name, tmp_path):
    model, keep, size = adapted(name)
    folder = model.save_pretrained(tmp_path / "pruned", prune=keep)
    factory = CASES[name][0]
    loaded = OFASModel.from_pretrained(folder, backbone=build(factory, seed=7))  # other weights: the file's count
    assert type(loaded) is factory and not loaded.training
    x = inputs(size)
    with torch.no_grad():
        assert (loaded(x) - forced(model, keep, x)).abs().max().item() <= 1e-5


def test_the_saved_folder_holds_only_the_pruned_networks_weights(tmp_path):
    model, keep, _ = adapted("bottleneck")
    folder = model.save_pretrained(tmp_path / "pruned", prune=keep)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        saved = set(handle.keys())
    expected = {f"backbone.{k}" for k in ofas_wrap.prune_blocks(model, keep).state_dict()}
    assert saved == expected and not any(k.startswith("head.") for k in saved)
    config = json.loads((folder / "config.json").read_text())
    assert config["pruned"]["removed_blocks"] == CASES["bottleneck"][2] and config["metrics"] is None


def test_a_registry_backbone_is_rebuilt_from_its_spec(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
    keep = [True, False, True]
    folder = model.save_pretrained(tmp_path / "pruned", prune=keep, class_names=[str(i) for i in range(10)])
    loaded = OFASModel.from_pretrained(folder)
    assert isinstance(loaded, ofas_wrap.models.CifarResNet) and type(loaded.layer2[0]).__name__ == "Shortcut"
    x = inputs((3, 16, 16))
    with torch.no_grad():
        assert (loaded(x) - forced(model, keep, x)).abs().max().item() <= 1e-5
    card = (folder / "README.md").read_text()
    assert "depth-pruned to 2 of 3 blocks" in card and "Removed blocks: layer2.0." in card
    assert "input-adaptive" not in card


def test_from_pretrained_refuses_a_threshold_for_a_pruned_folder(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    folder = model.save_pretrained(tmp_path / "pruned", prune=[True, False, True])
    with pytest.raises(ValueError, match="depth-pruned network, which has no gates"):
        OFASModel.from_pretrained(folder, threshold=0.5)


def test_a_damaged_pruned_section_is_reported(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    folder = model.save_pretrained(tmp_path / "pruned", prune=[True, False, True])
    config = json.loads((folder / "config.json").read_text())
    config["pruned"]["keep"] = [True, False]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"field 'pruned\.keep' must be 3 booleans"):
        OFASModel.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("keep, error, message", [
    ([True, False], ValueError, r"keep has shape \(2,\), but the model has 3 gated blocks \(layer1\.0, layer2\.0"),
    ([1, 0, 1], TypeError, r"keep must be 3 bools .*dtype torch\.int64.*\[bool\(v\) for v in pattern\]"),
    (torch.ones(3), TypeError, r"dtype torch\.float32"),
    (torch.ones(2, 3, dtype=torch.bool), ValueError, r"shape \(2, 3\).*the same pattern for every input"),
    (["layer1.0", "layer9.9"], ValueError, r"\['layer9\.9'\], which are not gated blocks.*layer1\.0, layer2\.0"),
    (["layer1.0", "layer1.0"], ValueError, r"\['layer1\.0'\] more than once"),
    ("layer1.0", TypeError, r"got the string 'layer1\.0' \(for a single block pass \['layer1\.0'\]\)"),
    (None, TypeError, r"keep must be 3 bools"),
], ids=["length", "ints", "floats", "per-sample", "unknown-name", "repeated-name", "string", "none"])
def test_a_bad_pattern_is_refused_with_what_to_pass(keep, error, message):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    with pytest.raises(error, match=message):
        ofas_wrap.prune_blocks(model, keep)


def test_a_plain_backbone_is_refused():
    with pytest.raises(TypeError, match=r"expects an OFASModel .*not model\.unwrap\(\)"):
        ofas_wrap.prune_blocks(ofas_wrap.models.cifar_resnet(8), [True, True, True])


def test_a_bad_pattern_writes_nothing_and_keeps_what_was_there(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    folder = model.save_pretrained(tmp_path / "saved")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="keep has shape"):
        model.save_pretrained(folder, prune=[True])
    with pytest.raises(ValueError, match="keep has shape"):
        ofas_wrap.export_torchscript(model, tmp_path / "pruned.pt", prune=[True])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


@pytest.mark.parametrize("kwargs, message", [
    ({"push_to_hub": True}, "writes a local folder only"),
    ({"metrics": [{"threshold": 0.5, "accuracy": 0.9}]}, "leave metrics out"),
])
def test_save_pretrained_refuses_what_a_pruned_network_cannot_have(kwargs, message, tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    with pytest.raises(TypeError, match=message):
        model.save_pretrained(tmp_path / "pruned", prune=[True, False, True], **kwargs)
    assert not (tmp_path / "pruned").exists()


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_export_prune_writes_the_pruned_network(tmp_path, capsys):
    from ofas_wrap.cli import main

    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
    folder = model.save_pretrained(tmp_path / "m")
    assert main(["export", str(folder), str(tmp_path / "p.pt"), "--prune", "1,0,1"]) == 0
    assert "1 of 3 gated blocks removed: layer2.0" in capsys.readouterr().out
    x = inputs((3, 16, 16))
    with torch.no_grad():
        assert (torch.jit.load(str(tmp_path / "p.pt"))(x) - forced(model, [True, False, True], x)).abs().max() <= 1e-5


@pytest.mark.parametrize("flags, message", [
    (["--prune", "1,0"], "--prune has 2 values, but .* has 3 gated blocks"),
    (["--prune", "1,0,1", "--threshold", "0.5"], "leave out --format and --threshold"),
    (["--prune", "1,0,1", "--format", "onnx"], "leave out --format and --threshold"),
])
def test_cli_export_prune_refuses_bad_flags(flags, message, tmp_path, capsys):
    from ofas_wrap.cli import main

    assert main(["export", "cifar:resnet8", str(tmp_path / "p.pt"), *flags]) == 2
    assert not list(tmp_path.iterdir())
    assert re.search(message, capsys.readouterr().err)


def test_cli_prune_pattern_takes_only_ones_and_zeros(capsys):
    from ofas_wrap.cli import main

    with pytest.raises(SystemExit):
        main(["export", "cifar:resnet8", "p.pt", "--prune", "1,2,1"])
    assert "--prune takes one 1 (keep) or 0 (remove) per gated block" in capsys.readouterr().err


def test_cli_bench_times_a_pruned_file(tmp_path, capsys):
    from ofas_wrap.cli import main

    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    ofas_wrap.export_torchscript(model, tmp_path / "p.pt", prune=[True, False, True])
    assert main(["bench", str(tmp_path / "p.pt"), "--runs", "2", "--warmup", "1", "--threads", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["kept_blocks"] == 2 and row["removed_blocks"] == ["layer2.0"] and row["latency"]["median_ms"] > 0


def test_the_device_script_times_a_pruned_file_with_torch_alone(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    path = ofas_wrap.export_torchscript(model, tmp_path / "p.pt", prune=[True, False, True])
    script = os.path.join(REPO_ROOT, "recipes", "device_latency.py")
    runner = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["device_latency.py", {str(path)!r}, "--runs", "2", "--warmup", "1", "--json"]
        try:
            runpy.run_path({script!r}, run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "ofas_wrap" not in sys.modules, "device_latency.py imported ofas_wrap"
    """)
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["threshold"] is None and row["executed_blocks"] == 2.0 and row["median_ms"] > 0
    assert row["mflops"] == pytest.approx(ofas_wrap.count_flops(
        ofas_wrap.prune_blocks(model, [True, False, True]).eval(), torch.zeros(1, 3, 16, 16))[0] / 1e6)


# ------------------------------------------------------------------------------------------------------ benchmark
def test_the_latency_benchmark_runs_and_reports_equality_and_the_ratio(tmp_path):
    out = tmp_path / "prune_latency.json"
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "prune_latency.py"), "--smoke",
                             "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["max_abs_difference"] <= 1e-5
    for row in report["rows"]:
        assert {"batch", "ofas_forced_ms", "pruned_ms", "pruned_over_ofas"} <= set(row)
        assert all(value > 0 for value in (row["ofas_forced_ms"], row["pruned_ms"], row["pruned_over_ofas"]))
