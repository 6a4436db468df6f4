"""ssd.pytorch and torchvision SSD weights -> singleshot: same outputs, anchors and detections."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import singleshot
from ci import require
from singleshot import weights
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.inference import preprocess
from singleshot.postprocess import detect
from tolerances import network, rounding


class SSDPyTorchLayout(nn.Module):
    """SSD300 written out the way ssd.pytorch's ssd.py builds it (its module names and forward)."""

    def __init__(self, num_classes):
        super().__init__()
        layers, cin = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
            if v in ("M", "C"):
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        layers += [
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
        ]
        self.vgg = nn.ModuleList(layers)
        self.L2Norm = nn.Module()
        self.L2Norm.weight = nn.Parameter(torch.full((512,), 20.0))
        self.extras = nn.ModuleList([
            nn.Conv2d(1024, 256, 1), nn.Conv2d(256, 512, 3, stride=2, padding=1),
            nn.Conv2d(512, 128, 1), nn.Conv2d(128, 256, 3, stride=2, padding=1),
            nn.Conv2d(256, 128, 1), nn.Conv2d(128, 256, 3),
            nn.Conv2d(256, 128, 1), nn.Conv2d(128, 256, 3),
        ])  # fmt: skip
        channels, boxes = [512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4]
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(channels, boxes))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(channels, boxes)
        )
        self.num_classes = num_classes

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        sources.append(self.L2Norm.weight.view(1, -1, 1, 1) * (x / norm))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat(
            [head(s).permute(0, 2, 3, 1).reshape(x.shape[0], -1) for head, s in zip(self.loc, sources)], 1
        )
        conf = torch.cat(
            [head(s).permute(0, 2, 3, 1).reshape(x.shape[0], -1) for head, s in zip(self.conf, sources)], 1
        )
        return loc.view(x.shape[0], -1, 4), conf.view(x.shape[0], -1, self.num_classes)


def tame_(conv_list, factor=0.01, background_bias=None, num_classes=None):
    """Shrink random head weights so scores spread out instead of saturating at 0 or 1."""
    with torch.no_grad():
        for conv in conv_list:
            conv.weight.mul_(factor)
            if background_bias is not None:
                conv.bias.view(-1, num_classes)[:, 0] += background_bias


@pytest.fixture(scope="module")
def torchvision_ssd():
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    tame_(model.head.classification_head.module_list, 0.5, 7.0, 91)
    return model


@pytest.fixture(scope="module")
def torchvision_run(torchvision_ssd):
    """One torchvision forward on two images (its input, head outputs, anchors and detections
    captured with hooks) and the converted model's outputs on the same input tensor."""
    tv = torchvision_ssd
    g = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8, generator=g),
    ]
    seen = {}
    hooks = [
        tv.backbone.register_forward_hook(lambda m, args, out: seen.update(x=args[0])),
        tv.head.register_forward_hook(lambda m, args, out: seen.update(head=out)),
        tv.anchor_generator.register_forward_hook(lambda m, args, out: seen.update(anchors=out)),
    ]
    try:
        with torch.no_grad():
            detections = tv([image.float() / 255 for image in images])
    finally:
        for hook in hooks:
            hook.remove()
    model = weights.convert_model(tv.state_dict(), "torchvision")
    with torch.no_grad():
        loc, conf = model(seen["x"])
    return dict(images=images, model=model, detections=detections, loc=loc, conf=conf, **seen)


def test_torchvision_head_outputs_and_anchors_match(torchvision_run):
    run = torchvision_run
    model = run["model"]
    assert (model.preset, model.num_classes, model.prior_config.clip) == ("ssd300_coco", 91, "size")
    assert model.class_names[1] == "person" and model.class_names[12] == "N/A"
    # the same network, built from other modules (L2Norm, the heads' reshapes)
    for ours, theirs in (
        (run["loc"], run["head"]["bbox_regression"]),
        (run["conf"], run["head"]["cls_logits"]),
    ):
        torch.testing.assert_close(ours, theirs, atol=network(model, theirs.abs().max().item()), rtol=0)
    assert run["anchors"][0].shape == (8732, 4)
    # ours: float64 rounded once, the corners, x 300; torchvision's in float32: <= 8
    # roundings at <= 420 (sizes up to 1.4 of the image) between them
    anchors = cxcywh_to_xyxy(model.priors) * 300
    torch.testing.assert_close(anchors, run["anchors"][0], atol=rounding(420, ops=8), rtol=0)


