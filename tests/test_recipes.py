"""The recipes end to end on tiny IDX data the tests write: python and accelerate launch, resume, NaN, errors, demo.

Each recipe runs once with ``python recipes/X.py`` and once with ``accelerate launch --multi_gpu --num_processes 2``
(two gloo processes on a machine without GPU: accelerate's supported multi-process launcher); the chain
backbone -> e2e -> rl -> evaluate is built once per module in this process.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ofas_wrap
from ofas_wrap import data
from ofas_wrap.training import e2e_finetune, main_guard, rl_finetune, train_backbone

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY = ["--batch-size", "8", "--eval-batch-size", "16", "--no-progress", "--log-every", "1"]


def write_tiny_idx(root: Path, n_train=64, n_test=24, size=12) -> str:
    """Four classes, each a bright square in its own corner, plus noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 4
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 2)
            images[i, r * 6:r * 6 + 6, c * 6:c * 6 + 6] += 180
        data.write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        data.write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return str(root)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    cache = root / "cache"
    previous = os.environ.get("OFAS_WRAP_CACHE")
    os.environ["OFAS_WRAP_CACHE"] = str(cache)  # the in-process runs; the subprocesses get it through "env"
    dataset = write_tiny_idx(root / "idx")
    # one thread: these runs are tiny, and two OpenMP threads on a busy 2-core machine are many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "dataset": dataset, "env": dict(os.environ, OFAS_WRAP_CACHE=str(cache), OMP_NUM_THREADS="1")}
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("OFAS_WRAP_CACHE", None)
    else:
        os.environ["OFAS_WRAP_CACHE"] = previous


