"""TorchScript export with real skipping, load_torchscript, and torch.export for a batch of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap import CheckpointError

SIZE = (3, 16, 16)
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE).eval()
    with torch.no_grad():  # spread the gate probabilities so thresholds split samples
        model.head.fcs[-1].weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return ofas_wrap.export_torchscript(model, tmp_path_factory.mktemp("export") / "resnet8.pt")


def skipping_threshold(model, x):
    """The median gate probability on ``x``: some blocks run, some are skipped."""
    with torch.no_grad():
        probs = model.gate_probabilities(x)[1]
    return float(probs.flatten().sort().values[probs.numel() // 2])


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("skipping", [False, True], ids=["T=0", "skipping-T"])
def test_scripted_equals_eager(model, exported, batch, skipping):
    scripted, _ = ofas_wrap.load_torchscript(exported)
    x = torch.randn(batch, *SIZE, generator=torch.Generator().manual_seed(batch))
    threshold = skipping_threshold(model, x) if skipping else 0.0
    model.threshold = threshold
    scripted.gate_threshold.fill_(threshold)
    with torch.no_grad():
        expected, got = model(x), scripted(x)
    assert torch.allclose(expected, got, atol=1e-5, rtol=1e-4)
    assert torch.equal(model.last_gates, scripted.last_gates)
    assert bool(scripted.last_gates.all()) is not skipping  # T=0 runs everything; the other T skips


def test_scripted_graph_keeps_the_gates_as_branches(exported):
    scripted, _ = ofas_wrap.load_torchscript(exported)
    for name, block in scripted.blocks.named_children():
        single = str(block._c._get_method("forward_single").graph)
        routed = str(block._c._get_method("forward_routed").graph)
        assert "prim::If" in single, name  # batch of one: a real if/else around the block
        assert "aten::index_select" in routed and "aten::index_copy" in routed, name  # per-sample routing


def test_config_travels_in_the_file(model, exported):
    _, config = ofas_wrap.load_torchscript(exported)
    assert config["backbone"]["name"] == "resnet8"
    assert config["ofas"]["gated_blocks"] == model.gated_block_names
    assert config["export"]["format"] == "torchscript"


def test_export_restores_the_model_mode_and_threshold(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE, threshold=0.4)
    assert model.training
    ofas_wrap.export_torchscript(model, tmp_path / "m.pt")
    assert model.training and abs(model.threshold - 0.4) < 1e-6
    scripted, _ = ofas_wrap.load_torchscript(tmp_path / "m.pt")
    assert not scripted.training and abs(float(scripted.gate_threshold) - 0.4) < 1e-6


def test_fresh_process_loads_it_without_ofas_wrap(model, exported, tmp_path):
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(5))
    model.threshold = 0.0
    with torch.no_grad():
        expected = model(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"ofas_config.json": ""}}
        module = torch.jit.load({str(exported)!r}, _extra_files=extra)
        config = json.loads(extra["ofas_config.json"])
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        module.gate_threshold.fill_(0.0)
        with torch.no_grad():
            same = torch.allclose(module(io["x"]), io["expected"], atol=1e-5)
        print(json.dumps({{"same": same, "name": config["backbone"]["name"],
                           "imported": "ofas_wrap" in sys.modules}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "name": "resnet8", "imported": False}


def test_a_file_that_is_not_torchscript_is_reported(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a TorchScript file"):
        ofas_wrap.load_torchscript(tmp_path / "junk.pt")


def test_torchscript_without_ofas_config_is_reported(tmp_path):
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "linear.pt"))
    with pytest.raises(CheckpointError, match=r"linear\.pt is TorchScript but not an OFAS model export"):
        ofas_wrap.load_torchscript(tmp_path / "linear.pt")


def test_torchscript_from_a_newer_format_is_reported(model, tmp_path):
    scripted = torch.jit.script(model)
    config = {"format": "ofas-wrap", "format_version": 7, "ofas_wrap_version": "9.0", "backbone": None,
              "ofas": {key: None for key in ofas_wrap._hub.OFAS_KEYS}}
    torch.jit.save(scripted, str(tmp_path / "new.pt"), _extra_files={"ofas_config.json": json.dumps(config)})
    with pytest.raises(CheckpointError, match=r"new\.pt:ofas_config\.json: written by ofas-wrap 9\.0.*upgrade"):
        ofas_wrap.load_torchscript(tmp_path / "new.pt")


def test_failed_export_leaves_the_old_file(model, exported, tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(exported.read_bytes())

    def failing_save(module, path, _extra_files=None):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ofas_wrap.export_torchscript(model, target)
    assert target.read_bytes() == exported.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_export_refuses_a_plain_module(tmp_path):
    with pytest.raises(TypeError, match="expects an OFASModel"):
        ofas_wrap.export_torchscript(ofas_wrap.models.cifar_resnet(8), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_torch_export_with_cond_for_a_batch_of_one(model):
    x = torch.randn(1, *SIZE, generator=torch.Generator().manual_seed(3))
    model.threshold = skipping_threshold(model, x)
    program = ofas_wrap.export_program(model, x)
    assert "torch.ops.higher_order.cond" in str(program.graph_module.code)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)
    assert not bool(model.last_gates.all())
    with pytest.raises(ValueError, match="batch of one"):
        ofas_wrap.export_program(model, torch.randn(2, *SIZE))


def test_cli_export_writes_a_loadable_file(tmp_path):
    from ofas_wrap.cli import main

    folder = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE).save_pretrained(tmp_path / "m")
    assert main(["export", str(folder), str(tmp_path / "m.pt"), "--threshold", "0.3"]) == 0
    scripted, config = ofas_wrap.load_torchscript(tmp_path / "m.pt")
    assert abs(float(scripted.gate_threshold) - 0.3) < 1e-6 and config["ofas"]["threshold"] == 0.3


# ----------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("spec, size", [("cifar:resnet8", (3, 16, 16)), ("timm:resnet14t", (3, 32, 32))])
def test_onnx_export_skips_for_real_and_matches_eager(tmp_path, spec, size):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ofas_wrap._export import ONNX_CONFIG_KEY, set_onnx_threshold

    model = ofas_wrap.create_model(spec, num_classes=10, input_size=size, threshold=0.5).eval()
    path = ofas_wrap.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert sum(node.op_type == "If" for node in proto.graph.node) == model.num_gates
    config = json.loads({p.key: p.value for p in proto.metadata_props}[ONNX_CONFIG_KEY])
    assert config["ofas"]["gated_blocks"] == model.gated_block_names
    x = torch.randn(1, *size)
    for threshold in (0.0, 0.5, 0.9999):
        set_onnx_threshold(proto, threshold)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        model.threshold = threshold
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert abs(expected - got).max() < 1e-4, threshold


def test_onnx_export_refuses_a_batch(tmp_path):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
    with pytest.raises(ValueError, match="batch of one"):
        ofas_wrap.export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 16, 16))
    assert not (tmp_path / "m.onnx").exists()
