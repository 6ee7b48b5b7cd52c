"""The RL phase (Section IV-B, Eq. 5-10): hand-computed values and the known traps of this family of methods."""

import math

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap import rl
from ofas_wrap.training import LRSchedule, make_scheduler

# ------------------------------------------------------------------------------------------------ Eq. 5


def test_explore_actions_extremes_and_dtype():
    gates = torch.tensor([[True, False, True], [False, False, True]])
    assert torch.equal(rl.explore_actions(gates, flip_prob=0.0), gates)
    assert torch.equal(rl.explore_actions(gates, flip_prob=1.0), ~gates)
    ints = gates.long()
    out = rl.explore_actions(ints, flip_prob=1.0)
    assert out.dtype == torch.long and torch.equal(out, 1 - ints)


def test_explore_actions_flip_rate_is_per_gate_and_seeded():
    gates = torch.ones(2000, 50, dtype=torch.bool)
    actions = rl.explore_actions(gates, 0.1, generator=torch.Generator().manual_seed(3))
    rate = float((~actions).float().mean())
    assert 0.095 < rate < 0.105  # 100,000 independent flips
    again = rl.explore_actions(gates, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(actions, again)
    per_gate = (~actions).float().mean(0)
    assert float(per_gate.min()) > 0.05 and float(per_gate.max()) < 0.15


def test_explore_actions_rejects_bad_input():
    with pytest.raises(ValueError):
        rl.explore_actions(torch.ones(1, 2, dtype=torch.bool), flip_prob=1.5)
    with pytest.raises(ValueError):
        rl.explore_actions(torch.tensor([[0.3, 1.0]]))


# ---------------------------------------------------------------------------------------------- Eq. 7-8


def test_accuracy_reward_paper_example():
    # the paper: y_hat = -log N = [2.302, 1.609, 1.203, 0.916], y = [0, 0, 0, 1] -> R_acc = 0.916
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    assert float(rl.accuracy_reward(logits, torch.tensor([3]))) == pytest.approx(-math.log(0.4), abs=1e-6)
    one_hot = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert float(rl.accuracy_reward(logits, one_hot)) == pytest.approx(0.916, abs=1e-3)


def test_accuracy_reward_is_per_sample_and_detached():
    logits = torch.randn(5, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1])
    reward = rl.accuracy_reward(logits, targets)
    assert reward.shape == (5,) and not reward.requires_grad
    expected = torch.nn.functional.cross_entropy(logits.detach(), targets, reduction="none")
    assert torch.allclose(reward, expected)
    with pytest.raises(ValueError):
        rl.accuracy_reward(logits, targets[:, None])


# ------------------------------------------------------------------------------------------------ Eq. 6


def test_gate_rewards_two_gates_by_hand():
    # beta 0.5: R2 = 0.5 * ((1 - 0) - 0.3 * 1 + 0) = 0.35; R1 = 0.5 * ((1 - 1) - 0.3 + 0.9 * 0.35) = 0.0075
    rewards = rl.gate_rewards(torch.tensor([[1, 0]]), torch.tensor([1.0]), beta=0.5)
    assert rewards.shape == (1, 2)
    assert rewards.tolist()[0] == pytest.approx([0.0075, 0.35])


def test_gate_rewards_default_beta_three_gates_by_hand():
    beta = 0.1 / 3  # the paper's 0.1 / n
    actions = torch.tensor([[0, 1, 0], [1, 1, 1]])
    r_acc = torch.tensor([2.0, 0.5])
    r3 = beta * (1 - 0.3 * 2.0)
    r2 = beta * (0 - 0.3 * 2.0 + 0.9 * r3)
    r1 = beta * (1 - 0.3 * 2.0 + 0.9 * r2)
    s3 = beta * (0 - 0.3 * 0.5)
    s2 = beta * (0 - 0.3 * 0.5 + 0.9 * s3)
    s1 = beta * (0 - 0.3 * 0.5 + 0.9 * s2)
    rewards = rl.gate_rewards(actions, r_acc)
    assert rewards[0].tolist() == pytest.approx([r1, r2, r3], abs=1e-7)
    assert rewards[1].tolist() == pytest.approx([s1, s2, s3], abs=1e-7)


def test_gate_rewards_constants_are_parameters():
    actions = torch.tensor([[0, 0]])
    rewards = rl.gate_rewards(actions, torch.tensor([1.0]), beta=1.0, gamma1=0.0, gamma2=0.5)
    assert rewards.tolist()[0] == pytest.approx([1.5, 1.0])  # R2 = 1, R1 = 1 + 0.5 * 1


def test_gate_rewards_shapes_are_strict():
    actions = torch.ones(4, 3, dtype=torch.bool)
    column = torch.arange(4.0)[:, None]
    assert torch.equal(rl.gate_rewards(actions, column), rl.gate_rewards(actions, column.flatten()))
    for bad in (torch.zeros(1, 4), torch.zeros(4, 4), torch.zeros(3), torch.zeros(4, 1, 1)):
        with pytest.raises(ValueError):
            rl.gate_rewards(actions, bad)
    with pytest.raises(ValueError):
        rl.gate_rewards(torch.ones(3, dtype=torch.bool), torch.zeros(3))