@pytest.fixture(scope="module")
def base_run(env):
    out = env["root"] / "base"
    assert main_guard(train_backbone, ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "6",
                                       "--val-size", "16", "--output", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def e2e_run(env, base_run):
    out = env["root"] / "e2e"
    assert main_guard(e2e_finetune, ["--init", str(base_run), "--max-steps", "4", "--output", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def rl_run(env, e2e_run):
    out = env["root"] / "rl"
    assert main_guard(rl_finetune, ["--init", str(e2e_run), "--max-steps", "4", "--output", str(out), *TINY]) == 0
    return out


def run(cmd, env, timeout=150, expect=0):
    result = subprocess.run([str(c) for c in cmd], env=env["env"], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO)
    if expect is not None:
        tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert result.returncode == expect, f"exit {result.returncode}\n{tail}"
    return result


def python(recipe, *args):
    return [PYTHON, RECIPES / recipe, *args]


def accelerate(recipe, *args):
    # port 0: accelerate picks a free one (two xdist workers launching at once collided on the default 29500)
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", "0", RECIPES / recipe, *args]


def metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def assert_run_folder(run_dir, steps, world_size):
    run_dir = Path(run_dir)
    for name in ("config.json", "model.safetensors", "args.json", "data.json", "metrics.json"):
        assert (run_dir / name).is_file(), name
    summary = metrics(run_dir)
    assert summary["global_step"] == steps and summary["world_size"] == world_size
    assert summary["final_val"]["accuracy"] >= 0
    assert (run_dir / "checkpoints" / "LATEST").is_file()
    args = json.loads((run_dir / "args.json").read_text())
    assert args["world_size"] == world_size
    return ofas_wrap.OFASModel.from_pretrained(run_dir)


# ------------------------------------------------------------------------------------------- the phases


def test_in_process_chain(base_run, e2e_run, rl_run):
    base = assert_run_folder(base_run, 6, 1)
    assert base.threshold == 0.0 and base.config["normalization"]["mean"]
    e2e = assert_run_folder(e2e_run, 4, 1)
    assert e2e.threshold == 0.5 and metrics(e2e_run)["final_val"]["executed_blocks"] <= 3
    rl = assert_run_folder(rl_run, 4, 1)
    assert rl.config["normalization"] == base.config["normalization"]  # every phase sees the same inputs
    history = metrics(rl_run)["history"]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert {"policy", "reward", "ce", "skip", "head_skip"} <= set(history[0])


def test_train_backbone_python(env):
    out = env["root"] / "py-base"
    result = run(python("train_backbone.py", "--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps",
                        "3", "--label-smoothing", "0.1", "--schedule", "step", "--report-to", "tensorboard",
                        "--output", out, *TINY), env)
    assert "done: 3 steps" in result.stdout
    model = assert_run_folder(out, 3, 1)
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    assert model.config["input_size"] == [1, 12, 12]


@pytest.mark.slow
def test_train_backbone_accelerate(env):
    out = env["root"] / "acc-base"
    # stochastic depth under DDP: a dropped block's parameters get no gradient in that step (find_unused_parameters)
    result = run(accelerate("train_backbone.py", "--dataset", env["dataset"], "--model", "cifar:resnet8",
                            "--max-steps", "3", "--in-chans", "3", "--drop-path", "0.9", "--output", out, *TINY), env)
    assert "2 process(es)" in result.stdout
    model = assert_run_folder(out, 3, 2)
    assert model.config["input_size"] == [3, 12, 12]
    ckpt = Path(out) / "checkpoints" / (Path(out) / "checkpoints" / "LATEST").read_text().strip()
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()


def test_e2e_python_with_skip_penalty(env, base_run):
    out = env["root"] / "py-e2e"
    run(python("e2e_finetune.py", "--init", base_run, "--max-steps", "3", "--skip-weight", "0.5", "--variant", "II",
               "--output", out, *TINY), env)
    model = assert_run_folder(out, 3, 1)
    assert model.config["variant"] == "II"
    assert all("cost" in row for row in metrics(out)["history"])


def test_e2e_bernoulli_gates_follow_the_expected_cost_penalty(env, base_run):
    out = env["root"] / "e2e-bernoulli"
    # a heavy penalty on the expected cost, and a fast head: the head learns to close its gates
    args = ["--init", str(base_run), "--max-steps", "4", "--gate-sampling", "bernoulli", "--skip-weight", "20",
            "--head-lr", "2", "--gate-bias-init", "0", "--output", str(out), *TINY]
    assert main_guard(e2e_finetune, args) == 0
    model = assert_run_folder(out, 4, 1).eval()
    assert json.loads((out / "args.json").read_text())["gate_sampling"] == "bernoulli"
    assert all("cost" in row for row in metrics(out)["history"])
    _, probs = model.gate_probabilities(torch.rand(16, *model.config["input_size"]))
    assert probs.mean() < 0.3  # sigmoid(0) = 0.5 before training


def test_backbone_fine_tune_with_a_teacher_records_the_distillation(env, base_run):
    """A smaller network fine-tuned from a trained one (ofas_wrap.compare's fine-tune): CE + KL to the teacher."""
    out = env["root"] / "distilled"
    args = ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "3", "--val-size", "16",
            "--teacher", str(base_run), "--distill-weight", "1", "--output", str(out), *TINY]
    assert main_guard(train_backbone, args) == 0
    history = metrics(out)["history"]
    assert history and all(row["distill"] >= 0 and "ce" in row for row in history)


@pytest.mark.parametrize("flags, message", [
    (["--distill-weight", "1"], "needs a teacher"),
    (["--teacher", "RUN", "--distill-weight", "0"], "--distill-weight is 0"),
    (["--distill-tau", "0"], "--distill-tau > 0"),
])
def test_backbone_distillation_flags_are_checked_first(env, flags, message):
    out = env["root"] / "distilled-bad"
    with pytest.raises(ofas_wrap.training.RunError, match=message):
        train_backbone(["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "2",
                        "--output", str(out), *flags, *TINY])
    assert not out.exists()


def test_e2e_from_random_initialisation_ramps_the_penalty_in(env):
    """OFAS from the first step (issue 26): --model without weights, the gate terms annealed from 0."""
    out = env["root"] / "e2e-scratch"
    args = ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "8", "--val-size", "16",
            "--penalty-ramp", "0.25", "0.75", "--target-rate", "0.5", "--output", str(out), *TINY]
    assert main_guard(e2e_finetune, args) == 0
    assert_run_folder(out, 8, 1)
    ramp = [row["penalty_ramp"] for row in metrics(out)["history"]]
    assert ramp[0] == 0.0 and ramp[-1] == 1.0 and ramp == sorted(ramp)
    assert 0.0 < ramp[len(ramp) // 2] < 1.0


@pytest.mark.parametrize("flags, message", [
    (["--penalty-ramp", "0.6", "0.2"], "--penalty-ramp must satisfy"),
    (["--distill-weight", "1"], "starts from random weights"),
])
def test_e2e_from_random_initialisation_refuses_bad_flags(env, flags, message):
    out = env["root"] / "e2e-scratch-bad"
    with pytest.raises(ofas_wrap.training.RunError, match=message):
        e2e_finetune(["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "2",
                      "--output", str(out), *flags, *TINY])
    assert not out.exists()


@pytest.mark.slow
def test_e2e_accelerate(env, base_run):
    out = env["root"] / "acc-e2e"
    # a tracker under 2 processes: finishing it must leave the process group to the barriers after it
    run(accelerate("e2e_finetune.py", "--init", base_run, "--max-steps", "3", "--report-to", "tensorboard",
                   "--output", out, *TINY), env)
    assert_run_folder(out, 3, 2)
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_rl_python_reinforce(env, e2e_run):
    out = env["root"] / "py-rl"
    run(python("rl_finetune.py", "--init", e2e_run, "--max-steps", "3", "--policy-loss", "reinforce",
               "--sampling", "bernoulli", "--freeze-backbone", "--output", out, *TINY), env)
    assert_run_folder(out, 3, 1)
    before = ofas_wrap.OFASModel.from_pretrained(e2e_run)
    after = ofas_wrap.OFASModel.from_pretrained(out)
    # --freeze-backbone: only the head trained; BatchNorm statistics frozen too
    for (name, a), (_, b) in zip(before.unwrap().state_dict().items(), after.unwrap().state_dict().items()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(before.head.parameters(), after.head.parameters()))


@pytest.mark.slow
def test_rl_accelerate_interrupted_and_resumed(env, e2e_run):
    out = env["root"] / "acc-rl"
    args = ["--init", e2e_run, "--max-steps", "4", "--output", out, *TINY]
    result = run(accelerate("rl_finetune.py", *args, "--stop-at-step", "2"), env, expect=None)
    assert result.returncode != 0 and "stopped by --stop-at-step 2 at step 2/4" in result.stderr
    assert not (out / "metrics.json").exists()
    result = run(accelerate("rl_finetune.py", *args, "--resume"), env)
    assert "from step-00000002: step 2/4" in result.stdout
    assert_run_folder(out, 4, 2)
    assert metrics(out)["resumed_from_steps"] == [2]


def test_evaluate_python(env, rl_run):
    out = env["root"] / "py-eval"
    result = run(python("evaluate.py", rl_run, "--thresholds", "0.4:0.6:0.1", "--output", out, "--latency-samples",
                        "2", "--latency-runs", "2", "--latency-warmup", "1", "--controls", "--control-seeds", "0"),
                 env)
    assert "original backbone" in result.stdout and "chosen on validation" in result.stdout
    payload = json.loads((out / "results.json").read_text())
    assert [c["method"] for c in payload["controls"]] == ["shuffled", "random_rates", "fixed_subset"]
    assert [row["threshold"] for row in payload["rows"]] == [0.4, 0.5, 0.6]
    assert payload["baseline"]["source"].endswith("base")  # found through the --init chain
    assert payload["chosen_threshold"] in (0.4, 0.5, 0.6)
    spread = payload["head_output_percentiles"]  # the head's outputs on validation, also a panel of the plot
    assert list(spread) == ["5", "25", "50", "75", "95"] and "head outputs S_L" in result.stdout
    assert "head_saturation" in payload  # a note when they have saturated (tests/test_calibration.py)
    assert 0.0 <= spread["5"] <= spread["25"] <= spread["50"] <= spread["75"] <= spread["95"] <= 1.0
    for row in payload["rows"]:
        assert 0 <= row["executed_blocks"] <= row["num_blocks"] and row["latency_ms"] > 0 and row["mflops"] > 0
        assert 0 <= row["adaptive_gates"] <= row["num_gates"] and 1 <= row["distinct_patterns"] <= 16
        assert row["mi_bits"] >= 0 and -1 <= row["difficulty_corr"] <= 1
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("model,threshold") and len(lines) == 5 and lines[-1].startswith("original")
    assert (out / "accuracy_vs_cost.png").stat().st_size > 10_000
    module, config = ofas_wrap.load_torchscript(payload["exported_model"])
    assert float(module.gate_threshold) == pytest.approx(payload["export_threshold"])
    assert config["normalization"] is not None


def test_the_plot_keeps_the_users_matplotlib_backend(tmp_path):
    import matplotlib

    from ofas_wrap._plan import FLOPS_NOTE
    from ofas_wrap.training._evaluate import _plot, format_table

    rows = [{"threshold": t, "test_accuracy": 0.9 - t / 10, "latency_ms": 2 - t, "mflops": 40 - 10 * t,
             "executed_blocks": 3 - t, "num_blocks": 3} for t in (0.3, 0.5)]
    baseline = {"test_accuracy": 0.91, "latency_ms": 2.1, "mflops": 41.0, "num_blocks": 3, "source": "base"}
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice (a notebook's inline backend, say)
    try:
        _plot(rows, baseline, tmp_path / "plot.png", "title", torch.rand(20, 3), 0.5)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_table(rows, baseline).endswith(FLOPS_NOTE)  # MFLOPs are explained once, under the table


def test_threshold_choice_is_against_the_reference_with_a_fallback():
    from ofas_wrap.training._evaluate import choose_threshold

    rows = [{"threshold": t, "val_accuracy": a} for t, a in ((0.3, 0.80), (0.5, 0.80), (0.7, 0.795), (0.9, 0.60))]
    assert choose_threshold(rows, reference=0.80, max_drop=1.0) == 0.7  # the cheapest within 1 point
    assert choose_threshold(rows, reference=0.80, max_drop=0.1) == 0.5  # the largest of the equally accurate
    assert choose_threshold(rows, reference=0.90, max_drop=1.0) == 0.5  # none within: the most accurate


def test_adaptivity_tells_a_static_policy_from_an_adaptive_one():
    from ofas_wrap.training._evaluate import adaptivity

    static = torch.tensor([[0.9, 0.1, 0.8]]).repeat(50, 1)  # one pattern for every image: a fixed pruning
    assert adaptivity(static, 0.5) == {"adaptive_gates": 0, "distinct_patterns": 1}
    varied = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    assert adaptivity(varied, 0.5) == {"adaptive_gates": 3, "distinct_patterns": 8}


def test_pattern_information_and_difficulty_correlation():
    from ofas_wrap.training._evaluate import adaptivity, pattern_information, rank_correlation

    labels = torch.arange(200) % 2
    by_class = torch.stack([labels.float() * 0.8 + 0.1, torch.full((200,), 0.9)], 1)  # gate 0 opens for class 1
    noise = torch.rand(200, 2, generator=torch.Generator().manual_seed(0))
    assert adaptivity(by_class, 0.5, labels)["mi_bits"] == pytest.approx(1.0)
    assert adaptivity(noise, 0.5, labels)["mi_bits"] < 0.05  # varies, but says nothing about the class
    assert pattern_information(torch.ones(10, 3, dtype=torch.bool), torch.arange(10) % 3) == 0.0
    difficulty = torch.linspace(0, 1, 200)
    harder_runs_more = torch.stack([difficulty, difficulty], 1)
    assert adaptivity(harder_runs_more, 0.5, difficulty=difficulty)["difficulty_corr"] > 0.8
    assert rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])) == pytest.approx(0.5)


