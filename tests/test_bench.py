"""measure_latency / sweep_thresholds, the `ofas-wrap bench` CLI and the standalone device script
recipes/device_latency.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ofas_wrap

SIZE = (3, 16, 16)
SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "device_latency.py"
OLD_SCRIPT = SCRIPT.with_name("bench_latency.py")  # the old name: a forwarder for scripts on devices that call it
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE, threshold=0.5).eval()
    with torch.no_grad():
        model.head.fcs[-1].weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return ofas_wrap.export_torchscript(model, tmp_path_factory.mktemp("bench") / "resnet8.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An image folder DIR/<class>/<image>: two classes of two small images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    for name in ("airplane", "cat"):
        (root / name).mkdir()
        for index in range(2):
            pixels = torch.randint(0, 256, (20, 24, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def test_measure_latency_returns_sane_numbers(model):
    result = ofas_wrap.measure_latency(model, torch.randn(2, *SIZE), runs=5, warmup=1, threads=1)
    assert result.median_ms > 0 and result.p90_ms >= result.median_ms and result.iqr_ms >= 0
    assert (result.runs, result.batch_size, result.threads, result.device) == (5, 2, 1, "cpu")
    assert len(result.times_ms) == 5 and result.min_ms <= result.median_ms


def test_measure_latency_restores_the_thread_count(model):
    before = torch.get_num_threads()
    ofas_wrap.measure_latency(model, torch.randn(1, *SIZE), runs=2, warmup=0, threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "runs must be a positive integer"),
    ({"warmup": -1}, "warmup must be"),
    ({"threads": 0}, "threads must be"),
    ({"device": "tpu"}, "device"),
])
def test_measure_latency_rejects_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ofas_wrap.measure_latency(model, torch.randn(1, *SIZE), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_measure_latency_on_missing_cuda_is_a_clear_error(model):
    with pytest.raises(ValueError, match="CUDA is not available"):
        ofas_wrap.measure_latency(model, torch.randn(1, *SIZE), device="cuda")


def test_sweep_counts_executed_blocks_and_flops(model):
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(1))
    rows = ofas_wrap.sweep_thresholds(model, x, [0.0, 0.999999], runs=2, warmup=1)
    full, skipped = rows
    assert (full.mean_executed_blocks, full.num_blocks, full.num_gates) == (3.0, 3, 3)
    assert full.mean_mflops == pytest.approx(model.plan.total_flops / 1e6)
    assert skipped.mean_executed_blocks < full.mean_executed_blocks
    assert skipped.mean_mflops < full.mean_mflops
    assert abs(model.threshold - 0.5) < 1e-6  # restored


def test_sweep_of_the_scripted_model_uses_the_config_flops(model, exported):
    scripted, config = ofas_wrap.load_torchscript(exported)
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    eager = ofas_wrap.sweep_thresholds(model, x, [0.5], runs=2, warmup=1)[0]
    script = ofas_wrap.sweep_thresholds(scripted, x, [0.5], runs=2, warmup=1, config=config)[0]
    assert script.mean_executed_blocks == eager.mean_executed_blocks
    assert script.mean_mflops == pytest.approx(eager.mean_mflops)
    assert "median ms" in ofas_wrap.format_sweep([eager, script])


def test_cli_bench_prints_json_per_threshold(exported, capsys):
    from ofas_wrap.cli import main

    assert main(["bench", str(exported), "--runs", "2", "--warmup", "1", "--threshold", "0", "0.5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["threshold"] for row in rows] == [0.0, 0.5]
    assert rows[0]["latency"]["median_ms"] > 0 and rows[0]["mean_executed_blocks"] == 3.0


def test_device_latency_script_runs_without_ofas_wrap(model, exported, images, tmp_path):
    runner = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["device_latency.py", {str(exported)!r}, "--runs", "3", "--warmup", "2", "--batch-size", "3",
                    "--threshold", "0", "0.5", "--data", {str(images)!r}, "--json"]
        try:
            runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "ofas_wrap" not in sys.modules, "device_latency.py imported ofas_wrap"
    """)
    result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["threshold"] for row in report["rows"]] == [0.0, 0.5]
    first = report["rows"][0]
    assert first["p90_ms"] >= first["median_ms"] > 0
    assert first["executed_blocks"] == 3.0 and 0.0 <= first["accuracy"] <= 1.0 and first["images"] == 4
    assert first["mflops"] == pytest.approx(model.plan.total_flops / 1e6)


def load_script():
    spec = importlib.util.spec_from_file_location("device_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_latency_script_prints_a_table(exported, capsys):
    assert load_script().main([str(exported), "--runs", "2", "--warmup", "1", "--threshold", "0", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "p90 ms" in out and "3.00/3" in out


def test_device_latency_script_rejects_a_non_ofas_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit, match=r"junk\.pt is not a TorchScript file"):
        load_script().main([str(tmp_path / "junk.pt")])


def test_device_latency_script_is_old_python_and_torch_only():
    tree = ast.parse(SCRIPT.read_text(), feature_version=(3, 6))  # no walrus, no match, no 3.8+ syntax
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"argparse", "json", "os", "random", "sys", "time", "warnings", "torch", "PIL", "numpy",
                        "onnxruntime"}
    assert not any(isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) for node in ast.walk(tree))