# ----------------------------------------------------------------------------------------------- Eq. 10


def test_action_weights_by_hand():
    weights = rl.action_weights(torch.tensor([[1, 0, 1], [0, 0, 1]]), torch.tensor([[1, 1, 1], [0, 1, 0]]))
    assert weights.tolist() == [pytest.approx([0.9, 0.1, 0.9]), pytest.approx([0.9, 0.1, 0.1])]
    with pytest.raises(ValueError):
        rl.action_weights(torch.ones(2, 3), torch.ones(2, 2))


# ------------------------------------------------------------------------------------------------ Eq. 9


def test_paper_policy_loss_value_and_gradient_by_hand():
    probs = torch.tensor([[0.8, 0.3], [0.6, 0.2]], requires_grad=True)
    gates = torch.tensor([[1, 0], [1, 0]])
    actions = torch.tensor([[1, 1], [0, 0]])  # sample 0: gate 1 flipped; sample 1: gate 0 flipped
    rewards = torch.tensor([[0.2, -0.1], [0.4, 0.3]])
    loss = rl.paper_policy_loss(probs, actions, gates, rewards)
    # J = sum_i mean_j -p * R with p = 0.9 (kept) / 0.1 (flipped)
    expected = ((-0.9 * 0.2) + (-0.1 * 0.4)) / 2 + ((-0.1 * -0.1) + (-0.9 * 0.3)) / 2
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    # d/dS = -R/m where the block ran (pi = S), +R/m where it was skipped (pi = 1 - S)
    assert probs.grad.tolist() == [pytest.approx([-0.1, 0.05]), pytest.approx([0.2, 0.15])]


def test_paper_policy_loss_detaches_the_rewards():
    probs = torch.full((2, 2), 0.5, requires_grad=True)
    rewards = torch.ones(2, 2, requires_grad=True)
    rl.paper_policy_loss(probs, torch.ones(2, 2), torch.ones(2, 2), rewards).backward()
    assert rewards.grad is None and probs.grad is not None


def test_reinforce_loss_by_hand():
    probs = torch.tensor([[0.5, 0.8], [0.25, 0.6]], requires_grad=True)
    actions = torch.tensor([[1, 0], [0, 1]])
    returns = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    baseline = torch.tensor([0.5, 1.0])
    loss = rl.reinforce_loss(probs, actions, returns, baseline)
    logp = torch.tensor([[math.log(0.5), math.log(0.2)], [math.log(0.75), math.log(0.6)]])
    advantage = returns - baseline
    assert float(loss.detach()) == pytest.approx(float(-(advantage * logp).mean(0).sum()), rel=1e-6)
    loss.backward()
    # d/dS of -(A/m) log S = -A/(m S); of -(A/m) log(1 - S) = +A/(m (1 - S))
    expected = [[-0.5 / (2 * 0.5), 1.0 / (2 * 0.2)], [2.5 / (2 * 0.75), 1.0 / (2 * 0.6)]]
    assert probs.grad.tolist() == [pytest.approx(expected[0]), pytest.approx(expected[1])]


def test_reinforce_loss_baselines():
    probs = torch.rand(3, 2) * 0.8 + 0.1
    actions = torch.tensor([[1, 0], [0, 0], [1, 1]])
    returns = torch.randn(3, 2)
    batch_mean = rl.reinforce_loss(probs, actions, returns)
    explicit = rl.reinforce_loss(probs, actions, returns, returns.mean(0))
    assert torch.allclose(batch_mean, explicit)
    assert torch.allclose(rl.reinforce_loss(probs, actions, returns, 0.0),
                          rl.reinforce_loss(probs, actions, returns, torch.zeros(3, 2)))
    with pytest.raises(ValueError):
        rl.reinforce_loss(probs, actions, returns, torch.zeros(3))


# ------------------------------------------------------------------------------ trap: (B, 1) x (B,) broadcasting