@pytest.mark.slow
def test_evaluate_accelerate(env, rl_run):
    out = env["root"] / "acc-eval"
    run(accelerate("evaluate.py", rl_run, "--thresholds", "0.5", "--output", out, "--latency-samples", "1",
                   "--latency-runs", "2", "--no-plot", "--calibrate-head"), env)
    single = json.loads((env["root"] / "py-eval" / "results.json").read_text()) \
        if (env["root"] / "py-eval" / "results.json").exists() else None
    payload = json.loads((out / "results.json").read_text())
    assert payload["rows"][0]["test_count"] == 24  # gather_for_metrics: every test image once
    # the head temperature was chosen on the gathered validation images; at T = 0.5 it changes no decision,
    # so the accuracy below still equals the uncalibrated single-process run's
    assert payload["head_temperature"] > 0
    if single is not None:
        assert single["head_temperature"] is None
        row = next(r for r in single["rows"] if r["threshold"] == 0.5)
        assert payload["rows"][0]["test_accuracy"] == pytest.approx(row["test_accuracy"])


# ----------------------------------------------------------------------------------------- nothing lost


def test_resume_continues_the_step_count_and_the_schedule(env, base_run):
    out = env["root"] / "resume"
    args = ["--init", str(base_run), "--max-steps", "10", "--train-subset", "24", "--checkpoint-every", "2",
            "--output", str(out), *TINY]  # 3 steps per epoch: the run crosses epoch boundaries
    assert main_guard(e2e_finetune, [*args, "--stop-at-step", "5"]) == 130
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000005"
    assert not (out / "metrics.json").exists()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000004", "step-00000005"]  # --keep-checkpoints 2
    assert main_guard(e2e_finetune, [*args, "--resume"]) == 0
    summary = metrics(out)
    assert summary["global_step"] == 10 and summary["resumed_from_steps"] == [5]
    history = summary["history"]
    assert [row["step"] for row in history] == list(range(1, 11))
    lrs = [row["lr"] for row in history]
    assert all(a > b for a, b in zip(lrs, lrs[1:])), lrs  # one cosine over the global step, across epochs/resume
    assert [row["epoch"] for row in history] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [row["step"] for row in summary["evals"]] == [3, 6, 9, 10]
    assert_run_folder(out, 10, 1)


