"""The CIFAR ResNets and backbone spec strings."""

import pytest
import timm
import torch

import ofas_wrap
from ofas_wrap.models import CifarResNet, cifar_resnet, create_backbone, default_input_size, parse_backbone_spec


@pytest.mark.parametrize("depth", [20, 26, 32, 38, 44, 56, 110])
def test_cifar_resnet_has_three_stages_of_n_blocks(depth):
    model = cifar_resnet(depth)
    blocks_per_stage = (depth - 2) // 6
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [blocks_per_stage] * 3
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + the classifier = the nominal depth


def test_cifar_resnet_grey_input_and_classes():
    model = cifar_resnet(20, num_classes=100, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 100)


def test_cifar_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_cifar_resnets_are_registered_with_timm():
    model = timm.create_model("cifar_resnet38", num_classes=7, in_chans=1)
    assert isinstance(model, CifarResNet) and model.depth == 38
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    with pytest.raises(ValueError, match="no published pretrained weights"):
        timm.create_model("cifar_resnet20", pretrained=True)


def test_cifar_resnets_resolve_their_own_data_config_in_timm():
    config = timm.data.resolve_model_data_config(timm.create_model("cifar_resnet20"))
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0  # not ImageNet's 224 px, 0.875
    assert config["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))


def test_cifar_resnets_features_only_returns_the_stem_and_each_stage():
    model = timm.create_model("cifar_resnet20", features_only=True)
    features = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.feature_info.channels() == [16, 16, 32, 64]


@pytest.mark.parametrize("kwargs", [{"drop_rate": 0.5}, {"global_pool": "max"}])
def test_cifar_resnets_take_timms_head_options(kwargs):
    model = timm.create_model("cifar_resnet20", num_classes=4, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    pooled = features.amax((2, 3)) if kwargs.get("global_pool") == "max" else features.mean((2, 3))
    assert torch.allclose(model(x), model.get_classifier()(pooled), atol=1e-5)  # eval: no dropout
    if "drop_rate" in kwargs:
        model.train()
        assert not torch.allclose(model.forward_head(features), model.forward_head(features))


def test_cifar_resnet_reset_classifier():
    model = timm.create_model("cifar_resnet20")
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


@pytest.mark.parametrize("spec,kind", [("cifar:resnet20", "CifarResNet"), ("timm:resnet18", "ResNet"),
                                        ("torchvision:resnet18", "ResNet")])
def test_spec_strings_build_backbones(spec, kind):
    assert type(create_backbone(spec, num_classes=3)).__name__ == kind


@pytest.mark.parametrize("spec,message", [("resnet50", "SOURCE:NAME"), ("keras:resnet50", "unknown backbone source"),
                                           ("cifar:wide", "resnetDEPTH"), ("timm:", "no model name")])
def test_bad_spec_strings_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_backbone_spec(spec)


def test_unknown_model_names_are_clear_errors():
    with pytest.raises(ValueError, match="timm has no model"):
        create_backbone("timm:resnet9999")
    with pytest.raises(ValueError, match="torchvision has no"):
        create_backbone("torchvision:resnet9999")


def test_default_input_sizes():
    assert default_input_size(cifar_resnet(20, in_chans=1)) == (1, 32, 32)
    assert default_input_size(timm.create_model("resnet18")) == (3, 224, 224)


def test_create_model_records_the_spec():
    model = ofas_wrap.create_model("cifar:resnet20", num_classes=5, in_chans=1, variant="I")
    assert model.config["backbone"] == {"source": "cifar", "name": "resnet20",
                                        "kwargs": {"num_classes": 5, "in_chans": 1}}
    assert model.plan.input_size == (1, 32, 32)


def test_a_tagged_timm_name_builds_and_is_recorded_with_its_tag():
    model = ofas_wrap.create_model("timm:resnet18.a1_in1k", input_size=(3, 64, 64))
    assert model.config["backbone"]["name"] == "resnet18.a1_in1k"


def test_pretrained_asks_the_library_for_its_weights(monkeypatch):
    calls = []
    real = timm.create_model

    def fake(name, pretrained=False, **kwargs):  # the Hub is not reachable in CI: record the request
        calls.append((name, pretrained))
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake)
    ofas_wrap.create_model("timm:resnet18.a1_in1k", pretrained=True, input_size=(3, 64, 64))
    assert calls == [("resnet18.a1_in1k", True)]


@pytest.mark.parametrize("spec", ["cifar:resnet20"])
def test_pretrained_without_published_weights_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="no published weights"):
        ofas_wrap.create_model(spec, pretrained=True)
