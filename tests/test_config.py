"""OFASConfig: the one place for the head settings, their checks, and the "ofas" section of config.json."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ofas_wrap
from ofas_wrap import OFASConfig, OFASModel
from ofas_wrap._config import CheckpointError, ConfigFieldError, check_threshold, read_document
from ofas_wrap._hub import read_config
from ofas_wrap.cli import main

REPO = Path(__file__).resolve().parents[1]
KEPT = REPO / "benchmarks" / "weights" / "cifar10" / "resnet38_sd"  # saved before OFASConfig existed
SIZE = (3, 16, 16)
BLOCKS = {"gated_blocks": ["layer1.0", "layer2.0"], "blocks": ["layer1.0", "layer2.0", "layer3.0"]}


def built(**changes):
    """The "ofas" section of a built model's config.json."""
    values = {"variant": "I", "threshold": 0.3, "gate_downsample": True, "hidden_act": "none", "detach_input": True,
              "gate_bias_init": None, "input_size": [3, 32, 32], **BLOCKS}
    values.update(changes)
    return values


@pytest.mark.parametrize("field, value", [
    ("variant", "III"), ("variant", None), ("variant", "i"),
    ("threshold", 1.0), ("threshold", -0.1), ("threshold", 0.999999999), ("threshold", math.nan),
    ("threshold", None), ("threshold", "0.5"), ("threshold", True),
    ("gate_downsample", "no"), ("gate_downsample", 1), ("detach_input", None),
    ("hidden_act", "tanh"), ("hidden_act", "ReLU"),
    ("gate_bias_init", "2"), ("gate_bias_init", math.inf), ("gate_bias_init", False),
    ("input_size", (32, 32)), ("input_size", (3, 0, 32)), ("input_size", (3, 32.0, 32)), ("input_size", "3,32,32"),
    ("gated_blocks", "layer1.0"), ("blocks", [1, 2]),
])
def test_every_bad_value_is_refused_naming_the_field_and_the_value(field, value):
    with pytest.raises(ConfigFieldError) as caught:
        OFASConfig(**{field: value})
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"{field} must ") and repr(value) in message
    assert "; " in message  # the fix follows


@pytest.mark.parametrize("changes, field", [
    ({"variant": "auto"}, "variant"),  # a built model records the variant adaptify chose
    ({"input_size": None}, "input_size"),
    ({"gated_blocks": ["layer9.9"]}, "gated_blocks"),
    ({"gated_blocks": None}, "gated_blocks"),
], ids=["auto-in-built", "no-size", "stray-gated", "blocks-alone"])
def test_a_built_config_must_be_complete_and_consistent(changes, field):
    with pytest.raises(ConfigFieldError) as caught:
        OFASConfig.from_dict(built(**changes))
    assert caught.value.field == field


def test_defaults_are_adaptifys():
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(ofas_wrap.adaptify).parameters.items()
                if p.default is not inspect.Parameter.empty and name != "leaf_modules"}
    assert {key: getattr(OFASConfig(), key) for key in defaults} == defaults
    assert OFASConfig.keys() == ofas_wrap._hub.OFAS_KEYS


def test_dict_round_trip_gives_json_types_in_field_order():
    config = OFASConfig.from_dict(built(gate_bias_init=2.0, hidden_act="gelu"))
    data = config.to_dict()
    # every field in order; the optional ones (added after format version 1) only away from their default
    assert list(data) == [k for k in OFASConfig.keys() if k not in OFASConfig.OPTIONAL_KEYS]
    assert list(config.replace(pool_grid=2).to_dict()) == list(OFASConfig.keys())
    assert data["input_size"] == [3, 32, 32] and data["blocks"] == BLOCKS["blocks"]  # lists, as config.json has
    assert json.loads(json.dumps(data)) == data
    assert OFASConfig.from_dict(data) == config
    assert config.replace(threshold=0.7).threshold == 0.7 and config.threshold == 0.3
    with pytest.raises(ConfigFieldError, match="threshold"):
        config.replace(threshold=2)


def test_unknown_keys_are_refused_and_listed():
    with pytest.raises(ValueError, match=r"unknown OFASConfig keys \['tresh', 'varient'\]; the known keys are"):
        OFASConfig.from_dict(dict(built(), varient="I", tresh=0.5))
    with pytest.raises(TypeError, match="expects a dict"):
        OFASConfig.from_dict([("variant", "I")])


