"""Bring your own ResNet: a factory named by file path or module, a checkpoint file, folders that rebuild only with
trust_remote_code, the recipes' --model/--weights/--trust-remote-code, and bad inputs refused before any write."""

import json
import textwrap

import pytest
import torch

import ofas_wrap
from ofas_wrap._hub import CheckpointError
from ofas_wrap._recipes import e2e_finetune, train_backbone
from ofas_wrap._training import main_guard
from ofas_wrap.models import WeightsError, is_factory_spec, load_checkpoint_weights

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
                self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))

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
    from ofas_wrap._recipes import rl_finetune
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
