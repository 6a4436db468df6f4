"""A model as parts: each part initialises itself, and the presets build exactly as before."""

import copy

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


class TinyBackbone(nn.Module):
    """A user's own backbone: two sources at strides 8 and 16."""

    part_name = "tiny"

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.width = width
        self.down8 = nn.Conv2d(3, width, 3, stride=8, padding=1)
        self.down16 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.out_channels = (width, 2 * width)

    def config(self) -> dict:
        return {"width": self.width}

    def forward(self, x):
        a = torch.relu(self.down8(x))
        return [a, torch.relu(self.down16(a))]


def tiny_model(seed: int = 0) -> SSD:
    torch.manual_seed(seed)
    backbone = TinyBackbone(width=6)
    config = PRESETS["ssd160_compact"].prior_config
    config = type(config).from_dict({**config.to_dict(), "feature_maps": [20, 10, 5], "steps": [8, 16, 32],
                                     "min_sizes": [16, 36, 68], "max_sizes": [36, 68, 100],
                                     "aspect_ratios": [[2], [2, 3], [2]]})  # fmt: skip
    extras = SSDExtras(12, [{"mid_channels": 8, "out_channels": 16, "kernel": 3, "stride": 2, "padding": 1}])
    model = SSD(backbone=backbone, extras=extras, num_classes=3, prior_config=config,
                class_names=["__background__", "a", "b"], image_std=(58.0, 57.0, 57.5),
                postprocess=PostprocessConfig(score_threshold=0.2, max_detections=None))  # fmt: skip
    return model.eval()


def outputs_equal(loaded, model, size):
    """Same outputs, bit for bit; ``model`` in the weight layout `singleshot.load` gives."""
    a, b = loaded, copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5)) * 60
    with torch.no_grad():
        return all(torch.equal(u, v) for u, v in zip(a(x), b(x)))


def test_a_model_built_from_parts_round_trips_with_its_user_backbone(tmp_path):
    from singleshot.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model()
    path = save_checkpoint(tmp_path / "tiny.pt", model)
    meta = load_checkpoint(path)["model"]
    assert meta["preset"] is None
    assert meta["parts"]["backbone"] == {"name": "tiny", "config": {"width": 6}}
    assert meta["image_std"] == [58.0, 57.0, 57.5]
    assert meta["postprocess"]["score_threshold"] == 0.2 and meta["postprocess"]["max_detections"] is None
    loaded = singleshot.load(path, parts={"tiny": TinyBackbone})
    assert isinstance(loaded.backbone, TinyBackbone) and loaded.backbone.width == 6
    assert loaded.image_std == (58.0, 57.0, 57.5) and loaded.postprocess == model.postprocess
    assert loaded.class_names == ["__background__", "a", "b"] and loaded.preset is None
    assert torch.equal(loaded.priors, model.priors)
    assert outputs_equal(loaded, model, 160)
    # without the class the file's part name is unknown: a ValueError naming the file and the part
    with pytest.raises(ValueError, match=r"tiny\.pt: cannot rebuild.*unknown backbone part 'tiny'"):
        singleshot.load(path)


def test_a_model_whose_parts_cannot_describe_themselves_is_refused(tmp_path):
    from singleshot.checkpoint import save_checkpoint

    model = tiny_model()
    model.extras = nn.ModuleList(list(model.extras))  # a plain list of blocks has no part_name
    with pytest.raises(ValueError, match=r"x\.pt: this model cannot be checkpointed: the model's extras"):
        save_checkpoint(tmp_path / "x.pt", model)

    class Subclass(TinyBackbone):  # inherits part_name: must not pass for its parent
        pass

    model = tiny_model()
    model.backbone = Subclass(width=6)
    with pytest.raises(ValueError, match="'Subclass' is not a model part"):
        save_checkpoint(tmp_path / "y.pt", model)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["ssd300_voc", "ssd160_compact"])
def test_preset_models_round_trip_with_a_custom_prior_config(tmp_path, name):
    from singleshot.checkpoint import save_checkpoint

    config = PRESETS[name].prior_config
    custom = type(config).from_dict({**config.to_dict(), "min_sizes": [m * 0.9 for m in config.min_sizes]})
    torch.manual_seed(4)
    model = singleshot.build_model(name, num_classes=4, prior_config=custom, prior_clip="size").eval()
    loaded = singleshot.load(save_checkpoint(tmp_path / "m.pt", model))
    assert loaded.preset == name and loaded.prior_config == custom.with_clip("size")
    assert loaded.image_std == (1.0, 1.0, 1.0) and loaded.postprocess == PostprocessConfig()
    assert torch.equal(loaded.priors, model.priors)
    assert outputs_equal(loaded, model, config.image_size)


