"""save_pretrained / from_pretrained / push_to_hub: round trips, strict loading, bad files, atomic writes, Hub."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ofas_wrap
from ofas_wrap import CheckpointError, OFASModel
from ofas_wrap._hub import _sha256

SIZE = (3, 16, 16)


def randomize(model: OFASModel, seed: int = 0) -> OFASModel:
    """Give every weight and batch-norm statistic a distinctive value (a fresh model is too regular)."""
    generator = torch.Generator().manual_seed(seed)
    state = {**model.unwrap().state_dict(), **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.fill_(7)
    return model.eval()


def tiny(seed: int = 0, **kwargs) -> OFASModel:
    return randomize(ofas_wrap.create_model("cifar:resnet8", input_size=SIZE, **kwargs), seed)


def skipping_threshold(model: OFASModel, x: torch.Tensor) -> float:
    """A threshold that skips some gated blocks but not all, on ``x``."""
    with torch.no_grad():
        probs = model.gate_probabilities(x)[1]
    return float(probs.flatten().sort().values[probs.numel() // 2])


def rewrite_weights(folder: Path, change) -> None:
    """Edit model.safetensors and keep config.json's checksum in step (to reach the strict-loading checks)."""
    path = folder / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)
    edit_config(folder, lambda c: c.update(weights_sha256=_sha256(path)))


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


class TinyBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.norm(self.conv(x)))


