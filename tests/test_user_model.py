"""Bring your own ResNet: a factory named by file path or module, a checkpoint file, folders that rebuild only with
trust_remote_code, the recipes' --model/--weights/--trust-remote-code, and bad inputs refused before any write."""

import json
import textwrap

import pytest
import torch

import ofas_wrap
from ofas_wrap._hub import CheckpointError
from ofas_wrap.models import WeightsError, is_factory_spec, load_checkpoint_weights
from ofas_wrap.training import e2e_finetune, main_guard, train_backbone

# A user's model file, written as public CIFAR ResNets are: option-A shortcuts through a lambda.
USER_MODEL = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class LambdaLayer(nn.Module):
        def __init__(self, lambd):
            super().__init__()
            self.lambd = lambd

        def forward(self, x):
            return self.lambd(x)


    class Block(nn.Module):
        def __init__(self, cin, cout, stride=1):
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
            return F.relu(out + self.shortcut(x))


    class TinyResNet(nn.Module):
        def __init__(self, width=4, classes=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
            self.layer2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width))
            self.linear = nn.Linear(2 * width, classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer2(self.layer1(out))
            out = F.avg_pool2d(out, out.size()[3])
            return self.linear(out.view(out.size(0), -1))


    def tiny_resnet(width=4):
        return TinyResNet(width)
''')


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "user_models" / "my_resnet.py"
    path.parent.mkdir()
    path.write_text(USER_MODEL)
    return path


@pytest.fixture()
def checkpoint(tmp_path, user_file):
    """A checkpoint as the public repositories save one: a dict with 'state_dict', 'module.' keys (DataParallel)."""
    model = ofas_wrap.models.create_backbone(f"{user_file}:tiny_resnet")
    state = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "tiny.th"
    torch.save({"state_dict": state, "best_prec1": 91.0}, path)
    return path, model


def test_factory_specs_are_told_from_registry_names():
    assert is_factory_spec("models/my_resnet.py:tiny") and is_factory_spec("pkg.models:build")
    assert not is_factory_spec("cifar:resnet20") and not is_factory_spec("timm:resnet18")


def test_a_users_class_and_checkpoint_adapt_exactly(user_file, checkpoint):
    path, reference = checkpoint
    model = ofas_wrap.create_model(f"{user_file}:tiny_resnet", checkpoint_path=str(path), input_size=(3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    model.eval().threshold = 0.0
    assert torch.allclose(model(x), reference.eval()(x), atol=1e-6)
    assert model.config["backbone"]["source"] == "factory"


def test_a_model_torchscript_cannot_compile_exports_through_fx_traces(tmp_path, user_file, checkpoint):
    path, _ = checkpoint
    model = ofas_wrap.create_model(f"{user_file}:tiny_resnet", checkpoint_path=str(path), input_size=(3, 16, 16))
    with pytest.raises(Exception, match="lambd"):  # the lambda of the option-A shortcut: TorchScript refuses it
        torch.jit.script(model.eval())
    with torch.no_grad():
        _, probs = model.gate_probabilities(torch.randn(1, 3, 16, 16))
    model.threshold = float(probs.median())  # skips some blocks
    exported = ofas_wrap.export_torchscript(model, tmp_path / "model.pt")
    scripted, config = ofas_wrap.load_torchscript(exported)
    assert config["export"]["fx_traced_modules"] == ["blocks.2.block"]  # the downsampling block, nothing else
    x = torch.randn(3, 3, 16, 16)
    for threshold in (0.0, model.threshold):
        model.threshold = threshold
        scripted.gate_threshold.fill_(threshold)
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
    assert isinstance(model.blocks[2].block.shortcut, torch.nn.Module)  # the user's model is left as it was
    assert type(model.blocks[2].block).__name__ == "Block"


def test_a_saved_folder_rebuilds_only_with_trust_remote_code(tmp_path, user_file, checkpoint):
    model = ofas_wrap.create_model(f"{user_file}:tiny_resnet", checkpoint_path=str(checkpoint[0]),
                                   input_size=(3, 16, 16), threshold=0.2)
    folder = model.save_pretrained(tmp_path / "saved")
    assert (folder / "my_resnet.py").read_text() == USER_MODEL  # the code travels with the folder
    user_file.unlink()  # and the folder does not need the original file
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        ofas_wrap.OFASModel.from_pretrained(folder)
    loaded = ofas_wrap.OFASModel.from_pretrained(folder, trust_remote_code=True)
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6) and loaded.threshold == pytest.approx(0.2)


def test_cli_bench_takes_trust_remote_code(tmp_path, user_file, checkpoint, capsys):
    from ofas_wrap.cli import main

    model = ofas_wrap.create_model(f"{user_file}:tiny_resnet", checkpoint_path=str(checkpoint[0]),
                                   input_size=(3, 16, 16))
    folder = model.save_pretrained(tmp_path / "saved")
    assert main(["bench", str(folder), "--runs", "2", "--warmup", "1"]) != 0
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main(["bench", str(folder), "--trust-remote-code", "--runs", "2", "--warmup", "1"]) == 0


def test_a_factory_by_module_path(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ofas_wrap.create_model("userpkg.nets:tiny_resnet", backbone_kwargs={"width": 8}, input_size=(3, 16, 16))
    assert model.config["backbone"] == {"source": "factory", "name": "userpkg.nets:tiny_resnet", "kwargs": {"width": 8}}
    assert model.unwrap().linear.in_features == 16


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("linear.weight"), "missing"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected"),
    (lambda s: s.__setitem__("linear.weight", torch.zeros(3, 3)), "mis-shaped"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_unchanged(tmp_path, user_file, checkpoint, damage, message):
    state = dict(checkpoint[1].state_dict())
    damage(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    model = ofas_wrap.models.create_backbone(f"{user_file}:tiny_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=message):
        load_checkpoint_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Payload:
    pass


def test_a_pickle_holding_objects_is_never_unpickled(tmp_path, user_file):
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, path)
    with pytest.raises(WeightsError, match="never unpickles"):
        load_checkpoint_weights(ofas_wrap.models.create_backbone(f"{user_file}:tiny_resnet"), path)


def test_a_factory_that_does_not_import_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ofas_wrap.create_model(f"{tmp_path}/nowhere.py:build")
    with pytest.raises(ValueError, match="cannot import module"):
        ofas_wrap.create_model("no_such_package.nets:build")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="importing .* failed: RuntimeError: boom"):
        ofas_wrap.create_model(f"{broken}:build")


# --------------------------------------------------------------------------------------------------- recipes
def test_the_recipes_take_a_users_model_and_weights(tmp_path, monkeypatch, user_file, checkpoint, capsys):
    from tests.test_recipes import TINY, write_tiny_idx

    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))
    dataset = write_tiny_idx(tmp_path / "idx", size=16)
    common = ["--dataset", dataset, "--in-chans", "3", "--val-size", "16", "--max-steps", "2", *TINY]
    e2e = tmp_path / "e2e"
    assert main_guard(e2e_finetune, ["--model", f"{user_file}:tiny_resnet", "--weights", str(checkpoint[0]),
                                     "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                                     "--output", str(e2e), *common]) == 0
    config = json.loads((e2e / "config.json").read_text())
    assert config["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert config["ofas"]["input_size"] == [3, 16, 16]  # profiled at the size the user feeds
    # a later phase needs the opt-in to run the folder's code: one line, exit 2, nothing written
    rl_out = tmp_path / "rl"
    from ofas_wrap.training import rl_finetune
    assert main_guard(rl_finetune, ["--init", str(e2e), "--output", str(rl_out), *TINY]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err and not rl_out.exists()
    assert main_guard(rl_finetune, ["--init", str(e2e), "--output", str(rl_out), "--trust-remote-code",
                                    "--max-steps", "1", *TINY]) == 0


def test_bad_user_model_flags_fail_before_anything_is_written(tmp_path, monkeypatch, user_file, capsys):
    from tests.test_recipes import TINY, write_tiny_idx

    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))
    dataset = write_tiny_idx(tmp_path / "idx", size=16)
    bad = tmp_path / "bad.pt"
    torch.save({"linear.weight": torch.zeros(2, 2)}, bad)
    for extra, message in ((["--weights", str(bad)], "does not fit"),
                           (["--model-kwargs", '{"depth": 3}'], "unexpected keyword"),
                           (["--mean", "0.5"], "--mean and --std")):
        out = tmp_path / "out"
        code = main_guard(train_backbone, ["--dataset", dataset, "--in-chans", "3", "--model",
                                           f"{user_file}:tiny_resnet", "--output", str(out), *extra, *TINY])
        assert code == 2 and message in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------ modules built inside forward
class InlineBasic(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.residual = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                            torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
                                            torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                            torch.nn.BatchNorm2d(channels))
        self.shortcut = torch.nn.Sequential()

    def forward(self, x):
        return torch.nn.ReLU(inplace=True)(self.residual(x) + self.shortcut(x))


class InlineBottleneck(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.residual = torch.nn.Sequential(torch.nn.Conv2d(channels, channels // 2, 1, bias=False),
                                            torch.nn.BatchNorm2d(channels // 2), torch.nn.ReLU(),
                                            torch.nn.Conv2d(channels // 2, channels // 2, 3, padding=1, bias=False),
                                            torch.nn.BatchNorm2d(channels // 2), torch.nn.ReLU(),
                                            torch.nn.Conv2d(channels // 2, channels, 1, bias=False),
                                            torch.nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.nn.ReLU(inplace=True)(self.residual(x) + x)


class InlineNet(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(block(8), block(8))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class InlineWeights(InlineNet):
    def forward(self, x):
        return torch.nn.Linear(8, 3)(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("block", [InlineBasic, InlineBottleneck])
def test_modules_built_inside_forward_are_traced_through(block):
    net = InlineNet(block).eval()
    model = ofas_wrap.adaptify(net, input_size=(3, 8, 8), threshold=0.0).eval()
    x = torch.randn(2, 3, 8, 8)
    assert model.num_gates == 2 and torch.allclose(model(x), net(x), atol=1e-6)


def test_a_module_with_weights_built_inside_forward_is_refused():
    with pytest.raises(ofas_wrap.SurgeryError, match="created inside a forward"):
        ofas_wrap.adaptify(InlineWeights(InlineBasic), input_size=(3, 8, 8))


def test_val_from_test_chooses_on_one_half_and_reports_on_the_other(tmp_path, monkeypatch):
    from ofas_wrap.data import load_image_data
    from tests.test_recipes import write_tiny_idx

    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))
    dataset = write_tiny_idx(tmp_path / "idx", n_train=40, n_test=24)
    data = load_image_data(dataset, val_from="test", val_size=0.5)
    assert data.info.sizes == {"train": 40, "val": 12, "test": 12} and data.info.val_from == "test"
    val = {tuple(img.flatten().tolist()) for img in data.val.images}
    test = {tuple(img.flatten().tolist()) for img in data.test.images}
    assert not val & test  # never the same image
    again = load_image_data(dataset, val_from="test")
    assert torch.equal(again.val.images, data.val.images)  # fixed and seeded


def test_each_phase_runs_from_python_on_a_model_object(tmp_path, monkeypatch):
    from ofas_wrap.training import rl_finetune
    from tests.test_recipes import TINY, write_tiny_idx

    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))
    dataset = write_tiny_idx(tmp_path / "idx", size=16)
    common = ["--dataset", dataset, "--in-chans", "3", "--val-size", "16", "--max-steps", "2", *TINY]
    net = InlineNet(InlineBasic)
    net.fc = torch.nn.Linear(8, 4)
    before = net.stem.weight.detach().clone()
    base = train_backbone([*common, "--output", str(tmp_path / "b")], model=net)
    assert not torch.equal(net.stem.weight, before)  # the user's object was trained in place
    e2e = e2e_finetune([*common, "--output", str(tmp_path / "e")], model=base["model"])
    assert isinstance(e2e["model"], ofas_wrap.OFASModel) and e2e["model"].unwrap() is net
    rl = rl_finetune([*common, "--output", str(tmp_path / "r")], model=e2e["model"])
    assert rl["global_step"] == 2 and rl["model"] is e2e["model"]
    with pytest.raises(ofas_wrap.training.RunError, match="model= already gives the model"):
        e2e_finetune([*common, "--model", "cifar:resnet8", "--output", str(tmp_path / "x")], model=net)


class FixedPoolNet(torch.nn.Module):
    """As most public CIFAR ResNets end: a fixed pooling window, so only 32 px inputs reach the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(InlineBasic(8), InlineBasic(8))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.avg_pool2d(self.blocks(self.stem(x)), 32).flatten(1))


def test_profiling_without_input_size_warns_and_finds_a_size_that_works():
    with pytest.warns(UserWarning, match=r"\(3, 224, 224\) failed"):
        model = ofas_wrap.adaptify(FixedPoolNet())
    assert model.plan.input_size == (3, 32, 32)
    with pytest.warns(UserWarning, match="pass input_size"):
        ofas_wrap.adaptify(InlineNet(InlineBasic))  # a guess that works is still said


def test_profiling_at_a_given_size_that_fails_names_it():
    with pytest.raises(ofas_wrap.SurgeryError, match=r"input_size=\(3, 16, 16\) failed"):
        ofas_wrap.adaptify(FixedPoolNet(), input_size=(3, 16, 16))


def test_a_factory_folder_on_the_hub_downloads_its_code_too(tmp_path, user_file, checkpoint, monkeypatch):
    import fnmatch
    import shutil

    import huggingface_hub

    model = ofas_wrap.create_model(f"{user_file}:tiny_resnet", checkpoint_path=str(checkpoint[0]),
                                   input_size=(3, 16, 16), threshold=0.2)
    repo = model.save_pretrained(tmp_path / "repo")
    user_file.unlink()

    def fake_snapshot_download(repo_id, *, allow_patterns, **kwargs):  # only what the patterns allow
        cache = tmp_path / "cache"
        cache.mkdir()
        for path in repo.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, cache / path.name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = ofas_wrap.OFASModel.from_pretrained("me/tiny-resnet-ofas", trust_remote_code=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
