import pytest
import torch
from PIL import Image

import singleshot
from singleshot.models.vgg import VGG16_LAYERS
from tolerances import rounding


def conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def expected_vgg_ssd_params(extras, boxes_per_location, num_classes):
    """Parameter count worked out from the paper's layer list, independent of the model code."""
    total = sum(conv_params(cin, cout, 3) for layer in VGG16_LAYERS if not isinstance(layer, str)
                for _, cin, cout in [layer])  # fmt: skip
    total += conv_params(512, 1024, 3) + conv_params(1024, 1024, 1) + 512  # conv6, conv7, L2Norm scale
    sources, cin = [512, 1024], 1024
    for mid, cout, k in extras:
        total += conv_params(cin, mid, 1) + conv_params(mid, cout, k)
        sources.append(cout)
        cin = cout
    for c, a in zip(sources, boxes_per_location):
        total += conv_params(c, a * 4, 3) + conv_params(c, a * num_classes, 3)
    return total


SSD300_EXTRAS = [(256, 512, 3), (128, 256, 3), (128, 256, 3), (128, 256, 3)]
SSD512_EXTRAS = [(256, 512, 3), (128, 256, 3), (128, 256, 3), (128, 256, 3), (128, 256, 4)]


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_available_models_lists_the_presets():
    names = singleshot.available_models()
    assert {"ssd300_voc", "ssd300_coco", "ssd512_voc", "ssd512_coco"} <= set(names)
    with pytest.raises(ValueError, match="unknown model"):
        singleshot.build_model("ssd999")


def test_ssd300_shapes_and_parameter_count():
    model = singleshot.build_model("ssd300_voc").eval()
    assert count(model) == 26_285_486
    assert count(model) == expected_vgg_ssd_params(SSD300_EXTRAS, (4, 6, 6, 6, 4, 4), 21)
    with torch.no_grad():
        x = torch.randn(2, 3, 300, 300)
        sources = model.sources(x)
        loc, conf = model(x)
    assert [s.shape[-1] for s in sources] == [38, 19, 10, 5, 3, 1]
    assert [s.shape[1] for s in sources] == [512, 1024, 512, 256, 256, 256]
    assert loc.shape == (2, 8732, 4) and conf.shape == (2, 8732, 21)
    # the same output types in train mode
    model.train()
    with torch.no_grad():
        loc_train, conf_train = model(x)
    assert loc_train.shape == loc.shape and conf_train.shape == conf.shape


def test_ssd512_shapes_and_parameter_count():
    # SSD512 VOC: 27,188,676 = SSD300's 26,285,486 + 903,190: the fifth extra block (1x1 256->128,
    # 4x4 128->256: 557,440) + heads for a seventh level (4 boxes x 57,625 = 230,500) + six boxes
    # instead of four at the fifth level (2 x 57,625 = 115,250); 57,625 = (4 + 21) x (256 x 9 + 1).
    model = singleshot.build_model("ssd512_voc").eval()
    assert count(model) == 27_188_676
    assert count(model) == expected_vgg_ssd_params(SSD512_EXTRAS, (4, 6, 6, 6, 6, 4, 4), 21)
    with torch.no_grad():
        sources = model.sources(torch.randn(1, 3, 512, 512))
    assert [s.shape[-1] for s in sources] == [64, 32, 16, 8, 4, 2, 1]
    assert model.priors.shape == (24564, 4)


def test_class_counts_and_torchvision_layout():
    assert singleshot.build_model("ssd300_coco").num_classes == 81
    assert singleshot.build_model("ssd512_coco").head.conf[0].out_channels == 4 * 81
    model = singleshot.build_model("ssd300_coco", num_classes=91, prior_clip="size")
    assert model.head.conf[1].out_channels == 6 * 91
    assert model.prior_config.clip == "size"
    with pytest.raises(ValueError, match="prior_clip"):
        singleshot.build_model("ssd300_voc", prior_clip="corner")


def test_initialisation_follows_the_paper():
    model = singleshot.build_model("ssd300_voc")
    assert torch.equal(model.backbone.l2norm.weight, torch.full((512,), 20.0))
    for conv in list(model.head.loc) + list(model.head.conf) + [b.conv for b in model.extras]:
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound  # uniform over the whole range
        assert torch.count_nonzero(conv.bias) == 0
    assert model.image_mean == (123.0, 117.0, 104.0)


def test_l2norm_normalises_each_position():
    from singleshot.models.vgg import L2Norm

    norm = L2Norm(8, scale=3.0)
    x = torch.randn(2, 8, 5, 5)
    out = norm(x)
    # A norm of 8 values: 8 squares and 7 sums (<= 8 EPS/2 relative, worst case), halved by
    # the sqrt: <= 2.5 EPS. Two norms, a division and the scale: <= 6 EPS relative
    torch.testing.assert_close(out.norm(dim=1), torch.full((2, 5, 5), 3.0), atol=rounding(3.0, ops=8), rtol=0)
    torch.testing.assert_close(
        out / out.norm(dim=1, keepdim=True),
        x / x.norm(dim=1, keepdim=True),
        atol=rounding(1.0, ops=8),
        rtol=0,
    )


def one_box_model():
    """A compact model whose only confident prediction is class 1 at the last level's first box."""
    model = singleshot.build_model("ssd160_compact", num_classes=3).eval()
    with torch.no_grad():
        for conv in list(model.head.loc) + list(model.head.conf):
            conv.weight.zero_()
            conv.bias.zero_()
        model.head.conf[-1].bias[1] = 10.0  # anchor 0, class 1
    return model


def test_predict_returns_boxes_in_original_pixels_for_every_input_kind(tmp_path):
    model = one_box_model()
    prior = model.priors[-4]  # first box of the last (1x1) level
    image = torch.randint(0, 256, (3, 200, 400), dtype=torch.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    pil = Image.open(path)
    results = [model.predict(x, score_threshold=0.5) for x in (image, pil, path, str(path))]
    results.append(model.predict([image, path], score_threshold=0.5)[1:])
    cx, cy, w, h = prior.tolist()
    expected = torch.tensor(
        [[(cx - w / 2) * 400, (cy - h / 2) * 200, (cx + w / 2) * 400, (cy + h / 2) * 200]]
    )
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 400)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 200)
    for result in results:
        assert isinstance(result, list) and len(result) == 1
        det = result[0]
        assert det["labels"].tolist() == [1]
        # decode of a zero offset is exact up to cx - w / 2 (one rounding at <= 1), then x 400
        # or x 200; the float64 expectation rounds once to float32: 3 roundings at <= 400
        torch.testing.assert_close(det["boxes"], expected, atol=rounding(400, ops=3), rtol=0)
        assert det["scores"].item() > 0.99


def test_predict_rejects_float_images_and_keeps_train_mode():
    model = one_box_model().train()
    with pytest.raises(ValueError, match="uint8"):
        model.predict(torch.rand(3, 50, 50))
    model.predict(torch.zeros(3, 50, 60, dtype=torch.uint8))
    assert model.training
