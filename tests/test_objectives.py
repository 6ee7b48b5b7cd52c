"""The objectives for input-dependent gates: hand-computed values, and the e2e recipe running with all of them."""

import math

import pytest
import torch

from ofas_wrap.training._objectives import (
    bernoulli_entropy,
    distillation_loss,
    gate_information,
    rate_hinge_loss,
    target_rate_loss,
)


def test_target_rate_is_the_squared_distance_of_each_gates_batch_rate():
    gates = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # rates 0.5, 0.0, 1.0
    assert float(target_rate_loss(gates, 0.5)) == pytest.approx(0.0 + 0.25 + 0.25)


def test_the_rate_hinge_is_free_inside_the_bounds():
    gates = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # rates 0.5, 0.0, 1.0
    assert float(rate_hinge_loss(gates, 0.2, 0.9)) == pytest.approx(0.2 ** 2 + 0.1 ** 2)
    with pytest.raises(ValueError, match="r_min <= r_max"):
        rate_hinge_loss(gates, 0.9, 0.2)


def test_gate_information_is_zero_for_a_fixed_pattern_and_a_cliff():
    fixed = torch.tensor([[0.9, 0.1]]).expand(8, -1)
    cliff = torch.full((8, 2), 0.5)
    adaptive = torch.tensor([[0.99], [0.01]]).repeat(4, 1)
    assert float(gate_information(fixed)) == pytest.approx(0.0, abs=1e-6)
    assert float(gate_information(cliff)) == pytest.approx(0.0, abs=1e-6)
    assert float(gate_information(adaptive)) == pytest.approx(1.0 - float(bernoulli_entropy(torch.tensor(0.99))),
                                                             abs=1e-5)
    assert float(bernoulli_entropy(torch.tensor(0.5))) == pytest.approx(1.0)


def test_distillation_is_zero_for_equal_logits_and_scaled_by_tau_squared():
    logits = torch.randn(4, 5)
    assert float(distillation_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distillation_loss(student, teacher, 1.0)) == pytest.approx(expected, rel=1e-5)


def test_e2e_runs_with_every_term_and_records_them(tmp_path, monkeypatch):
    import json

    from ofas_wrap.training import e2e_finetune
    from tests.test_recipes import TINY, write_tiny_idx

    monkeypatch.setenv("OFAS_WRAP_CACHE", str(tmp_path / "cache"))
    dataset = write_tiny_idx(tmp_path / "idx")
    out = tmp_path / "e2e"
    # distillation needs a trained starting backbone: weights written here stand for one
    from safetensors.torch import save_file

    import ofas_wrap

    weights = tmp_path / "resnet8.safetensors"
    backbone = ofas_wrap.create_model("cifar:resnet8", num_classes=4, in_chans=1, input_size=(1, 12, 12)).unwrap()
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    e2e_finetune(["--model", "cifar:resnet8", "--weights", str(weights), "--dataset", dataset, "--val-size", "16",
                  "--max-steps", "2", "--gate-sampling", "bernoulli", "--target-rate", "0.6", "--rate-bounds", "0.2",
                  "0.9", "--info-weight", "0.1", "--distill-weight", "1.0", "--output", str(out), *TINY])
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert {"rate_loss", "rate_hinge", "gate_info_bits", "distill"} <= set(history[0])