def test_save_and_from_pretrained_round_trip(tmp_path):
    config = OFASConfig.from_dict(built(hidden_act="relu"))
    path = config.save_pretrained(tmp_path / "cfg")
    assert path == tmp_path / "cfg" / "config.json"
    document = json.loads(path.read_text())
    assert document["format"] == "ofas-wrap" and document["format_version"] == ofas_wrap._hub.FORMAT_VERSION
    assert document["ofas"] == config.to_dict()
    assert OFASConfig.from_pretrained(tmp_path / "cfg") == config
    assert OFASConfig.from_pretrained(path) == config
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["config.json"]  # no temporary file left


def test_save_pretrained_into_a_model_folder_changes_only_the_ofas_section(tmp_path):
    folder = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE).save_pretrained(tmp_path / "m")
    before = json.loads((folder / "config.json").read_text())
    changed = OFASModel.from_pretrained(folder).ofas_config.replace(threshold=0.7)
    changed.save_pretrained(folder)
    after = json.loads((folder / "config.json").read_text())
    assert after["ofas"]["threshold"] == 0.7
    assert {k: v for k, v in after.items() if k != "ofas"} == {k: v for k, v in before.items() if k != "ofas"}
    assert OFASModel.from_pretrained(folder).threshold == pytest.approx(0.7)


def test_from_pretrained_reports_missing_foreign_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        OFASConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="no 'ofas' section"):
        OFASConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other", "ofas": built()}))
    with pytest.raises(ValueError, match="is not an ofas-wrap config"):
        OFASConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 99, "ofas": built()}))
    with pytest.raises(ValueError, match="format version 99.*upgrade"):
        OFASConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"ofas": built(hidden_act="tanh")}))
    with pytest.raises(ValueError, match=r"config\.json: hidden_act must be one of"):
        OFASConfig.from_pretrained(tmp_path)


def test_adaptify_records_its_settings_as_an_ofas_config():
    model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8), threshold=0.3, hidden_act="silu",
                               input_size=torch.Size(SIZE))
    config = model.ofas_config
    assert isinstance(config, OFASConfig)
    assert config.variant == "I" and config.threshold == 0.3 and config.hidden_act == "silu"
    assert config.input_size == SIZE and list(config.gated_blocks) == model.gated_block_names
    assert config.to_dict() == {key: model.config[key] for key in OFASConfig.keys()  # model.config as before
                                if key not in OFASConfig.OPTIONAL_KEYS}
    assert isinstance(model.config["input_size"], list)
    model.threshold = 0.6
    assert model.ofas_config.threshold == 0.6  # the current knob, written as config.json writes it


def test_adaptify_checks_its_settings_before_tracing():
    with pytest.raises(ConfigFieldError, match="gate_bias_init must be None or a finite number"):
        ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8), gate_bias_init=float("nan"))
    with pytest.raises(ValueError, match=r"input_size must be \(channels, height, width\)"):
        ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(8), input_size=(32, 32))


@pytest.mark.skipif(not (KEPT / "model.safetensors").is_file(), reason="the kept backbone is not in this checkout")
def test_a_folder_saved_before_loads_unchanged_and_saves_identically(tmp_path):
    original = json.loads((KEPT / "config.json").read_text())
    model = OFASModel.from_pretrained(KEPT)
    assert model.ofas_config == OFASConfig.from_dict(original["ofas"])
    assert OFASConfig.from_pretrained(KEPT) == model.ofas_config
    saved = model.save_pretrained(tmp_path / "again")
    again = json.loads((saved / "config.json").read_text())
    assert list(again) == list(original) and list(again["ofas"]) == list(original["ofas"])
    # the same config; only the hashes of the files may differ (the card says what FLOPs are since it was written)
    hashes = ("weights_sha256", "card_sha256")
    assert {k: v for k, v in again.items() if k not in hashes} == {k: v for k, v in original.items() if k not in hashes}
    old, new = load_file(str(KEPT / "model.safetensors")), load_file(str(saved / "model.safetensors"))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert OFASModel.from_pretrained(saved).ofas_config == model.ofas_config


