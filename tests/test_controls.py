"""The controls of issue 10 on a tiny model: same cost as OFAS, no input dependence."""

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap.training import control_rows, greedy_fixed_subset, greedy_path, random_rate_patterns, shuffled_patterns
from ofas_wrap.training._controls import _trial_logits, _trials_from_shared_prefix, _trials_whole


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(*[Block() for _ in range(4)])
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Outer(nn.Module):
    """Two blocks inside a residual of their own: a nested residual (its shortcut is carried past the blocks)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, x):
        return torch.relu(self.blocks(x) + x)


class NestedNet(Net):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Outer(), Outer())


ARCHITECTURES = {
    "plain chain": (Net, (3, 8, 8)),
    "nested residuals": (NestedNet, (3, 8, 8)),
    "cifar resnet14 (downsampling shortcuts)": (lambda: ofas_wrap.models.cifar_resnet(14), (3, 16, 16)),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("batch", [1, 5])
def test_a_trial_run_from_the_shared_prefix_gives_the_logits_of_its_whole_forward(name, batch) -> None:
    build, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = ofas_wrap.adaptify(build(), input_size=size).eval()
    assert model.carries == (name == "nested residuals")
    keep = torch.ones(model.num_gates, dtype=torch.bool)
    keep[1] = False  # a gate the step has closed already
    candidates = keep.nonzero().flatten().tolist()
    images = torch.randn(batch, *size)
    with torch.no_grad():
        shared = list(_trial_logits(model, images, keep, candidates))
        for gate, logits in zip(candidates, shared, strict=True):
            trial = keep.clone()
            trial[gate] = False
            with model.forced_gates(trial.expand(batch, -1)):
                assert torch.equal(logits, model(images)), f"gate {gate}"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_greedy_search_counts_what_whole_forwards_count(name) -> None:
    build, size = ARCHITECTURES[name]
    torch.manual_seed(1)
    model = ofas_wrap.adaptify(build(), input_size=size).eval()
    images = torch.randn(17, *size)  # batches of 8, 8 and 1
    with torch.no_grad():
        labels = model(images).argmax(1)  # so that closing a gate changes the counts
        keep = torch.ones(model.num_gates, dtype=torch.bool)
        candidates = keep.nonzero().flatten().tolist()
        shared = _trials_from_shared_prefix(model, images, labels, keep, candidates, 8)
    assert shared == _trials_whole(model, images, labels, keep, candidates, 8)


def test_shuffled_and_random_patterns_keep_the_costs_but_not_the_assignment():
    patterns = torch.rand(500, 4, generator=torch.Generator().manual_seed(1)) < torch.tensor([0.9, 0.5, 0.2, 0.7])
    shuffled = shuffled_patterns(patterns, seed=3)
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, patterns.tolist()))  # the same patterns
    assert not torch.equal(shuffled, patterns)
    rates = random_rate_patterns(patterns, seed=3).float().mean(0)
    assert torch.allclose(rates, patterns.float().mean(0), atol=0.07)


def test_the_greedy_fixed_subset_has_the_asked_number_of_gates_and_rows_are_complete():
    model = ofas_wrap.adaptify(Net(), input_size=(3, 8, 8), threshold=0.5).eval()
    images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 3
    subset = greedy_fixed_subset(model, images, labels, 2.4)
    assert subset.dtype == torch.bool and int(subset.sum()) == 2
    rows = control_rows(model, 0.5, (images, labels), (images[:20], labels[:20]), seeds=(0, 1))
    assert [r["method"] for r in rows] == ["shuffled", "random_rates"] * 2 + ["fixed_subset"]
    for row in rows:
        assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["executed_gates"] <= 4 and row["mflops"] > 0


def test_the_greedy_path_closes_one_gate_a_step_and_never_reopens() -> None:
    torch.manual_seed(0)
    model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(14), input_size=(3, 32, 32)).eval()
    path = greedy_path(model, torch.randn(16, 3, 32, 32), torch.arange(16) % 10, 3, batch_size=8)
    assert [int(p.sum()) for p in path] == [model.num_gates - 1, model.num_gates - 2, model.num_gates - 3]
    assert all(bool((later <= earlier).all()) for earlier, later in zip(path, path[1:]))


def test_a_shared_greedy_search_extends_in_place_and_answers_shorter_requests_from_its_start() -> None:
    torch.manual_seed(0)
    model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(14), input_size=(3, 32, 32)).eval()
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        labels = model(images).argmax(1)
    fresh = [p.tolist() for p in greedy_path(model, images, labels, 4, batch_size=8)]
    shared: list = []

    def search(steps, batch=images):
        return [p.tolist() for p in greedy_path(model, batch, labels, steps, batch_size=8, path=shared)]

    assert search(2) == fresh[:2] and len(shared) == 2
    assert search(4) == fresh and len(shared) == 4
    assert search(3, torch.empty(0)) == fresh[:3]  # read from the shared search: no trial runs, no images needed