class TinyResNet(nn.Module):
    """A user's own ResNet that no registry knows."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(TinyBlock(8), TinyBlock(8), TinyBlock(8))
        self.fc = nn.Linear(8, 4)
        if tied:
            self.classifier = self.fc  # the same weights under a second name

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------ round trips
def test_round_trip_restores_weights_threshold_and_outputs(tmp_path):
    model = tiny(threshold=0.35)
    folder = model.save_pretrained(tmp_path / "m")
    loaded = OFASModel.from_pretrained(folder)
    assert loaded.threshold == model.threshold
    original = {**model.unwrap().state_dict(), **{f"head.{k}": v for k, v in model.head.state_dict().items()}}
    restored = {**loaded.unwrap().state_dict(), **{f"head.{k}": v for k, v in loaded.head.state_dict().items()}}
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = torch.randn(4, *SIZE)
    for threshold in (0.0, skipping_threshold(model, x)):
        model.threshold = loaded.threshold = threshold
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.last_gates, loaded.last_gates)
    assert not bool(loaded.last_gates.all())  # the second threshold did skip blocks


def test_saved_folder_holds_safetensors_config_and_card(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "ofas-wrap" and config["format_version"] == 1
    assert config["ofas_wrap_version"] == ofas_wrap.__version__
    assert config["backbone"] == {"source": "cifar", "name": "resnet8", "kwargs": {}}
    assert config["ofas"]["gated_blocks"] == ["layer1.0", "layer2.0", "layer3.0"]
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "ofas-wrap" and "ofas" in card.data.tags


def test_model_card_and_config_carry_metrics_classes_and_datasets(tmp_path):
    model = tiny()
    model.config["metrics"] = [{"threshold": 0.0, "accuracy": 0.91, "executed_blocks": 3.0, "latency_ms": 2.5},
                               {"threshold": 0.6, "accuracy": 0.88, "executed_blocks": 1.7, "latency_ms": 1.4}]
    names = [f"class{i}" for i in range(10)]
    folder = model.save_pretrained(tmp_path / "m", class_names=names, datasets=["cifar10"],
                                   normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.datasets == ["cifar10"]
    assert "| threshold | accuracy | executed blocks | latency (ms) |" in card.text
    assert "| 0.6 | 0.88 | 1.7 | 1.4 |" in card.text
    loaded = OFASModel.from_pretrained(folder)
    assert loaded.config["class_names"] == names
    assert loaded.config["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}


def test_bad_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        tiny().save_pretrained(tmp_path / "m", class_names=["a", "b"])  # 10 classes
    with pytest.raises(ValueError, match="normalization"):
        tiny().save_pretrained(tmp_path / "m", normalization={"mean": [0.5], "std": [0.2]})
    assert not (tmp_path / "m").exists()


def test_plain_cifar_backbone_spec_is_inferred(tmp_path):
    model = randomize(ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8, num_classes=4), input_size=SIZE))
    folder = model.save_pretrained(tmp_path / "m")
    loaded = OFASModel.from_pretrained(folder)
    assert loaded.config["backbone"] == {"source": "cifar", "name": "resnet8",
                                         "kwargs": {"num_classes": 4, "in_chans": 3}}
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_timm_and_torchvision_specs_are_inferred():
    import timm
    import torchvision

    assert ofas_wrap._assembly.infer_backbone_spec(timm.create_model("resnet10t", num_classes=3)) == {
        "source": "timm", "name": "resnet10t", "kwargs": {"in_chans": 3, "num_classes": 3}}
    assert ofas_wrap._assembly.infer_backbone_spec(torchvision.models.resnet18(num_classes=5)) == {
        "source": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 5}}


def test_user_backbone_needs_backbone_argument(tmp_path):
    model = randomize(ofas_wrap.adaptify(TinyResNet(), input_size=SIZE))
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["backbone"] is None
    with pytest.raises(CheckpointError, match=r"backbone=MyResNet"):
        OFASModel.from_pretrained(folder)
    loaded = OFASModel.from_pretrained(folder, backbone=TinyResNet())
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    model = randomize(ofas_wrap.adaptify(TinyResNet(tied=True), input_size=SIZE))
    folder = model.save_pretrained(tmp_path / "m")
    assert "backbone.classifier.weight" not in load_file(str(folder / "model.safetensors"))
    loaded = OFASModel.from_pretrained(folder, backbone=TinyResNet(tied=True))
    backbone = loaded.unwrap()
    assert backbone.classifier.weight is backbone.fc.weight
    assert torch.equal(backbone.fc.weight, model.unwrap().fc.weight)


def test_from_pretrained_returns_eval_model_and_threshold_override(tmp_path):
    folder = tiny(threshold=0.2).save_pretrained(tmp_path / "m")
    loaded = OFASModel.from_pretrained(folder, threshold=0.7)
    assert not loaded.training and abs(loaded.threshold - 0.7) < 1e-6


# ----------------------------------------------------------------------------------------- strict load
@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("backbone.fc.bias"), r"missing weights \(1\): backbone\.fc\.bias"),
    (lambda t: t.update({"backbone.extra.weight": torch.zeros(2)}), r"unexpected weights \(1\): backbone\.extra"),
    (lambda t: t.update({"head.fcs.0.weight": torch.zeros(3, 3)}), r"head\.fcs\.0\.weight: file \[3, 3\] vs model"),
], ids=["missing", "unexpected", "shape"])
def test_strict_loading_names_the_offending_weights(tmp_path, change, message):
    folder = tiny().save_pretrained(tmp_path / "m")
    rewrite_weights(folder, change)
    with pytest.raises(CheckpointError, match=message):
        OFASModel.from_pretrained(folder)


def test_config_for_another_backbone_is_an_error(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"is for backbone cifar:resnet8, but backbone= is cifar:resnet14"):
        OFASModel.from_pretrained(folder, backbone=ofas_wrap.models.cifar_resnet(14))
    edit_config(folder, lambda c: c["backbone"].update(name="resnet14"))
    with pytest.raises(CheckpointError, match=r"for another backbone.*only in the model: \['layer1.1'"):
        OFASModel.from_pretrained(folder)


def test_weights_for_other_num_classes_are_a_shape_error(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    edit_config(folder, lambda c: c["backbone"]["kwargs"].update(num_classes=5))
    with pytest.raises(CheckpointError, match=r"backbone\.fc\.weight: file \[10, 64\] vs model \[5, 64\]"):
        OFASModel.from_pretrained(folder)


# ------------------------------------------------------------------------------------------- bad files
def test_truncated_weights_file_is_reported(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match config\.json.*corrupted"):
        OFASModel.from_pretrained(folder)


def test_flipped_bytes_in_weights_are_reported(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        OFASModel.from_pretrained(folder)


def test_unparsable_safetensors_is_reported(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    edit_config(folder, lambda c: c.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        OFASModel.from_pretrained(folder)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("ofas"), r"missing fields \['ofas'\]"),
    (lambda c: c["ofas"].pop("variant"), r"missing fields \['ofas\.variant'\]"),
    (lambda c: c.update(format_version=99), r"written by .* in format version 99.*upgrade"),
], ids=["no-ofas", "no-variant", "newer"])
def test_bad_config_is_reported_with_the_file_name(tmp_path, change, message):
    folder = tiny().save_pretrained(tmp_path / "m")
    edit_config(folder, change)
    with pytest.raises(CheckpointError, match=r"config\.json: " + message):
        OFASModel.from_pretrained(folder)


def test_config_that_is_not_json_is_reported(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        OFASModel.from_pretrained(folder)


def test_folder_without_model_files_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        OFASModel.from_pretrained(tmp_path / "empty")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    folder = tiny().save_pretrained(tmp_path / "m")

    def forbidden(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)
    OFASModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------- atomic writes
def failing_save(tensors, path, metadata):
    Path(path).write_bytes(b"half a file")
    raise OSError("disk full")


def test_failed_save_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    folder = tiny(seed=1, threshold=0.2).save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(ofas_wrap._hub, "_save_safetensors", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tiny(seed=2, threshold=0.6).save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind
    assert abs(OFASModel.from_pretrained(folder).threshold - 0.2) < 1e-6


def test_failed_first_save_leaves_nothing_loadable(tmp_path, monkeypatch):
    monkeypatch.setattr(ofas_wrap._hub, "_save_safetensors", failing_save)
    with pytest.raises(OSError):
        tiny().save_pretrained(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_saving_over_a_folder_replaces_the_model_and_keeps_other_files(tmp_path):
    folder = tiny(seed=1, threshold=0.2).save_pretrained(tmp_path / "m")
    (folder / "notes.txt").write_text("mine")
    tiny(seed=2, threshold=0.6).save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    assert abs(OFASModel.from_pretrained(folder).threshold - 0.6) < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ------------------------------------------------------------------------------------------------ Hub
def test_unknown_repo_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    with pytest.raises(CheckpointError, match=r"'someone/no-such-ofas-model' is not a local folder.*HF_HUB_OFFLINE"):
        OFASModel.from_pretrained("someone/no-such-ofas-model", cache_dir=tmp_path)


def test_path_that_is_neither_folder_nor_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a valid Hub repo id"):
        OFASModel.from_pretrained(str(tmp_path / "missing" / "deeper"))


class FakeHfApi:
    """Records what push_to_hub would send, without any network."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name in the user's namespace
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

    def whoami(self):
        return {"name": "me"}

    def file_exists(self, repo_id, filename, revision=None):  # the files the fake Hub already holds
        return (repo_id, filename, revision) in FakeHfApi.remote_files

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = Path(FakeHfApi.target) / "uploaded"
        shutil.copytree(folder_path, copy)
        FakeHfApi.calls.append(("upload_folder", repo_id, kwargs))
        return "commit-info"