@pytest.mark.slow
def test_sigint_checkpoints_and_stops(env, base_run):
    out = env["root"] / "sigint"
    cmd = python("train_backbone.py", "--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "5000",
                 "--checkpoint-every", "1", "--output", out, *TINY)
    process = subprocess.Popen([str(c) for c in cmd], env=env["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO)
    deadline = time.time() + 90
    while not (out / "checkpoints" / "LATEST").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped by SIGINT" in stderr and "--resume" in stderr
    step = int((out / "checkpoints" / "LATEST").read_text().strip().split("-")[1])
    assert step >= 1 and not (out / "metrics.json").exists()
    assert main_guard(train_backbone, ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "5000",
                                       "--stop-at-step", str(step + 1), "--output", str(out), "--resume", *TINY]) == 130
    assert (out / "checkpoints" / "LATEST").read_text().strip() == f"step-{step + 1:08d}"


def test_nan_loss_stops_cleanly(env, capsys):
    out = env["root"] / "nan"
    code = main_guard(train_backbone, ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "20",
                                       "--lr", "1e12", "--checkpoint-every", "1", "--output", str(out), *TINY])
    err = capsys.readouterr().err
    assert code == 3 and "the loss became" in err and "before this step changed the weights" in err
    assert "the last good checkpoint (finite weights) is" in err
    assert not (out / "metrics.json").exists() and not (out / "config.json").exists()
    last = (out / "checkpoints" / "LATEST").read_text().strip()
    step = int(last.split("-")[1])
    assert f"at step {step + 1}/20" in err


