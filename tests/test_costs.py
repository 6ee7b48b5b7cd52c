"""Per-gate cost models (uniform, flops, a measured block table) and the BlockDrop-style RL option (issue 10)."""

import json

import pytest
import torch

import ofas_wrap
from ofas_wrap import rl
from ofas_wrap._costs import block_table_costs, gate_costs, measure_block_table, read_block_table, save_block_table
from ofas_wrap.cli import main as cli_main
from ofas_wrap.training import RunError, e2e_finetune, rl_finetune
from tests.test_recipes import TINY, write_tiny_idx

SIZE = (3, 16, 16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ofas_wrap.create_model("cifar:resnet8", input_size=SIZE).eval()


@pytest.fixture(scope="module")
def table(model):
    return measure_block_table(model, torch.randn(1, *SIZE), runs=3, warmup=1, threads=1)


@pytest.mark.parametrize("kind", ["uniform", "flops"])
def test_gate_costs_are_normalised(model, kind):
    costs = gate_costs(model, kind)
    assert costs.shape == (model.num_gates,) and torch.isclose(costs.sum(), torch.tensor(1.0))


def test_flops_costs_follow_the_plan(model):
    saved = torch.tensor([float(b.flops - b.skip_flops) for b in model.plan if b.gated])
    assert torch.allclose(gate_costs(model, "flops"), saved / saved.sum())
    assert not torch.allclose(gate_costs(model, "flops"), gate_costs(model, "uniform"))  # projections differ


def test_block_table_measures_every_gated_block(model, table):
    assert [b["name"] for b in table["blocks"]] == model.gated_block_names
    assert all(b["run_ms"] > 0 and b["saved_ms"] >= 0 for b in table["blocks"])
    assert table["full_depth_ms"] > 0 and table["input_size"] == list(SIZE)
    assert not model.training  # left as it was


def test_block_table_round_trip(model, table, tmp_path):
    path = save_block_table(table, tmp_path / "blocks.json")
    assert read_block_table(path) == json.loads(json.dumps(table))
    saved = torch.tensor([b["saved_ms"] for b in table["blocks"]])
    assert torch.allclose(gate_costs(model, path), saved / saved.sum())
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


@pytest.mark.parametrize("content, match", [
    ("not json", "not a JSON block table"),
    (json.dumps({"format": "other"}), "not a block table"),
    (json.dumps({"format": "ofas-wrap-block-table", "format_version": 99, "blocks": []}), "format_version 99"),
    (json.dumps({"format": "ofas-wrap-block-table", "format_version": 1, "blocks": [{"name": "a"}]}), "saved_ms"),
])
def test_bad_block_tables_are_refused(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_block_table(path)


def test_block_table_of_another_model_is_refused(table):
    other = ofas_wrap.create_model("cifar:resnet14", input_size=SIZE)
    with pytest.raises(ValueError, match="does not match this model's 6 gated blocks"):
        block_table_costs(table, other)


def test_cli_writes_a_block_table(tmp_path, capsys):
    target = tmp_path / "blocks.json"
    assert cli_main(["bench", "cifar:resnet8", "--input-size", "16", "--runs", "2", "--warmup", "1",
                     "--threads", "1", "--block-table", str(target)]) == 0
    assert "--cost-table" in capsys.readouterr().out
    assert len(read_block_table(target)["blocks"]) == 3


def test_cli_block_table_refuses_an_export(tmp_path, capsys):
    assert cli_main(["bench", str(tmp_path / "m.onnx"), "--block-table", str(tmp_path / "b.json")]) != 0
    assert "no separable blocks" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- BlockDrop RL
def test_blockdrop_reward_pays_only_correct_skips():
    reward = rl.blockdrop_reward(torch.tensor([True, True, False, False]), torch.tensor([1.0, 0.2, 0.2, 1.0]), 3.0)
    assert reward.tolist() == pytest.approx([0.0, 0.96, -3.0, -3.0])


def test_self_critical_loss_reinforces_better_than_greedy():
    probs = torch.full((2, 3), 0.5, requires_grad=True)
    actions = torch.tensor([[1, 0, 0], [1, 0, 0]])
    rl.self_critical_loss(probs, actions, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).backward()
    # image 0 beat its greedy baseline: its taken actions become likelier; image 1 tied: no gradient
    assert probs.grad[0, 0] < 0 and probs.grad[0, 1] > 0 and torch.all(probs.grad[1] == 0)


def test_entropy_bonus_pushes_toward_one_half():
    probs = torch.tensor([[0.9]], requires_grad=True)
    rl.self_critical_loss(probs, torch.tensor([[1]]), torch.zeros(1), torch.zeros(1), entropy_weight=1.0).backward()
    assert probs.grad[0, 0] > 0  # descending lowers p toward 0.5


def test_bounded_probabilities_bound():
    bounded = rl.bounded_probabilities(torch.tensor([0.0, 1.0]), 0.9)
    assert bounded.tolist() == pytest.approx([0.1, 0.9])
    with pytest.raises(ValueError, match="alpha"):
        rl.bounded_probabilities(torch.tensor([0.5]), 0.3)


def test_greedy_rollout_equals_the_model_at_its_threshold(model):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=SIZE, threshold=0.5)
    x = torch.randn(4, *SIZE)
    model.train()
    rl.freeze_batchnorm_statistics(model)
    _, probs, gates, actions, greedy = rl.PolicyRollout(model, sampling="bernoulli", alpha=0.8, greedy=True)(x)
    assert probs.min() >= 0.2 - 1e-6 and probs.max() <= 0.8 + 1e-6
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(greedy, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    dataset = write_tiny_idx(root / "idx")
    out = root / "e2e"
    e2e_finetune(["--dataset", dataset, "--model", "cifar:resnet8", "--max-steps", "2", "--val-size", "16",
                  "--output", str(out), *TINY])
    return {"root": root, "dataset": dataset, "e2e": out}


def test_rl_blockdrop_runs_with_a_block_table(tiny_e2e, tmp_path):
    model = ofas_wrap.OFASModel.from_pretrained(tiny_e2e["e2e"])
    table = save_block_table(measure_block_table(model, torch.randn(1, *model.config["input_size"]), runs=2,
                                                 warmup=1, threads=1), tmp_path / "blocks.json")
    summary = rl_finetune(["--init", str(tiny_e2e["e2e"]), "--max-steps", "3", "--policy-loss", "blockdrop",
                           "--cost-table", str(table), "--entropy-weight", "0.01", "--output", str(tmp_path / "rl"),
                           *TINY])
    assert summary["global_step"] == 3
    history = json.loads((tmp_path / "rl" / "metrics.json").read_text())
    assert "greedy_reward" in json.dumps(history)


@pytest.mark.parametrize("extra, match", [
    (["--policy-loss", "blockdrop", "--no-freeze-bn"], "needs frozen BatchNorm"),
    (["--policy-loss", "blockdrop", "--cost-table", "missing.json"], "no such file"),
    (["--policy-loss", "blockdrop", "--alpha", "0.2"], "--alpha must be in"),
])
def test_rl_blockdrop_bad_flags_refused_before_writing(tiny_e2e, tmp_path, extra, match):
    with pytest.raises(RunError, match=match):
        rl_finetune(["--init", str(tiny_e2e["e2e"]), "--max-steps", "1", *extra, "--output", str(tmp_path / "o"),
                     *TINY])
    assert not (tmp_path / "o").exists()


def test_e2e_cost_table_of_another_model_refused(tiny_e2e, tmp_path, table):
    path = save_block_table(table, tmp_path / "blocks.json")
    with pytest.raises(RunError, match="does not match"):
        e2e_finetune(["--dataset", tiny_e2e["dataset"], "--model", "cifar:resnet14", "--max-steps", "1",
                      "--val-size", "16", "--cost-table", str(path), "--output", str(tmp_path / "o"), *TINY])
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