def test_torchvision_preprocessing_matches(torchvision_run, torchvision_ssd):
    # torchvision normalises then resizes; predict resizes then subtracts the mean: the same
    # linear map up to float rounding (the normalisation's 3 roundings, the same bilinear
    # weights' 7 on either side, at <= 255) and up to the means: torchvision's are rounded
    # to 5 decimals (0.45882 * 255 = 116.9991, not 117), a known offset of <= 9.2e-4.
    model = torchvision_run["model"]
    x = preprocess(torchvision_run["images"], 300, model.image_mean)
    theirs = 255 * torch.tensor(torchvision_ssd.transform.image_mean, dtype=torch.float64)
    offset = (theirs - torch.tensor(model.image_mean, dtype=torch.float64)).abs().max().item()
    assert offset < 1e-3  # the rounding of their constants, nothing more
    torch.testing.assert_close(x, torchvision_run["x"], atol=offset + rounding(255, ops=17), rtol=0)


def test_torchvision_detections_reproduced(torchvision_run):
    run = torchvision_run
    scores = run["conf"].softmax(-1)
    ours = detect(
        run["loc"], scores, run["model"].priors, 0.01, 0.45, pre_nms_top_k=400, max_detections=200, clip=True
    )
    for image, det, ref in zip(run["images"], ours, run["detections"]):
        assert len(ref["scores"]) > 20  # enough detections for the comparison to mean something
        assert det["labels"].tolist() == ref["labels"].tolist()
        # softmax moves by <= 1/2 the logits' change (the conf comparison above); a loc
        # change moves a box by <= 0.2 of the prior's size (< 1) times the image's side,
        # plus the two decodes' rounding (<= 8 roundings at <= 320 px)
        score_tol = network(run["model"], run["conf"].abs().max().item())
        torch.testing.assert_close(det["scores"], ref["scores"], atol=score_tol, rtol=0)
        height, width = image.shape[-2:]
        scale = torch.tensor([width, height, width, height])
        box_tol = 0.2 * max(height, width) * network(run["model"], run["loc"].abs().max().item())
        box_tol += rounding(max(height, width), ops=8)
        torch.testing.assert_close(det["boxes"] * scale, ref["boxes"], atol=box_tol, rtol=0)


def test_torchvision_round_trip_and_bad_keys(torchvision_ssd):
    state = torchvision_ssd.state_dict()
    ours = weights.convert(state, "torchvision")
    model = singleshot.build_model("ssd300_coco", num_classes=91)
    model.load_state_dict(ours, strict=True)
    back = weights.to_source(ours, "torchvision")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)

    with pytest.raises(ValueError, match="unexpected keys backbone.body.conv1.weight"):
        weights.convert({"backbone.body.conv1.weight": torch.zeros(1)}, "torchvision")
    with pytest.raises(ValueError, match="unknown weights source"):
        weights.convert(state, "caffe")


def test_ssd_pytorch_outputs_match():
    torch.manual_seed(21)
    reference = SSDPyTorchLayout(21).eval()
    tame_(reference.conf, 0.01)
    with torch.no_grad():
        reference.L2Norm.weight.uniform_(10, 30)  # not the init value, so the map is exercised
    # checkpoints saved from DataParallel carry a "module." prefix
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    model = weights.convert_model(state, "ssd.pytorch")
    assert (model.preset, model.num_classes, model.prior_config.clip) == ("ssd300_voc", 21, "center")
    assert model.class_names[:3] == ["__background__", "aeroplane", "bicycle"]
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        ref_loc, ref_conf = reference(x)
        loc, conf = model(x)
    torch.testing.assert_close(loc, ref_loc, atol=network(model, ref_loc.abs().max().item()), rtol=0)
    torch.testing.assert_close(conf, ref_conf, atol=network(model, ref_conf.abs().max().item()), rtol=0)


