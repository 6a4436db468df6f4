"""A model as parts: each part initialises itself, and the presets build exactly as before."""

import pytest
import torch
from torch import nn

import singleshot
from singleshot.models import SSD, CompactBackbone, MultiBoxHead, SSDExtras, VGG16Backbone, build_ssd
from singleshot.models.extras import SSD300_EXTRAS, build_extras
from singleshot.models.spec import Part, PostprocessConfig, SSDSpec
from singleshot.presets import COMPACT_EXTRAS, PRESETS
from singleshot.training.config import TrainConfig
from singleshot.training.optim import parameter_groups


def old_init_ssd_weights(model):
    """presets.init_ssd_weights as it was before the parts initialised themselves."""
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for part in (model.extras, model.head):
        for module in part.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def old_construct(name, num_classes):
    """build_model's construction as it was: backbone, extras, then the SSD (which made the head)."""
    compact = name == "ssd160_compact"
    backbone = CompactBackbone() if compact else VGG16Backbone()
    extras = COMPACT_EXTRAS if compact else SSD300_EXTRAS
    return SSD(
        backbone=backbone,
        extras=build_extras(backbone.out_channels[-1], extras, batch_norm=compact),
        num_classes=num_classes,
        prior_config=PRESETS[name].prior_config,
    )


def old_build_model(name, num_classes):
    model = old_construct(name, num_classes)
    old_init_ssd_weights(model)
    return model


@pytest.mark.parametrize("name", ["ssd160_compact", "ssd300_voc"])
def test_seeded_build_gives_the_weights_of_the_old_initialisation(name):
    torch.manual_seed(11)
    old = old_build_model(name, num_classes=5)
    torch.manual_seed(11)
    new = singleshot.build_model(name, num_classes=5)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)
    for key, value in old_state.items():
        assert torch.equal(new_state[key], value), key
    assert torch.equal(new.priors, old.priors)
    # the draws really happened: He-normal backbone, Xavier head, zero biases, L2Norm at 20
    compact = name == "ssd160_compact"
    first = new_state[
        "backbone.to_stride8.0.conv.weight" if compact else "backbone.to_conv4_3.conv1_1.weight"
    ]
    assert first.std() > 0.01
    assert torch.count_nonzero(new_state["head.conf.0.bias"]) == 0
    if not compact:
        assert torch.equal(new_state["backbone.l2norm.weight"], torch.full((512,), 20.0))


def test_reset_parameters_redraws_each_part_in_order():
    torch.manual_seed(2)
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    torch.manual_seed(2)
    old_construct("ssd160_compact", num_classes=3)  # consumes the construction draws
    model.reset_parameters()  # then the same initialisation draws as the build
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_optimizer_groups_keep_the_l2norm_scale_in_norm():
    model = singleshot.build_model("ssd300_voc")
    groups = {g["name"]: g["params"] for g in parameter_groups(model, TrainConfig().optimizer)}
    assert [p.shape for p in groups["norm"]] == [torch.Size([512])]
    assert groups["norm"][0] is model.backbone.l2norm.weight
    compact = singleshot.build_model("ssd160_compact")
    groups = {g["name"]: g["params"] for g in parameter_groups(compact, TrainConfig().optimizer)}
    norms = [m for m in compact.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(groups["norm"]) == 2 * len(norms)


def test_a_spec_builds_the_preset_and_records_its_parts():
    spec = PRESETS["ssd300_voc"].spec
    assert (spec.backbone.name, spec.extras.name, spec.head.name) == ("vgg16", "ssd_extras", "multibox")
    assert spec.postprocess == PostprocessConfig(0.01, 0.45, 200, 200, False)
    assert spec.image_std == (1.0, 1.0, 1.0)
    data = spec.to_dict()
    assert data["parts"]["extras"]["config"]["specs"][0] == {
        "mid_channels": 256, "out_channels": 512, "kernel": 3, "stride": 2, "padding": 1,
    }  # fmt: skip
    table = {"vgg16": VGG16Backbone, "ssd_extras": SSDExtras, "multibox": MultiBoxHead}
    assert SSDSpec.from_dict(data, table) == spec.replace(
        extras=Part(SSDExtras, data["parts"]["extras"]["config"])
    )
    model = build_ssd(spec.replace(num_classes=4), reset=False)
    assert model.num_classes == 4 and model.priors.shape == (8732, 4)
    assert isinstance(model.extras, SSDExtras) and len(model.extras) == 4
