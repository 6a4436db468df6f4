"""SSDLite: ImageNet MobileNetV3-Large backbone weights (full tail) and checkpoint round trips."""

import copy

import pytest
import torch

import singleshot
from singleshot import weights
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.models.build import build_ssd
from singleshot.models.ssdlite import ssdlite_spec
from singleshot.training import train
from train_fixtures import ShapesDataset, tiny_config


@pytest.fixture(scope="module")
def imagenet_state():
    """torchvision's ImageNet mobilenet_v3_large layout (random weights: no download)."""
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    return mobilenet_v3_large(weights=None).state_dict()


def full_tail_voc():
    return build_ssd(ssdlite_spec(21, reduced_tail=False), preset="ssdlite320_voc")


def test_imagenet_mobilenet_v3_loads_into_the_full_tail(imagenet_state):
    model = full_tail_voc()
    assert model.backbone.out_channels == (672, 960)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    weights.load_backbone(model, imagenet_state)
    own = model.state_dict()
    for key, value in imagenet_state.items():
        if key.startswith("features."):
            assert torch.equal(own[f"backbone.{key}"], value), key
    assert all(torch.equal(own[k], v) for k, v in head_before.items())  # extras and heads untouched


def test_backbone_weights_are_refused_where_they_do_not_fit(imagenet_state, tmp_path):
    with pytest.raises(ValueError, match="need the full tail; build the backbone with reduced_tail=False"):
        weights.load_mobilenet_v3_backbone(singleshot.build_model("ssdlite320_voc"), imagenet_state)
    with pytest.raises(ValueError, match="without a MobileNetV3 backbone"):
        weights.load_mobilenet_v3_backbone(singleshot.build_model("ssd160_compact"), imagenet_state)
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v3_large"):
        weights.load_backbone(full_tail_voc(), {"0.weight": torch.zeros(1), "33.weight": torch.zeros(1)})
    broken = dict(imagenet_state)
    broken["features.3.block.0.0.weight"] = torch.zeros(5, 24, 1, 1)
    torch.save(broken, tmp_path / "mnv3.pth")
    with pytest.raises(ValueError, match=r"mnv3\.pth: does not fit .*wrong shape: 3\.block\.0\.0\.weight"):
        weights.load_backbone(full_tail_voc(), tmp_path / "mnv3.pth")
    # the VGG16 presets keep their loader: a MobileNetV3 state dict is not VGG16
    with pytest.raises(ValueError, match="neither a vgg16_reducedfc.pth layout"):
        weights.load_backbone(singleshot.build_model("ssd300_voc"), imagenet_state)


def test_training_with_backbone_weights_builds_the_full_tail_and_checkpoints_it(imagenet_state, tmp_path):
    torch.save(imagenet_state, tmp_path / "mobilenet_v3_large.pth")
    config = tiny_config(
        tmp_path / "run", model="ssdlite320_voc", batch_size=2, iterations=2,
        backbone_weights=str(tmp_path / "mobilenet_v3_large.pth"),
    )  # fmt: skip
    from singleshot.training.setup import build_training_model

    start = build_training_model(config, ShapesDataset.classes)
    assert not start.backbone.reduced_tail
    assert torch.equal(
        start.state_dict()["backbone.features.16.0.weight"], imagenet_state["features.16.0.weight"]
    )
    train(config, ShapesDataset(4, size=96), progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["model"]["parts"]["backbone"] == {
        "name": "mobilenet_v3_large", "config": {"reduced_tail": False},
    }  # fmt: skip
    model = singleshot.load(tmp_path / "run" / "last.pt")
    assert model.backbone.out_channels == (672, 960) and model.num_classes == 3


def assert_round_trip(model, path):
    save_checkpoint(path, model)
    loaded = singleshot.load(path)
    assert loaded.preset == model.preset and loaded.class_names == model.class_names
    assert loaded.postprocess == model.postprocess and loaded.image_std == model.image_std
    assert loaded.backbone.config() == model.backbone.config()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # load() gives the weights the channels-last layout the forward feeds them; the same
    # layout on the original makes both run the same kernels (an NCHW copy may not, on
    # another CPU's kernels)
    reference = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        for a, b in zip(loaded(x), reference(x)):
            assert torch.equal(a, b)
    return loaded


def test_checkpoint_round_trips(tmp_path):
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(6)
    voc = singleshot.build_model("ssdlite320_voc", class_names=["__background__", "a", "b"])
    with torch.no_grad():  # non-trivial BatchNorm statistics, saved as buffers
        for m in voc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    assert_round_trip(voc, tmp_path / "voc.pt")
    assert_round_trip(full_tail_voc(), tmp_path / "full.safetensors")
    torchvision_model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    converted = weights.convert_model(torchvision_model.state_dict(), "torchvision")
    loaded = assert_round_trip(converted, tmp_path / "coco91.pt")
    assert loaded.num_classes == 91 and loaded.class_names[12] == "N/A"
    assert loaded.prior_config.clip == "size" and loaded.priors.shape == (3234, 4)
