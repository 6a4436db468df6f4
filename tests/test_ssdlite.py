"""SSDLite320 (MobileNetV3-Large): torchvision's architecture, default boxes and detections."""

import copy
import math

import pytest
import torch
from torch import nn

import singleshot
from singleshot import weights
from singleshot.boxes import cxcywh_to_xyxy
from singleshot.inference import preprocess
from singleshot.models.ssdlite import MobileNetV3Backbone, SSDLiteExtras, SSDLiteHead
from tolerances import rounding


def give_signal_(model, seed=0):
    """Weights that carry a signal through the depth (He-scaled convolutions, BatchNorm with
    non-trivial statistics), then heads scaled so that scores spread over many classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        for heads, factor in ((model.head.classification_head, 0.15), (model.head.regression_head, 0.1)):
            for block in heads.module_list:
                block[1].weight.mul_(factor)
    return model


@pytest.fixture(scope="module")
def torchvision_ssdlite():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    return give_signal_(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [
        torch.randint(0, 256, (3, 320, 320), dtype=torch.uint8, generator=g),  # no resize
        torch.randint(0, 256, (3, 240, 400), dtype=torch.uint8, generator=g),  # resized to 320
    ]


def test_presets_layout_and_torchvision_parameter_count():
    assert {"ssdlite320_coco", "ssdlite320_voc"} <= set(singleshot.available_models())
    coco, voc = singleshot.build_model("ssdlite320_coco"), singleshot.build_model("ssdlite320_voc")
    assert (coco.num_classes, voc.num_classes) == (81, 21)
    assert coco.image_mean == coco.image_std == (127.5, 127.5, 127.5)
    post = voc.postprocess
    assert (post.score_threshold, post.nms_threshold, post.pre_nms_top_k, post.max_detections, post.clip) == (
        0.001, 0.55, 300, 300, True,
    )  # fmt: skip
    assert isinstance(voc.backbone, MobileNetV3Backbone) and voc.backbone.reduced_tail
    assert isinstance(voc.extras, SSDLiteExtras) and isinstance(voc.head, SSDLiteHead)
    assert voc.backbone.out_channels == (672, 480) and [b.out_channels for b in voc.extras] == [
        512,
        256,
        256,
        128,
    ]
    assert voc.priors.shape == (3234, 4) and voc.prior_config.clip == "size"
    torchvision_layout = singleshot.build_model("ssdlite320_coco", num_classes=91)
    assert sum(p.numel() for p in torchvision_layout.parameters()) == 3_440_060  # torchvision's num_params
    with torch.no_grad():
        loc, conf = voc.eval()(torch.zeros(2, 3, 320, 320))
    assert loc.shape == (2, 3234, 4) and conf.shape == (2, 3234, 21)


def test_initialisation_is_torchvisions_scheme():
    torch.manual_seed(0)
    model = singleshot.build_model("ssdlite320_voc")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    weights_ = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights_.std().item() - 0.03) < 0.001 and abs(weights_.mean().item()) < 0.001
    assert all(c.bias is None or not c.bias.any() for c in convs)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.eps, m.momentum) == (0.001, 0.03) for m in norms)
    assert all(m.weight.eq(1).all() and not m.bias.any() and not m.running_mean.any() for m in norms)
    relu6 = [m for m in (*model.extras.modules(), *model.head.modules()) if isinstance(m, nn.ReLU6)]
    assert len(relu6) == 4 * 3 + 12  # three per extra block, one per predictor


def test_priors_equal_torchvisions_default_boxes(torchvision_ssdlite):
    model = singleshot.build_model("ssdlite320_coco", num_classes=91)
    generator = torchvision_ssdlite.anchor_generator
    grids = [[f, f] for f in model.prior_config.feature_maps]
    theirs = generator._grid_default_boxes(grids, [320, 320], dtype=torch.float32)  # cxcywh fractions
    assert theirs.shape == model.priors.shape
    # ours in float64 rounded once; theirs: the scales and centres rounded to float32 (<= 2 roundings)
    torch.testing.assert_close(model.priors, theirs, atol=rounding(1.0, ops=2), rtol=0)
    assert model.priors[:, 2:].max() == 1.0  # 0.95 * sqrt(3) clamped, as torchvision's clip=True
    # and as torchvision hands them to its decoder: xyxy pixels of the 320 x 320 input
    from torchvision.models.detection.image_list import ImageList

    x = torch.zeros(1, 3, 320, 320)
    features = [torch.zeros(1, 1, f, f) for f in model.prior_config.feature_maps]
    anchors = generator(ImageList(x, [(320, 320)]), features)[0]
    torch.testing.assert_close(cxcywh_to_xyxy(model.priors) * 320, anchors, atol=rounding(480, ops=6), rtol=0)


def test_postprocess_defaults_are_torchvisions(torchvision_ssdlite):
    tv, post = torchvision_ssdlite, singleshot.build_model("ssdlite320_voc").postprocess
    assert (tv.score_thresh, tv.nms_thresh, tv.topk_candidates, tv.detections_per_img) == (
        post.score_threshold, post.nms_threshold, post.pre_nms_top_k, post.max_detections,
    )  # fmt: skip
    assert (
        [255 * m for m in tv.transform.image_mean] == [127.5] * 3 == [255 * s for s in tv.transform.image_std]
    )


def test_convert_recognises_ssdlite_and_round_trips(torchvision_ssdlite):
    state = torchvision_ssdlite.state_dict()
    ours = weights.convert(state, "torchvision")
    assert "head.conf.5.predict.bias" in ours and "backbone.features.13.block.0.0.weight" in ours
    assert weights.infer_model_args(ours, "torchvision") == {
        "preset": "ssdlite320_coco", "num_classes": 91, "prior_clip": "size", "dataset": "coco",
    }  # fmt: skip
    back = weights.to_source(ours, "torchvision")
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)
    model = singleshot.build_model("ssdlite320_coco", num_classes=91)
    model.load_state_dict(ours, strict=True)
    with pytest.raises(ValueError, match="not in the torchvision SSDLite layout.*backbone.extra.9.3"):
        weights.convert({**state, "backbone.extra.9.3.weight": torch.zeros(1)}, "torchvision")
    with pytest.raises(ValueError, match="SSDLite head with 7 filters"):
        weights.infer_model_args({"head.conf.0.predict.bias": torch.zeros(7)}, "torchvision")


@pytest.fixture(scope="module")
def converted(torchvision_ssdlite):
    return weights.convert_model(torchvision_ssdlite.state_dict(), "torchvision")


def test_converted_model_computes_torchvisions_head_outputs(torchvision_ssdlite, converted):
    assert (converted.preset, converted.num_classes, converted.class_names[1]) == (
        "ssdlite320_coco",
        91,
        "person",
    )
    x = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    exact = copy.deepcopy(torchvision_ssdlite).double()
    with torch.no_grad():
        head = torchvision_ssdlite.head(list(torchvision_ssdlite.backbone(x).values()))
        head64 = exact.head(list(exact.backbone(x.double()).values()))
        converted.channels_last = False
        same_layout = converted(x)
        converted.channels_last = True
        channels_last = converted(x)
    for k, key in enumerate(("bbox_regression", "cls_logits")):
        theirs = head[key]
        assert theirs.std() > 0.3  # a signal, not the near-zero initial heads
        # the same modules and kernels on the same memory layout: the same bits
        assert torch.equal(same_layout[k], theirs)
        # channels-last kernels sum in other orders: within twice torchvision's own float32
        # error (against float64), which this deep, He-scaled network makes ~1e-2
        own_error = (theirs.double() - head64[key]).abs().max().item()
        torch.testing.assert_close(channels_last[k], theirs, atol=2 * own_error, rtol=0)


def threshold_in_a_gap(results, low_rank=100, high_rank=250):
    """A score threshold mid-way in the widest gap between the ranks ``low_rank`` and
    ``high_rank`` of every image's scores: no cap binds and no score sits near it."""
    best = None
    for scores in (r["scores"] for r in results):
        window = scores[low_rank:high_rank]
        gaps = window[:-1] - window[1:]
        k = int(gaps.argmax())
        if best is None or gaps[k] > best[0]:
            best = (float(gaps[k]), float(window[k] + window[k + 1]) / 2)
    assert best[0] > 1e-4
    return best[1]


