"""ofas_wrap.compare (issue 25): a row for every method, the md/json/png files, the verdict keys; bad input refused
before anything runs. Tiny IDX data written here, a CIFAR ResNet-8 and ResNet-8 statics, a few steps each."""

from __future__ import annotations

import json

import pytest
import torch

from ofas_wrap import compare as cmp
from ofas_wrap.training import RunError
from tests.test_recipes import write_tiny_idx

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "dataset": write_tiny_idx(root / "idx", n_train=96, n_test=48)}
    torch.set_num_threads(threads)


def base_flags(tiny, out, *extra):
    return ["--model", "cifar:resnet8", "--dataset", tiny["dataset"], "--val-size", "24", "--budget-steps", "2",
            "--batch-size", "16", "--targets", "0.95", "--latency-samples", "2", "--latency-runs", "1",
            "--latency-rounds", "1", "--server-batch", "4", "--thresholds", "0.3,0.5,0.7", "--choice-images", "24",
            "--no-progress", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def report(tiny):
    out = tiny["root"] / "out"
    # a head that starts closed (sigmoid(-3) < every T): the smoke's OFAS reaches the target after two steps
    return out, cmp.compare(base_flags(tiny, out, "--static", "small=cifar:resnet8", "--finetune-static",
                                       "--ofas-e2e-args=--gate-bias-init -3"))


def test_compare_writes_a_row_for_every_method(report):
    _, result = report
    methods = {row["method"] for row in result["rows"]}
    expected = {"original", "static_small", "static_small_ft", "depth_prune", "ofas_e2e", "ofas_rl", "fixed_subset",
                "shuffled", "random_rates"}
    try:
        import torch_pruning  # noqa: F401
        expected.add("channel_prune")
    except ImportError:
        pass
    assert expected <= methods


def test_compare_writes_md_json_png_with_the_verdict(report):
    out, result = report
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "compare.json").read_text())
    decision = saved["meta"]["verdict"]["per_target"][0]
    assert {"target_ms", "deploy", "next_best", "sentence"} <= set(decision)
    assert decision["sentence"].startswith("at <= ")
    assert saved["meta"]["budget_steps"] == 2
    timed = [row for row in saved["rows"] if row.get("latency_ms") is not None]
    assert timed and all(row["latency_ms"] > 0 and row["server_ms"] > 0 for row in timed)


def test_depth_prune_meets_its_choice_target(report):
    _, result = report
    target = result["meta"]["targets_ms"][0]
    for row in result["rows"]:
        if row["method"] == "depth_prune":
            assert row["choice_ms"] <= target and row["blocks"] < 3


@pytest.mark.parametrize("flags, message", [
    (["--targets", "0.0001"], "below"),
    (["--static", "wide=cifar:resnet8", "--static", "wide=cifar:resnet8"], "names must differ"),
    (["--static", "nonsense"], "NAME=SPEC"),
    (["--budget-epochs", "1"], "one budget"),
])
def test_compare_refuses_bad_input_before_writing(tiny, flags, message):
    out = tiny["root"] / "bad"
    with pytest.raises(RunError, match=message):
        cmp.compare(base_flags(tiny, out, *flags))
    assert not out.exists()


def test_a_static_network_of_another_task_is_refused(tiny, tmp_path):
    from safetensors.torch import save_file

    import ofas_wrap

    other = ofas_wrap.create_model("cifar:resnet8", num_classes=7, in_chans=1, input_size=(1, 12, 12)).unwrap()
    weights = tmp_path / "seven.safetensors"
    save_file(other.state_dict(), str(weights))
    out = tiny["root"] / "bad-static"
    with pytest.raises(RunError, match="classes"):
        cmp.compare(base_flags(tiny, out, "--static", f"seven=cifar:resnet8@{weights}"))
    assert not out.exists()


def test_channel_prune_without_torch_pruning_names_the_install(tiny, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch_pruning(name, *args, **kwargs):
        if name == "torch_pruning":
            raise ImportError("No module named 'torch_pruning'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_torch_pruning)
    with pytest.raises(RunError, match="pip install torch-pruning"):
        cmp.compare(base_flags(tiny, tiny["root"] / "no-tp", "--methods", "channel_prune"))


@pytest.mark.parametrize("harm, saving, full, target, removed", [
    ([0.5, 0.1, 0.2], [1.0, 1.0, 1.0], 5.0, 3.5, [1, 2]),
    ([0.5, 0.1, 0.2], [1.0, 0.1, 1.0], 5.0, 3.5, [2, 0]),  # block 1 saves too little time to be worth its harm
    ([0.1, 0.2], [1.0, 1.0], 5.0, 5.0, []),
])
def test_blocks_to_remove_follows_harm_per_measured_ms(harm, saving, full, target, removed):
    assert cmp.blocks_to_remove(harm, saving, full, target) == removed


def test_blocks_to_remove_refuses_an_unreachable_target():
    with pytest.raises(ValueError, match="cannot reach"):
        cmp.blocks_to_remove([0.1, 0.2], [1.0, 1.0], 5.0, 2.0)


def test_choose_keep_removes_more_while_the_measured_network_is_slower():
    measured = []

    def measure(keep):  # the pruned network is slower than predicted: one more block must go
        measured.append(sum(keep))
        return 1.0 * sum(keep) + 1.0
    keep, ms, removed = cmp.choose_keep([0.1, 0.2, 0.3, 0.4], [1.0] * 4, 4.0, 2.9, measure)
    assert removed == [0, 1, 2] and keep == [False, False, False, True] and ms <= 2.9 and measured == [2, 1]