@pytest.mark.parametrize("loss_name", ["paper", "reinforce"])
def test_per_sample_credit_is_not_broadcast(loss_name):
    """Changing sample 0's reward changes only sample 0's gradient (a (B,1)*(B,) product would mix them)."""
    batch, n = 4, 3
    probs = torch.rand(batch, n) * 0.8 + 0.1
    gates = probs >= 0.5
    actions = rl.explore_actions(gates, 0.3, generator=torch.Generator().manual_seed(0))

    def grad(r_acc):
        p = probs.clone().requires_grad_(True)
        rewards = rl.gate_rewards(actions, r_acc[:, None])  # a (B, 1) column on purpose
        assert rewards.shape == (batch, n)
        if loss_name == "paper":
            loss = rl.paper_policy_loss(p, actions, gates, rewards)
        else:
            loss = rl.reinforce_loss(p, actions, rewards, baseline=0.0)
        loss.backward()
        return p.grad

    base = grad(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    changed = grad(torch.tensor([5.0, 1.0, 1.0, 1.0]))
    assert not torch.allclose(base[0], changed[0])
    assert torch.allclose(base[1:], changed[1:])


def test_policy_losses_refuse_a_column_of_rewards():
    probs = torch.rand(4, 3, requires_grad=True)
    actions = torch.ones(4, 3, dtype=torch.bool)
    with pytest.raises(ValueError):
        rl.paper_policy_loss(probs, actions, actions, torch.ones(4, 1))
    with pytest.raises(ValueError):
        rl.reinforce_loss(probs, actions, torch.ones(4))


# --------------------------------------------------------------------------------- trap: batch of one


@pytest.mark.parametrize("gate_downsample", [True, False])
def test_batch_of_one_through_head_rewards_and_losses(gate_downsample):
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(1, 12, 12), in_chans=1,
                                   gate_downsample=gate_downsample).train()
    n = model.num_gates
    assert n == (3 if gate_downsample else 1)
    rollout = rl.PolicyRollout(model, flip_prob=0.5)
    x = torch.randn(1, 1, 12, 12)
    logits, probs, gates, actions = rollout(x)
    assert logits.shape == (1, 10) and probs.shape == (1, n) and gates.shape == (1, n) and actions.shape == (1, n)
    r_acc = rl.accuracy_reward(logits, torch.tensor([3]))
    assert r_acc.shape == (1,)
    rewards = rl.gate_rewards(actions, r_acc)
    assert rewards.shape == (1, n)
    for loss in (rl.paper_policy_loss(probs, actions, gates, rewards), rl.reinforce_loss(probs, actions, rewards, 0.0)):
        assert loss.dim() == 0
        grads = torch.autograd.grad(loss, list(model.head.parameters()), retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads)
    model.eval()
    assert model(x).shape == (1, 10) and model.last_gates.shape == (1, n)


# ------------------------------------------------------------------------ trap: lr schedule by in-epoch step


def test_schedule_follows_the_global_step_across_epochs():
    net = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    steps_per_epoch, epochs = 4, 3
    scheduler = make_scheduler(optimizer, "cosine", steps_per_epoch * epochs)
    seen = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert all(a > b for a, b in zip(seen, seen[1:])), seen  # no restart at an epoch boundary
    assert seen[steps_per_epoch] < seen[steps_per_epoch - 1]
    rule = LRSchedule("cosine", steps_per_epoch * epochs)
    assert seen == pytest.approx([rule(s) for s in range(steps_per_epoch * epochs)])


def test_schedule_state_resumes_at_the_same_step():
    def run(stop=None, state=None):
        net = nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        scheduler = make_scheduler(optimizer, "step", 10, warmup_steps=2, milestones=(0.5,))
        if state is not None:  # what accelerator.load_state restores: optimizer and scheduler
            optimizer.load_state_dict(state[0])
            scheduler.load_state_dict(state[1])
        lrs = []
        while scheduler.last_epoch < (stop or 10):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs, (optimizer.state_dict(), scheduler.state_dict())

    full, _ = run()
    first, state = run(stop=5)
    rest, _ = run(state=state)
    assert first + rest == pytest.approx(full)
    assert full[:2] == pytest.approx([0.05, 0.1]) and full[-1] == pytest.approx(0.01)


# ------------------------------------------------------------------------------ trap: BatchNorm drift


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_freeze_batchnorm_statistics_keeps_running_stats_under_random_skips():
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(1, 12, 12), in_chans=1).train()
    rollout = rl.PolicyRollout(model, flip_prob=0.5)
    before = _bn_state(model)
    frozen = rl.freeze_batchnorm_statistics(model)
    assert frozen > 0
    logits, probs, gates, actions = rollout(torch.randn(8, 1, 12, 12))
    logits.sum().backward()
    assert all(torch.equal(before[k], v) for k, v in _bn_state(model).items())
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.weight.grad is not None  # the affine parameters still train
    model.train()
    rollout(torch.randn(8, 1, 12, 12))
    assert any(not torch.equal(before[k], v) for k, v in _bn_state(model).items())


def test_policy_rollout_runs_the_sampled_actions():
    model = ofas_wrap.create_model("cifar:resnet8", input_size=(1, 12, 12), in_chans=1).eval()
    x = torch.randn(3, 1, 12, 12)
    torch.manual_seed(5)
    logits, probs, gates, actions = rl.PolicyRollout(model, flip_prob=0.5)(x)
    with model.forced_gates(actions):
        expected = model(x)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(gates, probs.detach() >= model.threshold)
    with pytest.raises(ValueError):
        rl.PolicyRollout(model, sampling="greedy")