def assert_same_detections(got, ref, box_tol, score_tol):
    """The same detections (label, box, score within the tolerances), one to one; their order
    may differ only among scores tied within ``score_tol``. Returns the largest differences."""
    assert len(got["scores"]) == len(ref["scores"]) > 50
    used = torch.zeros(len(got["scores"]), dtype=torch.bool)
    worst_box = worst_score = 0.0
    for i in range(len(ref["scores"])):
        score_diff = (got["scores"] - ref["scores"][i]).abs()
        box_diff = (got["boxes"] - ref["boxes"][i]).abs().amax(dim=1)
        fits = ~used & (got["labels"] == ref["labels"][i]) & (score_diff <= score_tol) & (box_diff <= box_tol)
        assert fits.any(), f"torchvision's detection {i} has no counterpart"
        j = int(torch.where(fits, score_diff, torch.inf).argmin())
        assert abs(j - i) <= 5  # reordered among near-ties only
        used[j] = True
        worst_box, worst_score = max(worst_box, float(box_diff[j])), max(worst_score, float(score_diff[j]))
    return worst_box, worst_score


def test_converted_model_gives_torchvisions_detections(torchvision_ssdlite, converted, images):
    """End to end: uint8 images -> torchvision (normalise, resize to 320 bilinear without
    antialias, network, decode, clip, per-class top 300, NMS 0.55, 300 detections, boxes scaled
    back) and ours through `predict` (resize with the same bilinear rule, then normalise: the
    same affine map, as the bilinear weights sum to 1)."""
    tv = torchvision_ssdlite
    with torch.no_grad():
        everything = tv([image.float() / 255 for image in images])
    threshold = threshold_in_a_gap(everything)
    tv.score_thresh = threshold
    try:
        with torch.no_grad():
            reference = tv([image.float() / 255 for image in images])
    finally:
        tv.score_thresh = 0.001
    ours = converted.predict(images, score_threshold=threshold)
    for got, ref in zip(ours, reference):
        assert got["labels"].unique().numel() > 10  # detections differ across classes
        # the bounds: boxes within 0.05 px, scores within 1e-4 (measured: 2.8e-3 px, 2.0e-5)
        assert_same_detections(got, ref, box_tol=0.05, score_tol=1e-4)


def test_preprocessing_matches_torchvisions_transform(torchvision_ssdlite, images):
    seen = {}
    hook = torchvision_ssdlite.backbone.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            torchvision_ssdlite([image.float() / 255 for image in images])
    finally:
        hook.remove()
    x = preprocess(images, 320, (127.5,) * 3, std=(127.5,) * 3)
    # normalise-then-resize vs resize-then-normalise: the same affine map, each side's
    # roundings (the /255, the normalisation, 7 in the bilinear weights) at values <= 1 (2 once resized)
    torch.testing.assert_close(x[0], seen["x"][0], atol=rounding(1.0, ops=12), rtol=0)
    torch.testing.assert_close(x[1], seen["x"][1], atol=rounding(2.0, ops=12), rtol=0)