def test_a_version_1_file_of_the_old_layout_loads(tmp_path):
    """The layout written before parts: no image_std, postprocess or parts."""
    torch.manual_seed(1)
    model = singleshot.build_model("ssd160_compact", class_names=["__background__", "cat"]).eval()
    old = {
        "format": "singleshot",
        "version": 1,
        "model": {
            "preset": "ssd160_compact",
            "num_classes": 2,
            "class_names": ["__background__", "cat"],
            "prior_config": model.prior_config.to_dict(),
            "image_mean": [120.0, 110.0, 100.0],
            "category_ids": [0, 17],
        },
        "state_dict": model.state_dict(),
        "training": {"iteration": 3},
    }
    torch.save(old, tmp_path / "old.pt")
    loaded = singleshot.load(tmp_path / "old.pt")
    assert loaded.image_mean == (120.0, 110.0, 100.0) and loaded.image_std == (1.0, 1.0, 1.0)
    assert loaded.postprocess == PostprocessConfig(0.01, 0.45, 200, 200, False)
    assert loaded.category_ids == [0, 17] and loaded.preset == "ssd160_compact"
    assert outputs_equal(loaded, model, 160)
    # a file without a preset must name its parts
    old["model"]["preset"] = None
    torch.save(old, tmp_path / "anonymous.pt")
    with pytest.raises(ValueError, match=r"anonymous\.pt: cannot rebuild.*must record its parts"):
        singleshot.load(tmp_path / "anonymous.pt")
    old["model"]["preset"] = "ssd160_compact"
    old["model"]["image_std"] = [1.0, 0.0, 1.0]
    torch.save(old, tmp_path / "std.pt")
    with pytest.raises(ValueError, match=r"std\.pt: cannot rebuild.*image_std must be three positive"):
        singleshot.load(tmp_path / "std.pt")


def test_image_std_divides_the_mean_subtracted_input_exactly():
    from singleshot.data import EvalTransform, SSDAugmentation
    from singleshot.transforms import preprocess

    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (123.0, 117.0, 104.0), (58.395, 57.12, 57.375)
    plain = preprocess([image], 32, mean)
    scaled = preprocess([image], 32, mean, std=std)
    assert torch.equal(scaled, plain / torch.tensor(std).view(1, 3, 1, 1))
    assert not torch.equal(scaled, plain)
    assert torch.equal(preprocess([image], 32, mean, std=(1.0, 1.0, 1.0)), plain)  # ones: the same bits
    target = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 20.0]]), "labels": torch.tensor([1])}
    x, _ = EvalTransform(32, mean, std=std)(image, target)
    assert torch.equal(x, scaled[0])
    g = torch.Generator()
    a, _ = SSDAugmentation(32, mean)(image, target, generator=g.manual_seed(3))
    b, _ = SSDAugmentation(32, mean, std=std)(image, target, generator=g.manual_seed(3))
    assert torch.equal(b, a / torch.tensor(std).view(3, 1, 1))


def test_predict_normalises_with_the_models_image_std():
    model = tiny_model()
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    model.predict(image)
    from singleshot.transforms import preprocess

    expected = preprocess([image], 160, model.image_mean) / torch.tensor(model.image_std).view(1, 3, 1, 1)
    assert torch.equal(seen[0], expected)


def test_predict_takes_left_out_settings_from_the_model_and_explicit_ones_win():
    model = tiny_model()  # postprocess: score 0.2, no cap
    image = torch.randint(0, 256, (3, 60, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a confident background-free head: many boxes over any threshold
        model.head.conf[0].bias.copy_(torch.tensor([0.0, 3.0, 0.0] * (model.head.conf[0].bias.numel() // 3)))
    own = model.predict(image)[0]
    assert len(own["scores"]) > 200 and own["scores"].min() > 0.2  # no cap, threshold 0.2
    capped = model.predict(image, score_threshold=0.2, max_detections=200)[0]
    assert torch.equal(capped["scores"], own["scores"][:200])
    model.postprocess = PostprocessConfig()
    assert torch.equal(
        model.predict(image)[0]["scores"], model.predict(image, 0.01, 0.45, 200, 200)[0]["scores"]
    )