# ----------------------------------------------------------------------------------- errors, early


def test_errors_before_anything_is_written(env, base_run, tmp_path, capsys):
    def fails(fn, args, match):
        assert main_guard(fn, args) == 2
        assert match in capsys.readouterr().err

    out = tmp_path / "never"
    fails(train_backbone, ["--dataset", str(tmp_path / "missing"), "--output", str(out)], "does not exist")
    fails(train_backbone, ["--output", str(out)], "--dataset is required")
    fails(e2e_finetune, ["--init", str(tmp_path / "nope"), "--output", str(out)], "does not exist")
    fails(rl_finetune, ["--init", str(base_run), "--output", str(out), "--resume"], "no checkpoint")
    fails(e2e_finetune, ["--init", str(base_run), "--output", str(out), "--in-chans", "3"], "does not match")
    assert not out.exists()
    before = sorted(p.name for p in base_run.iterdir())
    fails(train_backbone, ["--dataset", env["dataset"], "--output", str(base_run)], "exists and is not empty")
    assert sorted(p.name for p in base_run.iterdir()) == before
    fails(e2e_finetune, ["--init", str(base_run), "--output", str(out), "--dataset", str(base_run)],
          "not a dataset directory")
    if importlib.util.find_spec("wandb") is None:  # accelerate would drop it with a debug line only
        fails(e2e_finetune, ["--init", str(base_run), "--output", str(out), "--report-to", "wandb"],
              "package is not installed")
    assert not out.exists()
    with pytest.raises(SystemExit):
        train_backbone(["--dataset", env["dataset"], "--output", str(out), "--report-to", "tensorbored"])
    assert "unknown tracker 'tensorbored'" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_demo_smoke(env, tmp_path):
    """``make demo-smoke`` on the tiny data, one process (the recipes' two-process runs are tested above)."""
    result = run(["make", "--no-print-directory", "-o", ".venv/.installed", "demo-smoke",
                  f"DEMO_DATASET={env['dataset']}", "DEMO_CHANS=1", f"DEMO_OUT={tmp_path / 'demo'}",
                  f"LAUNCH={PYTHON}"], env, timeout=300)
    assert "chosen on validation" in result.stdout and "exported TorchScript model" in result.stdout
    exported = list((tmp_path / "demo-smoke" / "rl" / "eval").glob("model_T*.pt"))
    assert len(exported) == 1
    # the demo ends with the comparison: what to deploy at the target, beside the static network and depth pruning
    verdict = json.loads((tmp_path / "demo-smoke" / "compare" / "compare.json").read_text())["meta"]["verdict"]
    assert verdict["per_target"][0]["sentence"].startswith("at <= ")
    assert "deploy" in (tmp_path / "demo-smoke" / "compare" / "compare.md").read_text()