def test_ssd_pytorch_coco_layout_is_recognised():
    # ssd.pytorch picks its "coco" boxes for any class count but 21
    state = weights.to_source(singleshot.build_model("ssd300_coco").state_dict(), "ssd.pytorch")
    args = weights.infer_model_args(weights.convert(state, "ssd.pytorch"), "ssd.pytorch")
    assert (args["preset"], args["num_classes"]) == ("ssd300_coco", 81)
    model = weights.convert_model(state, "ssd.pytorch")
    assert model.class_names[1:3] == ["person", "bicycle"] and len(model.class_names) == 81
    assert model.prior_config == singleshot.build_model("ssd300_coco").prior_config


def test_ssd_pytorch_round_trip():
    torch.manual_seed(5)
    model = singleshot.build_model("ssd300_voc")
    original = model.state_dict()
    theirs = weights.to_source(original, "ssd.pytorch")
    assert theirs.keys() == SSDPyTorchLayout(21).state_dict().keys()
    assert torch.equal(theirs["vgg.31.weight"], original["backbone.to_conv7.conv6.weight"])
    assert torch.equal(theirs["extras.5.weight"], original["extras.2.conv.weight"])
    assert torch.equal(theirs["L2Norm.weight"], original["backbone.l2norm.weight"])
    again = weights.convert(theirs, "ssd.pytorch")
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_ssd_pytorch_errors():
    state = weights.to_source(singleshot.build_model("ssd300_voc").state_dict(), "ssd.pytorch")
    with pytest.raises(ValueError, match="unexpected keys vgg.1.weight"):
        weights.convert({**state, "vgg.1.weight": torch.zeros(1)}, "ssd.pytorch")
    bad = dict(state)
    bad["conf.0.weight"] = torch.zeros(4 * 21, 256, 3, 3)  # wrong input channels
    with pytest.raises(ValueError, match="do not fit preset 'ssd300_voc'"):
        weights.convert_model(bad, "ssd.pytorch")
    with pytest.raises(ValueError, match="3 class names"):
        weights.convert_model(state, "ssd.pytorch", class_names=["__background__", "a", "b"])


def test_weights_saved_inside_a_training_checkpoint_are_found(tmp_path):
    # Training scripts save {"state_dict": ...} or {"model": ...} beside their own state.
    state = {"vgg.0.weight": torch.arange(6.0).view(2, 3), "vgg.0.bias": torch.ones(2)}
    for key in ("state_dict", "model"):
        torch.save({key: state, "epoch": 12, "optimizer": {"lr": 0.1}}, tmp_path / f"{key}.pth")
        read = weights.read_state_dict(tmp_path / f"{key}.pth")
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    torch.save({"epoch": 12, "model": {"layers": 3}}, tmp_path / "no_weights.pth")
    with pytest.raises(ValueError, match=r"no_weights\.pth: expected a state dict"):
        weights.read_state_dict(tmp_path / "no_weights.pth")
    with pytest.raises(ValueError, match=r"absent\.pth: no such file"):
        weights.read_state_dict(tmp_path / "absent.pth")


def test_damaged_safetensors_and_archives_without_checksums(tmp_path):
    require(importlib.util.find_spec("safetensors") is not None, "safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ValueError, match=r"broken\.safetensors: not a readable safetensors file"):
        weights.read_state_dict(tmp_path / "broken.safetensors")
    # torch.save can write archives without CRC-32s (0 in the zip): they load, unchecked
    state = {"w": torch.arange(4.0)}
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, tmp_path / "no_crc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(weights.read_state_dict(tmp_path / "no_crc.pt")["w"], state["w"])