def fake_hub(monkeypatch, tmp_path) -> None:
    """Put FakeHfApi where huggingface_hub and its ModelHubMixin look HfApi up."""
    FakeHfApi.calls, FakeHfApi.target, FakeHfApi.remote_files = [], str(tmp_path), set()
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeHfApi)


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    model = tiny(threshold=0.4)
    assert model.push_to_hub("me/resnet8-ofas", private=True, token="t", datasets=["cifar10"]) == "commit-info"
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = FakeHfApi.calls
    assert (create, repo, repo2) == ("create_repo", "me/resnet8-ofas", "me/resnet8-ofas")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert upload_kwargs["repo_type"] == "model"
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert 'from_pretrained("me/resnet8-ofas")' in (uploaded / "README.md").read_text()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(OFASModel.from_pretrained(uploaded)(x), model(x))


def test_push_to_hub_checks_the_repo_id_first(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any use of it would fail
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", None)
    with pytest.raises(ValueError, match="invalid Hub repo id 'not a repo'"):
        tiny().push_to_hub("not a repo")


def test_mixin_is_invisible_to_torchscript():
    scripted = torch.jit.script(tiny())
    assert not {"save_pretrained", "from_pretrained", "push_to_hub"} & set(scripted._c._method_names())
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        assert scripted(x).shape == (1, 10)


def test_a_save_into_a_symlinked_folder_keeps_the_users_files_in_place(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    model.save_pretrained(link)
    model.save_pretrained(link)  # a second save replaces the model files only
    assert link.is_symlink() and (real / "notes.txt").read_text() == "mine"
    assert (real / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing left beside them


@pytest.mark.parametrize("field, value", [
    ("threshold", None), ("threshold", 0.999999999), ("variant", 5), ("gate_downsample", "no"),
    ("input_size", "3,16,16"), ("input_size", [3, 100000, 100000]), ("hidden_act", "tanh"), ("blocks", [1, 2]),
])
def test_config_values_of_the_wrong_type_or_range_name_the_file_and_field(tmp_path, field, value):
    folder = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["ofas"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ofas_wrap.CheckpointError, match=rf"config\.json: field 'ofas\.{field}'"):
        ofas_wrap.OFASModel.from_pretrained(folder)


def test_an_absurd_class_count_is_refused_before_building(tmp_path):
    folder = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["kwargs"]["num_classes"] = 10**9
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ofas_wrap.CheckpointError, match="num_classes"):
        ofas_wrap.OFASModel.from_pretrained(folder)


def test_save_pretrained_clears_the_leftovers_of_killed_saves(tmp_path):
    stale = [tmp_path / ".m.tmp-abc123", tmp_path / ".m.old-def456"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
    ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).save_pretrained(tmp_path / "m")
    assert not any(folder.exists() for folder in stale)


def test_a_save_keeps_a_readme_the_user_edited_and_renews_its_own(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16), threshold=0.3)
    folder = model.save_pretrained(tmp_path / "m")
    ours = (folder / "README.md").read_text()
    model.threshold = 0.6
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() != ours  # our own card follows the model
    (folder / "README.md").write_text("# My model\n\nNotes I wrote.\n")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# My model\n\nNotes I wrote.\n"
    assert ofas_wrap.OFASModel.from_pretrained(folder).threshold == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------ card metadata
def test_card_lists_one_eval_result_per_metrics_row_with_an_accuracy(tmp_path):
    model = tiny()
    model.config["metrics"] = [{"threshold": 0.0, "accuracy": 0.91, "executed_blocks": 3.0},
                               {"threshold": 0.6, "accuracy": 0.88, "latency_ms": 1.4},
                               {"threshold": 0.7, "latency_ms": 1.1}]  # no accuracy: no result
    folder = model.save_pretrained(tmp_path / "m", datasets=["cifar10"])
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    results = card.data.eval_results
    assert [(r.metric_type, r.metric_value, r.metric_args) for r in results] == [
        ("accuracy", 0.91, {"threshold": 0.0}), ("accuracy", 0.88, {"threshold": 0.6})]
    assert {(r.task_type, r.dataset_type) for r in results} == {("image-classification", "cifar10")}
    assert card.data.model_name == "OFAS-I cifar:resnet8"
    assert card.data.base_model is None  # a CIFAR ResNet has no Hub weights to name
    plain = huggingface_hub.ModelCard.load(tiny().save_pretrained(tmp_path / "plain") / "README.md")
    assert plain.data.eval_results is None and "model-index" not in plain.content


def test_card_names_the_timm_weights_as_base_model():
    config = json.loads(json.dumps(ofas_wrap._assembly.build_config(tiny())))
    config["backbone"] = {"source": "timm", "name": "resnet18.a1_in1k", "kwargs": {}}
    card = huggingface_hub.ModelCard(ofas_wrap._hub.model_card(config))
    assert card.data.base_model == "timm/resnet18.a1_in1k"
    base = ofas_wrap._hub.base_model_id
    assert base({"source": "timm", "name": "hf-hub:someone/resnet-x", "kwargs": {}}) == "someone/resnet-x"
    for unknown in ({"source": "timm", "name": "resnet18"}, {"source": "torchvision", "name": "resnet18"},
                    {"source": "cifar", "name": "resnet8"}, None):
        assert base(unknown) is None


# ------------------------------------------------------------------------------------ on ModelHubMixin
def test_the_model_is_a_model_hub_mixin_with_our_card():
    model = tiny()
    assert isinstance(model, huggingface_hub.ModelHubMixin)
    assert "_hub_mixin_config" not in vars(model)  # no second copy of the constructor's arguments
    card = model.generate_model_card(model_name="Mine", repo_id="me/mine")
    assert card.data.library_name == "ofas-wrap" and card.text.lstrip().startswith("# Mine")
    assert 'from_pretrained("me/mine")' in card.text
    with pytest.raises(TypeError, match=r"model_card_kwargs has keys \['language'\]"):
        model.generate_model_card(language="en")


def test_push_to_hub_passes_branch_and_patterns_to_the_upload(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    tiny().push_to_hub("me/m", branch="dev", create_pr=True, allow_patterns=["*.json", "*.safetensors"],
                       ignore_patterns="*.md", delete_patterns=["old/*"], commit_message="new weights",
                       config={"license": "mit"}, model_card_kwargs={"model_name": "My OFAS"})
    (_, _, create_kwargs), (_, _, upload) = FakeHfApi.calls
    assert (upload["revision"], upload["create_pr"], upload["commit_message"]) == ("dev", True, "new weights")
    assert upload["allow_patterns"] == ["*.json", "*.safetensors"] and upload["ignore_patterns"] == "*.md"
    assert upload["delete_patterns"] == ["old/*"]
    uploaded = tmp_path / "uploaded"
    assert json.loads((uploaded / "config.json").read_text())["license"] == "mit"
    assert (uploaded / "README.md").read_text().count("# My OFAS") == 1
    FakeHfApi.calls = []
    shutil.rmtree(uploaded)
    tiny().push_to_hub("me/m", revision="v2")  # the older name of branch
    assert FakeHfApi.calls[1][2]["revision"] == "v2"
    with pytest.raises(ValueError, match="revision is the older name of branch"):
        tiny().push_to_hub("me/m", branch="a", revision="b")


@pytest.mark.parametrize("repo_id, remote, kwargs, ignored", [
    ("me/m", None, {}, None),  # a new repo: the generated card goes up
    ("me/m", ("me/m", "README.md", None), {}, ["README.md"]),  # a card edited on the Hub is kept
    ("m", ("me/m", "README.md", None), {}, ["README.md"]),  # a bare name is the token owner's repo
    ("me/m", ("me/m", "README.md", "dev"), {"branch": "dev", "ignore_patterns": "*.bin"}, ["*.bin", "README.md"]),
    ("me/m", ("me/m", "README.md", None), {"branch": "dev"}, None),  # the branch has no card yet
    ("me/m", ("me/m", "README.md", None), {"overwrite_card": True}, None),
    ("me/m", ("me/m", "README.md", None), {"ignore_patterns": "*.md"}, "*.md"),  # not sent anyway
])
def test_push_to_hub_keeps_a_card_edited_on_the_hub(tmp_path, monkeypatch, repo_id, remote, kwargs, ignored):
    fake_hub(monkeypatch, tmp_path)
    if remote:
        FakeHfApi.remote_files.add(remote)
    tiny().push_to_hub(repo_id, **kwargs)
    assert FakeHfApi.calls[-1][0] == "upload_folder" and FakeHfApi.calls[-1][2]["ignore_patterns"] == ignored


def test_push_to_hub_checks_the_descriptions_before_creating_the_repo(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        tiny().push_to_hub("me/m", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"config= has keys \['ofas'\]"):
        tiny().push_to_hub("me/m", config={"ofas": {}})
    with pytest.raises(TypeError, match=r"unexpected arguments \['colour'\]"):
        tiny().push_to_hub("me/m", colour="red")
    assert FakeHfApi.calls == []


def test_save_pretrained_can_push_the_model_too(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    model = tiny()
    assert model.save_pretrained(tmp_path / "resnet8-ofas", push_to_hub=True, private=True,
                                 datasets=["cifar10"]) == "commit-info"
    (_, repo, create_kwargs), (_, repo2, _) = FakeHfApi.calls
    assert (repo, repo2) == ("resnet8-ofas", "me/resnet8-ofas")  # the folder's name by default
    assert create_kwargs["private"] is True
    local, uploaded = tmp_path / "resnet8-ofas", tmp_path / "uploaded"
    for folder in (local, uploaded):
        assert json.loads((folder / "config.json").read_text())["datasets"] == ["cifar10"]
        assert 'from_pretrained("resnet8-ofas")' in (folder / "README.md").read_text()


def test_save_pretrained_refuses_upload_arguments_before_writing(tmp_path, monkeypatch):
    fake_hub(monkeypatch, tmp_path)
    with pytest.raises(TypeError, match=r"\['private'\], which only an upload uses; pass push_to_hub=True"):
        tiny().save_pretrained(tmp_path / "m", private=True)
    with pytest.raises(TypeError, match=r"unexpected arguments \['colour'\]"):
        tiny().save_pretrained(tmp_path / "m", push_to_hub=True, colour="red")
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        tiny().save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="not a repo")
    with pytest.raises(TypeError, match="license given twice"):
        tiny().save_pretrained(tmp_path / "m", license="mit", config={"license": "apache-2.0"})
    assert not (tmp_path / "m").exists() and FakeHfApi.calls == []


def test_from_pretrained_downloads_a_repo_id_with_the_mixins_arguments(tmp_path, monkeypatch):
    model = tiny(threshold=0.25)
    folder = model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = OFASModel.from_pretrained("me/resnet8-ofas", force_download=True, revision="v1", token="t")
    (repo_id, kwargs), = calls
    assert repo_id == "me/resnet8-ofas" and kwargs["force_download"] is True
    assert (kwargs["revision"], kwargs["token"]) == ("v1", "t")
    assert {"config.json", "model.safetensors", "README.md"} <= set(kwargs["allow_patterns"])
    assert loaded.threshold == model.threshold
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="threshold must be a number"):  # checked before any download
        OFASModel.from_pretrained("me/resnet8-ofas", threshold=1.5)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------- shared tensors
def test_shared_weights_round_trip_and_interoperate_with_safetensors_save_model(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_model, save_model

    model = randomize(ofas_wrap.adaptify(TinyResNet(tied=True), input_size=SIZE))
    folder = model.save_pretrained(tmp_path / "m")
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["aliases"]) == {"backbone.classifier.bias": "backbone.fc.bias",
                                                             "backbone.classifier.weight": "backbone.fc.weight"}
    # our file loads with safetensors' own loader, the sharing intact
    other = ofas_wrap.adaptify(TinyResNet(tied=True), input_size=SIZE)
    box = nn.ModuleDict({"backbone": other.unwrap(), "head": other.head})
    assert load_model(box, str(folder / "model.safetensors")) == (set(), [])
    assert torch.equal(other.unwrap().classifier.weight, model.unwrap().fc.weight)
    # and a file safetensors.torch.save_model wrote (it keeps backbone.classifier.*) loads with from_pretrained
    save_model(nn.ModuleDict({"backbone": model.unwrap(), "head": model.head}), str(folder / "model.safetensors"))
    assert "backbone.fc.weight" not in load_file(str(folder / "model.safetensors"))
    edit_config(folder, lambda c: c.update(weights_sha256=_sha256(folder / "model.safetensors")))
    loaded = OFASModel.from_pretrained(folder, backbone=TinyResNet(tied=True))
    assert loaded.unwrap().classifier.weight is loaded.unwrap().fc.weight
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