def test_non_finite_optimiser_flags_are_refused(env, tmp_path, capsys):
    for flag, value in (("--lr", "nan"), ("--weight-decay", "inf")):
        out = tmp_path / f"bad{flag}"
        with pytest.raises(SystemExit) as exc:
            train_backbone(["--dataset", env["dataset"], flag, value, "--output", str(out), *TINY])
        assert exc.value.code == 2 and "finite" in capsys.readouterr().err and not out.exists()


def test_overwrite_replaces_only_our_run_folders(env, base_run, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    args = ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "1", *TINY, "--overwrite"]
    assert main_guard(train_backbone, [*args, "--output", str(thesis)]) == 2
    assert "not a run folder" in capsys.readouterr().err and (thesis / "chapter1.tex").is_file()
    assert main_guard(train_backbone, [*args, "--output", env["dataset"]]) == 2  # the dataset itself
    assert "input of this run" in capsys.readouterr().err and Path(env["dataset"]).is_dir()
    assert main_guard(e2e_finetune, ["--init", str(base_run), "--max-steps", "1", *TINY, "--overwrite",
                                     "--output", str(base_run)]) == 2  # the --init run
    assert (base_run / "model.safetensors").is_file()


def test_a_save_clears_the_leftovers_of_killed_saves(env, tmp_path):
    out = tmp_path / "stale"
    stale = [out / "checkpoints" / ".tmp-step-00000009", out / "checkpoints" / ".old-step-00000003"]
    args = ["--dataset", env["dataset"], "--model", "cifar:resnet8", "--max-steps", "2", "--output", str(out), *TINY]
    assert main_guard(train_backbone, [*args, "--stop-at-step", "1"]) == 130
    for folder in stale:
        folder.mkdir(parents=True)
    assert main_guard(train_backbone, [*args, "--resume"]) == 0
    assert not any(folder.exists() for folder in stale)


def test_the_nan_guard_names_only_a_checkpoint_with_finite_weights(tmp_path):
    from ofas_wrap.training import Trainer

    trainer = Trainer.__new__(Trainer)  # only the checkpoint lookup
    trainer.checkpoint_root = tmp_path / "checkpoints"
    for step, value in ((4, 1.0), (8, float("nan"))):
        folder = trainer.checkpoint_root / f"step-{step:08d}"
        folder.mkdir(parents=True)
        torch.save({"w": torch.full((3,), value), "steps": torch.tensor(step)}, folder / "pytorch_model.bin")
    assert trainer._last_finite_checkpoint().name == "step-00000004"  # the newest one is poisoned