def test_the_old_name_bench_latency_py_runs_device_latency_py_with_a_note(exported, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(OLD_SCRIPT), str(exported), "--runs", "2", "--warmup", "1",
                             "--threshold", "0", "0.5", "--json"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning" in result.stderr and "device_latency.py" in result.stderr
    assert [row["threshold"] for row in json.loads(result.stdout)["rows"]] == [0.0, 0.5]
    (tmp_path / "junk.pt").write_bytes(b"junk")  # the new script's exit code and message come through
    failed = subprocess.run([sys.executable, str(OLD_SCRIPT), str(tmp_path / "junk.pt")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120, env=env)
    assert failed.returncode == 1 and "junk.pt is not a TorchScript file" in failed.stderr
    alone = tmp_path / "device"
    alone.mkdir()
    (alone / "bench_latency.py").write_text(OLD_SCRIPT.read_text())  # copied without the new script
    missing = subprocess.run([sys.executable, str(alone / "bench_latency.py"), str(exported)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=120, env=env)
    assert missing.returncode == 1 and "device_latency.py is missing" in missing.stderr


def test_the_old_name_imported_as_a_module_gives_the_new_scripts_functions(exported, capsys):
    spec = importlib.util.spec_from_file_location("bench_latency", OLD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "device_latency.py" in capsys.readouterr().err
    assert module.main([str(exported), "--runs", "2", "--warmup", "1", "--threshold", "0"]) == 0
    assert "median ms" in capsys.readouterr().out


def test_the_old_name_is_an_old_python_stdlib_only_forwarder():
    tree = ast.parse(OLD_SCRIPT.read_text(), feature_version=(3, 6))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"os", "runpy", "sys"} and not any(isinstance(node, ast.ImportFrom) for node in ast.walk(tree))
    assert len(OLD_SCRIPT.read_text().splitlines()) < 25


def test_device_latency_script_times_an_onnx_export_in_the_same_table(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, probs = model.gate_probabilities(x)
    skipping = float(probs.max()) + 1e-3  # closes every gate for this input
    path = ofas_wrap.export_onnx(model, tmp_path / "model.onnx", example_input=x)
    script = load_script()
    assert script.main([str(path), "--runs", "3", "--warmup", "1", "--threads", "1", "--json",
                        "--threshold", "0", f"{skipping:.4f}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == "onnxruntime"
    full, skipped = result["rows"]
    assert full["executed_blocks"] == len(model.blocks)
    assert skipped["executed_blocks"] == len(model.blocks) - model.num_gates
    assert skipped["mflops"] < full["mflops"] and full["median_ms"] > 0


def test_cli_bench_times_an_onnx_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ofas_wrap.cli import main

    model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16)).eval()
    path = ofas_wrap.export_onnx(model, tmp_path / "model.onnx")
    assert main(["bench", str(path), "--runs", "3", "--warmup", "1", "--threads", "1", "--json",
                 "--threshold", "0", "0.9999"]) == 0
    full, skipped = json.loads(capsys.readouterr().out)
    assert full["mean_executed_blocks"] == len(model.blocks) and full["latency"]["median_ms"] > 0
    assert skipped["mean_executed_gates"] == 0 and skipped["mean_mflops"] < full["mean_mflops"]
    assert main(["bench", str(path), "--batch-size", "2"]) == 2  # an ONNX If routes one input


def test_per_image_latency_forces_each_images_gates_and_clears_them_after() -> None:
    class Recorder(torch.nn.Module):
        forced_gate_mask = None

        def __init__(self) -> None:
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(None if self.forced_gate_mask is None else self.forced_gate_mask.tolist())
            return x

    module = Recorder().eval()
    gates = torch.tensor([[True, False], [False, True]])
    times = ofas_wrap.per_image_latency(module, torch.randn(2, 3), runs=2, warmup=1, forced_gates=gates)
    assert len(times) == 2 and all(t > 0 for t in times)
    in_order = [mask for i, mask in enumerate(module.seen) if i == 0 or mask != module.seen[i - 1]]
    assert in_order == [[[True, False]], [[False, True]]] and module.forced_gate_mask is None
    with pytest.raises(ValueError, match="one per image"):
        ofas_wrap.per_image_latency(module, torch.randn(3, 3), forced_gates=gates)


@pytest.mark.parametrize("medians, mean, p90", [
    ([2.0], 2.0, 2.0),
    ([4.0, 1.0, 3.0, 2.0], 2.5, 4.0),
    ([float(i) for i in range(1, 11)], 5.5, 10.0),
], ids=["one-image", "four-images", "ten-images"])
def test_latency_over_images_is_the_mean_and_p90_of_the_per_image_medians(monkeypatch, medians, mean, p90):
    from ofas_wrap import _bench

    calls = []

    def fake(module, images, runs, warmup, threads, forced_gates):
        calls.append((runs, warmup, threads, forced_gates))
        return list(medians)

    monkeypatch.setattr(_bench, "per_image_latency", fake)
    patterns = torch.ones(len(medians), 2, dtype=torch.bool)
    got = _bench.latency_over_images(None, torch.zeros(len(medians), 3), runs=5, warmup=2, threads=1,
                                     patterns=patterns)
    assert got == pytest.approx((mean, p90))
    assert calls == [(5, 2, 1, patterns)]


def test_latency_over_images_refuses_no_images():
    with pytest.raises(ValueError, match="at least one image"):
        ofas_wrap._bench.latency_over_images(torch.nn.Identity(), torch.zeros(0, 3), runs=1)
