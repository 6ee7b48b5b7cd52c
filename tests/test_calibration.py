"""The head temperature (ofas_wrap._calibration): a threshold cliff becomes a knob, decisions at T = 0.5 kept."""

import math

import pytest
import torch
from torch import nn

import ofas_wrap
from ofas_wrap import calibrate_head, fold_head_temperature, head_temperature


class TinyBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    def __init__(self, blocks=4, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(*[TinyBlock(c) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(self.stem(x))).flatten(1))


MODELS = {
    "tiny": lambda: TinyResNet(),
    "cifar_resnet8": lambda: ofas_wrap.models.cifar_resnet(8),
}


def narrow_head(name):
    """An adapted model whose head outputs all sit in a narrow band near 0.5: the cliff of the paper's recipe."""
    torch.manual_seed(0)
    model = ofas_wrap.adaptify(MODELS[name](), variant="I", input_size=(3, 32, 32)).eval()
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.fill_(0.002)
    return model


def outputs(model, images):
    with torch.no_grad():
        return model.gate_probabilities(images)[1]


@pytest.mark.parametrize("name", MODELS)
def test_calibration_spreads_the_outputs_over_the_coverage(name):
    model, images = narrow_head(name), torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = outputs(model, images)
    assert float(before.max() - before.min()) < 0.05  # the cliff: every output within a few hundredths
    temperature = calibrate_head(model, [(images[:128], None), (images[128:], None)], coverage=0.9)
    after = outputs(model, images)
    assert temperature < 1
    low, high = after.flatten().double().quantile(torch.tensor([0.05, 0.95], dtype=torch.float64))
    # the side that reaches farther from 0.5 lands on the coverage's edge, the other inside it
    assert min(float(low), 1 - float(high)) == pytest.approx(0.05, abs=0.01)
    assert float(low) >= 0.05 - 0.01 and float(high) <= 0.95 + 0.01


@pytest.mark.parametrize("name", MODELS)
def test_calibration_keeps_every_decision_at_one_half_and_maps_the_others(name):
    model, images = narrow_head(name), torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = outputs(model, images)
    temperature = calibrate_head(model, [images])
    after = outputs(model, images)
    assert torch.equal(after >= 0.5, before >= 0.5)
    for threshold in (0.2, 0.4, 0.6, 0.8):  # T of the calibrated model = T' of the saved one
        original = 1 / (1 + math.exp(-temperature * math.log(threshold / (1 - threshold))))
        assert torch.equal(after >= threshold, before >= original)
    model.threshold = 0.5  # and the real-skipping forward agrees
    with torch.no_grad():
        model(images[:4])


def test_a_spread_head_is_compressed_not_stretched():
    assert head_temperature(torch.tensor([0.001, 0.5, 0.999])) > 1


@pytest.mark.parametrize("outputs_, coverage, message", [
    (torch.zeros(0), 0.9, "no head outputs"),
    (torch.full((10,), 0.5), 0.9, "every head output is 0.5"),
    (torch.tensor([0.2, float("nan")]), 0.9, "NaN"),
    (torch.tensor([0.2, 0.7]), 1.0, "coverage must be in"),
])
def test_bad_outputs_are_refused(outputs_, coverage, message):
    with pytest.raises(ValueError, match=message):
        head_temperature(outputs_, coverage)


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "2"])
def test_bad_temperatures_are_refused_and_the_head_is_unchanged(temperature):
    model = narrow_head("tiny")
    state = {k: v.clone() for k, v in model.head.state_dict().items()}
    with pytest.raises(ValueError, match="temperature must be"):
        fold_head_temperature(model.head, temperature)
    assert all(torch.equal(state[k], v) for k, v in model.head.state_dict().items())


def test_calibrate_head_needs_an_adapted_model():
    with pytest.raises(TypeError, match="needs an OFASModel"):
        calibrate_head(TinyResNet(), [torch.randn(2, 3, 32, 32)])


def test_the_calibrated_head_saves_and_scripts(tmp_path):
    model = narrow_head("cifar_resnet8")
    images = torch.randn(8, 3, 32, 32)
    calibrate_head(model, [images])
    model.threshold = 0.3
    model.save_pretrained(tmp_path / "m")
    loaded = ofas_wrap.OFASModel.from_pretrained(tmp_path / "m").eval()
    ofas_wrap.export_torchscript(loaded, tmp_path / "m.pt", example_input=images[:2])
    scripted, _ = ofas_wrap.load_torchscript(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(scripted(images), model(images), atol=1e-5)


@pytest.mark.parametrize("percentiles, expected", [
    ({"5": 0.99998, "25": 1.0, "50": 1.0, "75": 1.0, "95": 1.0}, "saturated open"),  # the 2-epoch ResNet-56 head
    ({"5": 0.0, "25": 0.0, "50": 0.0001, "75": 0.0005, "95": 0.0009}, "saturated closed"),
    ({"5": 0.71, "25": 0.8, "50": 0.85, "75": 0.9, "95": 0.95}, None),  # narrow, but T still reaches into it
    ({}, None),  # no gates
])
def test_evaluate_warns_when_the_heads_outputs_have_saturated(percentiles, expected):
    from ofas_wrap.training import saturation_note

    note = saturation_note(percentiles)
    assert (note is None) if expected is None else (expected in note and "--head-lr" in note)