@pytest.mark.parametrize("parent, expected, message", [
    (["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "2", "x.py"], 2,
     "--num_machines > 1` is not supported"),
    (["python", "x.py"], None, "could not be read; running ONE process"),
])
def test_cpu_launch_fallback_refuses_many_machines_and_warns(monkeypatch, capsys, parent, expected, message):
    sys.path.insert(0, str(RECIPES))
    import _cpu_launch

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for name in (*_cpu_launch._RANK_VARIABLES, _cpu_launch.SPAWNED_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_cpu_launch, "_parent_argv", lambda: parent)
    assert _cpu_launch.relaunch_cpu_processes(["x.py"]) == expected  # nothing started in either case
    assert message in capsys.readouterr().err


def _final_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_gradient_accumulation_equals_a_larger_batch(env, base_run):
    # BatchNorm statistics frozen and no augmentation: K batches of B accumulated = one batch of K x B
    common = ["--init", str(base_run), "--max-steps", "3", "--train-subset", "48", "--freeze-bn", "--no-augment",
              "--no-eval-every-epoch", "--eval-batch-size", "16", "--no-progress", "--log-every", "1",
              "--lr", "0.05"]
    big, small = env["root"] / "acc-big", env["root"] / "acc-small"
    assert main_guard(e2e_finetune, [*common, "--batch-size", "8", "--output", str(big)]) == 0
    assert main_guard(e2e_finetune, [*common, "--batch-size", "4", "--gradient-accumulation-steps", "2",
                                     "--output", str(small)]) == 0
    assert metrics(small)["global_step"] == 3 and metrics(small)["samples_seen"] == 24
    a, b = _final_weights(big), _final_weights(small)
    changed = [k for k in a if not torch.equal(a[k], _final_weights(base_run).get(k, a[k]))]
    assert changed  # the runs trained something
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_gradient_accumulation_resumes_exactly(env, base_run):
    args = ["--init", str(base_run), "--max-steps", "4", "--train-subset", "40", "--batch-size", "4",
            "--gradient-accumulation-steps", "3", "--checkpoint-every", "1", "--no-eval-every-epoch",
            "--eval-batch-size", "16", "--no-progress"]  # 10 batches per epoch: 4 steps, the last of one batch
    whole, cut = env["root"] / "acc-whole", env["root"] / "acc-cut"
    assert main_guard(e2e_finetune, [*args, "--output", str(whole)]) == 0
    assert main_guard(e2e_finetune, [*args, "--output", str(cut), "--stop-at-step", "2"]) == 130
    assert main_guard(e2e_finetune, [*args, "--output", str(cut), "--resume"]) == 0
    assert metrics(whole)["global_step"] == metrics(cut)["global_step"] == 4
    a, b = _final_weights(whole), _final_weights(cut)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_recipes_run_from_the_installed_package(env, tmp_path):
    """``python -m ofas_wrap.recipes.NAME`` (a wheel has no recipes/ folder): the same flags and function."""
    from ofas_wrap.recipes import RECIPES

    RECIPES_DIR = REPO / "recipes"

    assert set(RECIPES) <= {p.stem for p in RECIPES_DIR.glob("[!_]*.py")}  # the four phases (not the bench tools)
    for name in RECIPES:
        assert importlib.util.find_spec(f"ofas_wrap.recipes.{name}") is not None
    out = tmp_path / "m-base"
    result = run([PYTHON, "-m", "ofas_wrap.recipes.train_backbone", "--dataset", env["dataset"], "--model",
                  "cifar:resnet8", "--max-steps", "2", "--val-size", "16", "--output", out, *TINY], env)
    assert "run folder" in result.stdout
    assert_run_folder(out, 2, 1)
    bad = run([PYTHON, "-m", "ofas_wrap.recipes.e2e_finetune", "--output", tmp_path / "x"], env, expect=None)
    assert bad.returncode == 2 and "give --init RUN" in bad.stderr  # main_guard: one line, exit code 2
