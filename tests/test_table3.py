"""benchmarks/table3.py (issue 26), the script itself (so this test imports it): a smoke run over tiny kept runs writes
the line's JSON with compare's row keys and both verdicts, and the table; missing kept runs are refused first."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import table3
from ofas_wrap import create_model
from tests.test_compare import floor_reads_zero
from tests.test_recipes import write_tiny_idx

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A weights folder with the ResNet-38 line's names, each a tiny CIFAR ResNet-8 saved as the recipes keep them."""
    root = tmp_path_factory.mktemp("table3")
    dataset = write_tiny_idx(root / "idx", n_train=96, n_test=48)
    weights = root / "weights"
    line = table3.LINES["resnet38"]
    torch.manual_seed(0)
    for name in (line["original"], *line["static"], *line["routes"]["scratch"]):
        model = create_model("cifar:resnet8", num_classes=4, in_chans=1, input_size=(1, 12, 12))
        model.save_pretrained(weights / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "dataset": dataset, "weights": weights}
    torch.set_num_threads(threads)


def test_smoke_writes_the_line_json_and_the_table(kept, monkeypatch):
    floor_reads_zero(monkeypatch)  # the moonshot's 0.65x of a 12-pixel ResNet-8 can measure under it
    out = kept["root"] / "out"
    assert table3.main(["--line", "resnet38", "--smoke", "--weights", str(kept["weights"]), "--data", kept["dataset"],
                        "--out", str(out), "--work", str(kept["root"] / "work")]) == 0
    report = json.loads((out / "table3_resnet38.json").read_text())
    methods = {row["method"] for row in report["rows"]}
    assert {"original", "static_resnet20", "static_resnet26", "static_resnet32", "ofas_e2e", "ofas_rl",
            "skipnet_style"} <= methods
    for row in report["rows"]:
        assert {"method", "seed", "top1", "latency_ms", "chosen", "adaptive_gates", "target"} <= set(row)
    verdict = report["meta"]["verdict"]
    for name in ("moonshot", "paper_claim"):
        assert isinstance(verdict[name]["holds"], bool) and "reasons" in verdict[name]
    assert report["meta"]["paper"]["original"] == [34.3, 92.77]
    saturation = report["meta"]["table3"]["head_saturation"]
    assert 0 <= saturation["below_0.05"] <= 1 and len(saturation["per_gate_mean"]) == 3
    table = (out / "table3.md").read_text()
    assert table.startswith("# Table III") and "| skipnet_style |" in table and "| 104.1 | 92.43 |" in table
    assert (out / "table3.png").stat().st_size > 0


def test_missing_kept_runs_are_named_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        table3.parse_args(["--line", "resnet110", "--weights", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--work", str(tmp_path / "w")])
    assert "resnet110_ofas_scratch" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_finetune_route_exists_only_for_resnet110(tmp_path, capsys):
    with pytest.raises(SystemExit):
        table3.parse_args(["--line", "resnet38", "--route", "finetune", "--out", str(tmp_path), "--work",
                           str(tmp_path)])
    assert "only ['scratch']" in capsys.readouterr().err