def test_one_threshold_check_for_the_model_the_config_and_the_cli(capsys):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE)
    with pytest.raises(ValueError) as from_model:
        model.threshold = 1.0
    with pytest.raises(ValueError) as from_config:
        OFASConfig(threshold=1.0)
    with pytest.raises(ValueError) as direct:
        check_threshold(1.0)
    assert str(from_model.value) == str(from_config.value) == str(direct.value)
    assert str(direct.value).startswith("threshold must be a number in [0, 1)")
    with pytest.raises(SystemExit) as cli_exit:
        main(["export", "cifar:resnet8", "unused.pt", "--threshold", "1.0"])
    assert cli_exit.value.code == 2
    assert str(direct.value).replace("threshold", "--threshold", 1) in capsys.readouterr().err
    with pytest.raises(ValueError, match="rounds to 1.0"):
        model.threshold = 0.999999999
    assert model.threshold == 0.5


def test_the_flags_take_their_choices_from_the_config():
    from ofas_wrap.cli import build_parser
    from ofas_wrap.training import backbone_parser, e2e_parser

    def choices(parser, dest):
        return [tuple(a.choices) for a in parser._actions if a.dest == dest]

    assert choices(e2e_parser(), "variant") == [OFASConfig.VARIANTS]
    assert choices(e2e_parser(), "hidden_act") == [OFASConfig.HIDDEN_ACTS]
    assert choices(backbone_parser(), "variant") == [OFASConfig.VARIANTS]
    inspect = build_parser()._subparsers._group_actions[0].choices["inspect"]
    assert choices(inspect, "variant") == [OFASConfig.VARIANTS]
    from ofas_wrap import _head

    assert _head.VARIANTS == OFASConfig.VARIANTS and tuple(_head._ACTIVATIONS) == OFASConfig.HIDDEN_ACTS


# ----------------------------------------------------------------------------- pool_grid (issue 10 item 4)
@pytest.mark.parametrize("grid", [1, 2, 4])
def test_pool_grid_head_runs_saves_and_reloads(tmp_path, grid):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16), pool_grid=grid).eval()
    assert model.head.fcs[0].in_features == 16 * grid * grid
    x = torch.randn(2, 3, 16, 16)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["ofas"]
    assert ("pool_grid" in saved) == (grid != 1)  # the paper's head writes exactly the old config
    again = ofas_wrap.OFASModel.from_pretrained(tmp_path / "m").eval()
    assert again.ofas_config.pool_grid == grid
    with torch.no_grad():
        assert torch.allclose(again(x), model(x)) and torch.equal(again.gate_probabilities(x)[1],
                                                                 model.gate_probabilities(x)[1])


@pytest.mark.parametrize("grid", [0, 9, 1.5, True, "2"])
def test_pool_grid_bad_values_refused(grid):
    with pytest.raises(ConfigFieldError, match="pool_grid must be an integer from 1 to 8"):
        OFASConfig(pool_grid=grid)


def test_config_without_pool_grid_reads_as_the_papers_head():
    assert OFASConfig.from_dict({"variant": "I"}).pool_grid == 1
    assert "pool_grid" not in OFASConfig().to_dict() and OFASConfig(pool_grid=2).to_dict()["pool_grid"] == 2


BAD_DOCUMENTS = [
    ("{not json", r"config\.json: not valid JSON .*save it again"),
    ("[1, 2]", r"config\.json is not an ofas-wrap config \(expected a JSON object, got list\)"),
    ('{"format": "other"}', r"config\.json is not an ofas-wrap config \(format 'other'\)"),
    ('{"format_version": "1"}', r"config\.json: format_version must be a positive integer, got '1'"),
    ('{"format_version": 0}', r"config\.json: format_version must be a positive integer, got 0"),
    ('{"format_version": 9}', r"config\.json: in format version 9, but .* up to 1; upgrade it"),
    ('{"format_version": 9, "ofas_wrap_version": "9.1"}',
     r"config\.json: written by ofas-wrap 9\.1 in format version 9"),
]
BAD_IDS = ["not-json", "not-an-object", "other-format", "version-not-int", "version-zero", "newer", "newer-named"]


@pytest.mark.parametrize("text, message", BAD_DOCUMENTS, ids=BAD_IDS)
def test_the_one_config_reader_names_the_file_and_the_problem(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_document(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=message):  # the config inside a TorchScript export: given as text
        read_document(tmp_path / "config.json", text=text)


@pytest.mark.parametrize("text, message", BAD_DOCUMENTS, ids=BAD_IDS)
def test_both_config_readers_raise_the_same_checkpoint_error_a_value_error(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as from_config:
        OFASConfig.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as from_model_files:
        read_config(tmp_path / "config.json")
    assert str(from_config.value) == str(from_model_files.value)
    assert isinstance(from_config.value, ValueError) and CheckpointError is ofas_wrap.CheckpointError
