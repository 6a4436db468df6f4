"""ImageNet VGG16 -> SSD base network: fc6/fc7 subsampling, folded input normalisation, loading."""

import pytest
import torch
import torch.nn.functional as F

import singleshot
from singleshot import weights
from tolerances import reduction, rounding


@pytest.fixture(scope="module")
def vgg16_state():
    from torchvision.models import vgg16

    torch.manual_seed(0)
    state = vgg16(weights=None).state_dict()
    # torchvision initialises biases to zero; give them values so that bias handling is tested
    g = torch.Generator().manual_seed(1)
    for key in state:
        if key.endswith("bias"):
            state[key] = torch.randn(state[key].shape, generator=g) * 0.1
    return state


@pytest.fixture(scope="module")
def reduced(vgg16_state):
    return weights.reduce_vgg16(vgg16_state)


def test_reduce_shapes_and_keys(reduced):
    expected = {0: (64, 3, 3, 3), 2: (64, 64, 3, 3), 21: (512, 512, 3, 3), 28: (512, 512, 3, 3),
                31: (1024, 512, 3, 3), 33: (1024, 1024, 1, 1)}  # fmt: skip
    for index, shape in expected.items():
        assert tuple(reduced[f"{index}.weight"].shape) == shape
        assert tuple(reduced[f"{index}.bias"].shape) == shape[:1]
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33]
    assert set(reduced) == {f"{i}.{p}" for i in convs for p in ("weight", "bias")}


def test_reduce_takes_every_4th_filter_and_every_3rd_tap(vgg16_state, reduced):
    fc6, fc7 = vgg16_state["classifier.0.weight"], vgg16_state["classifier.3.weight"]
    # fc6 input j = c * 49 + row * 7 + col over conv5_3's 512 x 7 x 7 output
    for out, c, a, b in [(0, 0, 0, 0), (5, 7, 2, 1), (1023, 511, 2, 2), (300, 100, 1, 2)]:
        assert reduced["31.weight"][out, c, a, b] == fc6[4 * out, c * 49 + (3 * a) * 7 + 3 * b]
    for out, inp in [(0, 0), (7, 9), (1023, 1023), (512, 3)]:
        assert reduced["33.weight"][out, inp, 0, 0] == fc7[4 * out, 4 * inp]
    assert torch.equal(reduced["31.bias"], vgg16_state["classifier.0.bias"][0::4])
    assert torch.equal(reduced["33.bias"], vgg16_state["classifier.3.bias"][0::4])
    # every other convolution is copied unchanged
    for index in (2, 5, 14, 21, 28):
        assert torch.equal(reduced[f"{index}.weight"], vgg16_state[f"features.{index}.weight"])
        assert torch.equal(reduced[f"{index}.bias"], vgg16_state[f"features.{index}.bias"])


def test_folded_conv1_1_computes_the_original_on_ssd_input(vgg16_state, reduced):
    image = torch.randint(0, 256, (2, 3, 24, 32), generator=torch.Generator().manual_seed(2)).float()
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torchvision_input = (image / 255 - imagenet_mean) / imagenet_std
    ssd_input = image - torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)

    original = F.conv2d(
        torchvision_input, vgg16_state["features.0.weight"], vgg16_state["features.0.bias"], padding=1
    )
    folded = F.conv2d(ssd_input, reduced["0.weight"], reduced["0.bias"], padding=1)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    # Each output sums 27 products (and the bias) whose |terms| sum to at most S; each side's
    # sum rounds as in `reduction`, and the terms differ by the normalisation's 3 roundings
    # and the folded weight's one: <= 4 roundings of each term, relative
    weight, bias = vgg16_state["features.0.weight"], vgg16_state["features.0.bias"]
    s = (
        (F.conv2d(torchvision_input.abs(), weight.abs(), padding=1) + bias.abs().view(1, -1, 1, 1))
        .max()
        .item()
    )
    tol = 2 * reduction(27, s) + rounding(s, ops=4)
    torch.testing.assert_close(folded[inner], original[inner], atol=tol, rtol=0)
    # on the border, zero padding stands for ImageNet's mean colour in one and SSD's in the other
    assert (folded[:, :, 0, :] - original[:, :, 0, :]).abs().max() > 100 * tol


def test_load_backbone_from_torchvision_layout_and_file(vgg16_state, reduced, tmp_path):
    torch.manual_seed(3)
    model = singleshot.build_model("ssd300_voc")
    extras_before = model.extras[0].reduce.weight.clone()
    with torch.no_grad():
        model.backbone.l2norm.weight.fill_(20.0)
    weights.load_vgg16_backbone(model, vgg16_state)
    params = dict(model.named_parameters())
    assert torch.equal(params["backbone.to_conv4_3.conv1_1.weight"], reduced["0.weight"])
    assert torch.equal(params["backbone.to_conv4_3.conv4_3.bias"], reduced["21.bias"])
    assert torch.equal(params["backbone.to_conv7.conv5_3.weight"], reduced["28.weight"])
    assert torch.equal(params["backbone.to_conv7.conv6.weight"], reduced["31.weight"])
    assert torch.equal(params["backbone.to_conv7.conv7.bias"], reduced["33.bias"])
    assert torch.equal(model.backbone.l2norm.weight, torch.full((512,), 20.0))
    assert torch.equal(model.extras[0].reduce.weight, extras_before)

    # ssd.pytorch's vgg16_reducedfc.pth layout, from a file, with a DataParallel prefix
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save({f"module.{k}": v for k, v in reduced.items()}, path)
    other = singleshot.build_model("ssd512_voc")
    weights.load_vgg16_backbone(other, path)
    assert torch.equal(dict(other.named_parameters())["backbone.to_conv7.conv6.bias"], reduced["31.bias"])


def test_load_backbone_errors(reduced, tmp_path):
    model = singleshot.build_model("ssd300_voc")
    bad = dict(reduced)
    bad["21.weight"] = torch.zeros(512, 256, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(
        ValueError, match=r"bad\.pth: 21\.weight has shape \(512, 256, 3, 3\), expected \(512, 512, 3, 3\)"
    ):
        weights.load_vgg16_backbone(model, path)
    missing = {k: v for k, v in reduced.items() if k != "33.bias"}
    with pytest.raises(ValueError, match="missing 33.bias"):
        weights.load_vgg16_backbone(model, missing)
    with pytest.raises(ValueError, match="neither a vgg16_reducedfc.pth layout"):
        weights.load_vgg16_backbone(model, {"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="without a VGG16 backbone"):
        weights.load_vgg16_backbone(singleshot.build_model("ssd160_compact"), reduced)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a weights file")
    with pytest.raises(ValueError, match="garbage.pth: not a PyTorch file"):
        weights.load_vgg16_backbone(model, garbage)


def test_reduce_refuses_empty_classifier(vgg16_state):
    # torchvision's IMAGENET1K_FEATURES weights ship NaN fc layers
    state = dict(vgg16_state)
    state["classifier.0.weight"] = torch.full_like(state["classifier.0.weight"], float("nan"))
    with pytest.raises(ValueError, match="IMAGENET1K_FEATURES"):
        weights.reduce_vgg16(state)
    with pytest.raises(ValueError, match="missing classifier.3.weight"):
        weights.reduce_vgg16({k: v for k, v in vgg16_state.items() if k != "classifier.3.weight"})
