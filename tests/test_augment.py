import colorsys

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.ops import box_iou

from singleshot.data.augment import AugmentPlan, EvalTransform, SSDAugmentation, render, transform_boxes
from singleshot.data.geometric import (
    CROP_OPTIONS,
    Crop,
    Expansion,
    sample_crop,
    sample_expansion,
    visible_region,
)
from singleshot.data.photometric import (
    PhotometricParams,
    adjust_brightness_,
    adjust_contrast_,
    adjust_saturation_hue,
    apply_photometric,
    sample_photometric,
)
from singleshot.inference import preprocess
from tolerances import rounding

MEAN = (123.0, 117.0, 104.0)
NO_COLOUR = PhotometricParams()

# HSV arithmetic on the 0-255 scale: the hue, in sextants (magnitude <= 12 once the
# shift is added), passes through ~10 float32 roundings, <= 60 EPS/2 absolute summed
# worst case; times the chroma (<= 255), the final V - weight * chroma and the colorsys
# reference's own rounding to float32: <= 62 EPS/2 * 255.
HSV_TOL = rounding(255, ops=32)
# A box fraction offset + x * scale: offset and scale rounded to float32, then the product
# and the sum, each of magnitude <= 1 / 0.3 < 4 (a crop is at least 0.3 of the canvas),
# and the mirror's 1 - x: <= 5 roundings at magnitude 4.
BOX_TOL = rounding(4, ops=5)


def random_image(height, width, seed, high=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (3, height, width), generator=g, dtype=torch.uint8)


def random_boxes(n, width, height, g):
    """n boxes xyxy pixels inside a width x height image, at least 2 px each side."""
    x = torch.rand(n, 2, generator=g) * (width - 2)
    y = torch.rand(n, 2, generator=g) * (height - 2)
    # (elementwise min/max: tiny reductions can stall for milliseconds on a busy machine)
    x1 = torch.minimum(x[:, 0], x[:, 1])
    y1 = torch.minimum(y[:, 0], y[:, 1])
    x2 = torch.maximum(torch.maximum(x[:, 0], x[:, 1]), x1 + 2)
    y2 = torch.maximum(torch.maximum(y[:, 0], y[:, 1]), y1 + 2)
    return torch.stack([x1, y1, x2, y2], 1)


def make_target(boxes, image_id="img"):
    n = len(boxes)
    return {
        "boxes": boxes,
        "labels": torch.arange(1, n + 1, dtype=torch.int64),  # distinct: identifies each object
        "difficult": torch.arange(n) % 2 == 0,
        "truncated": torch.arange(n) % 3 == 0,
        "image_id": image_id,
        "size": torch.tensor([0, 0]),
    }


def hsv_reference(image, saturation, hue):
    """colorsys, pixel by pixel: S * saturation clipped at 1, H + hue degrees."""
    out = torch.empty_like(image)
    for i in range(image.shape[1]):
        for j in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*(image[:, i, j] / 255).tolist())
            rgb = colorsys.hsv_to_rgb((h + hue / 360) % 1.0, min(s * saturation, 1.0), v)
            out[:, i, j] = torch.tensor(rgb) * 255
    return out


# ---------------------------------------------------------------- photometric


@pytest.mark.parametrize(
    "saturation, hue", [(1.4, 0.0), (0.5, 0.0), (1.5, 17.0), (1.0, -18.0), (0.7, 3.0), (1.0, 18.0)]
)
def test_saturation_hue_equal_colorsys(saturation, hue):
    image = random_image(12, 12, seed=3).float()
    image[:, 0, :4] = 90.0  # grey pixels
    image[0, 1, :4] = image[1, 1, :4]  # ties between the maximum channels
    image[2, 2, :4] = image[1, 2, :4]
    image[:, 3, :3] = torch.tensor([[255.0], [0.0], [0.0]])  # pure red: saturation clips at 1
    expected = hsv_reference(image, saturation, hue)
    torch.testing.assert_close(adjust_saturation_hue(image, saturation, hue), expected, atol=HSV_TOL, rtol=0)
    in_place = image.clone()
    assert adjust_saturation_hue(in_place, saturation, hue, out=in_place) is in_place
    torch.testing.assert_close(in_place, expected, atol=HSV_TOL, rtol=0)


def test_brightness_and_contrast_saturate():
    image = torch.tensor([[[0.0, 100.0, 250.0]]]).expand(3, 1, 3).clone()
    assert adjust_brightness_(image.clone(), 10.0)[0, 0].tolist() == [10.0, 110.0, 255.0]
    assert adjust_brightness_(image.clone(), -20.0)[0, 0].tolist() == [0.0, 80.0, 230.0]
    assert adjust_contrast_(image.clone(), 1.5)[0, 0].tolist() == [0.0, 150.0, 255.0]


def test_contrast_before_or_after_hsv_hand_computed():
    pixel = torch.tensor([200.0, 100.0, 0.0]).view(3, 1, 1)
    first = apply_photometric(pixel.clone(), PhotometricParams(contrast=1.5, saturation=0.5))
    # x1.5 -> (255 clipped, 150, 0); S halved at V = 255: c' = 255 - 0.5 (255 - c)
    # (every intermediate is a multiple of 1/2 below 2**24: exact in float32)
    assert first.flatten().tolist() == [255.0, 202.5, 127.5]
    last = apply_photometric(
        pixel.clone(), PhotometricParams(contrast=1.5, saturation=0.5, contrast_first=False)
    )
    # S halved at V = 200: (200, 150, 100); then x1.5 -> (255 clipped, 225, 150), all exact
    assert last.flatten().tolist() == [255.0, 225.0, 150.0]


def test_sample_photometric_ranges_and_probabilities():
    low = sample_photometric([0.0] * 9)
    assert (low.brightness, low.contrast, low.saturation, low.hue) == (-32.0, 0.5, 0.5, -18.0)
    assert low.contrast_first
    high = sample_photometric([0.75] * 9)
    assert high.identity and not high.contrast_first
    mid = sample_photometric([0.25, 1.0, 0.9, 0.25, 1.0, 0.25, 1.0, 0.25, 1.0])
    assert (mid.brightness, mid.contrast, mid.saturation, mid.hue) == (32.0, 1.5, 1.5, 18.0)
    with pytest.raises(ValueError):
        sample_photometric([0.0] * 4)


# ---------------------------------------------------------------- geometry


def test_sample_expansion_hand_computed():
    assert sample_expansion(100, 50, [0.5, 0.3, 0.3, 0.3]) == Expansion(100, 50, 0, 0)
    # ratio 1 + 3 * 0.5 = 2.5: canvas 250 x 125, offsets int(0.5 * 150), int(0.999 * 75)
    assert sample_expansion(100, 50, [0.2, 0.5, 0.5, 0.999]) == Expansion(250, 125, 75, 74)


def check_crop(crop, boxes, width, height):
    x0, y0, x1, y1 = crop.rect
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    if crop.option is None:
        assert crop.rect == (0, 0, width, height)
        assert crop.keep.all()
        return
    # width and height drawn in [0.3, 1] of the side, then corners floored
    assert x1 - x0 >= int(0.3 * width) - 1 and y1 - y0 >= int(0.3 * height) - 1
    # the drawn h / w lies in [1/2, 2] (the paper's aspect limit); flooring the corners moves each
    # side by less than a pixel, so the drawn w, h are within (W - 1, W + 1), (H - 1, H + 1)
    w, h = x1 - x0, y1 - y0
    assert (h + 1) / (w - 1) >= 0.5 and (h - 1) / (w + 1) <= 2.0, (w, h)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # empty boxes are never kept
    inside = (x0 < cx) & (cx < x1) & (y0 < cy) & (cy < y1) & usable
    assert torch.equal(crop.keep, inside)
    if len(boxes):
        assert inside.any()
        overlaps = box_iou(boxes[inside].double(), torch.tensor([crop.rect], dtype=torch.float64))
        assert max(overlaps.flatten().tolist()) >= crop.option


def test_crop_invariants_over_many_seeds():
    seen = set()
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        width, height = [(200, 150), (120, 240), (300, 300)][seed % 3]
        boxes = random_boxes(1 + seed % 4, width, height, g)
        crop = sample_crop(boxes, width, height, g)
        check_crop(crop, boxes, width, height)
        seen.add(crop.option)
    assert seen == set(CROP_OPTIONS)  # every option, 0.5 included, is reachable


def test_crop_iou_constraint_is_enforced():
    # A 10 x 10 object in a 500 x 500 image: a patch (at least 150 x 150) overlaps it with
    # IoU <= 100 / 22500, so no minimum-IoU option can ever be met; only the whole image
    # and the unconstrained patch may come out (ssd.pytorch's test never fires: it would
    # return any option).
    boxes = torch.tensor([[245.0, 245.0, 255.0, 255.0]])
    options = set()
    for seed in range(150):
        crop = sample_crop(boxes, 500, 500, torch.Generator().manual_seed(seed))
        check_crop(crop, boxes, 500, 500)
        options.add(crop.option)
    assert options == {None, 0.0}


def test_crop_without_objects():
    boxes = torch.zeros(0, 4)
    options = set()
    for seed in range(100):
        crop = sample_crop(boxes, 80, 60, torch.Generator().manual_seed(seed))
        check_crop(crop, boxes, 80, 60)
        assert crop.keep.shape == (0,)
        options.add(crop.option)
    assert options == set(CROP_OPTIONS)  # nothing to overlap: every option is met


def test_visible_region_hand_computed():
    expansion = Expansion(200, 100, 20, 10)  # a 100 x 50 image at (20, 10)
    source, dest = visible_region(100, 50, expansion, (0, 0, 200, 100), 100)
    assert source == (0, 0, 100, 50)
    assert dest == (10, 10, 60, 60)  # x scaled by 0.5, y by 1
    source, dest = visible_region(100, 50, expansion, (100, 0, 200, 50), 10)
    assert source == (80, 0, 100, 40) and dest == (0, 2, 2, 10)
    assert visible_region(100, 50, expansion, (0, 70, 50, 100), 10) is None


# ---------------------------------------------------------------- the pipeline


def paper_order_reference(image, plan, size, mean):
    """The paper's order, materialised: distort, expand onto a mean canvas, crop, flip,
    resize, subtract the mean."""
    x = apply_photometric(image.float(), plan.photometric)
    e = plan.expansion
    mean_t = torch.tensor(mean).view(3, 1, 1)
    canvas = mean_t.expand(3, e.height, e.width).clone()
    canvas[:, e.top : e.top + image.shape[1], e.left : e.left + image.shape[2]] = x
    x0, y0, x1, y1 = plan.crop.rect
    patch = canvas[:, y0:y1, x0:x1]
    if plan.flip:
        patch = patch.flip(-1)
    out = F.interpolate(patch[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return out - mean_t


def plan_for(photometric, expansion, rect, flip, n=0):
    return AugmentPlan(photometric, expansion, Crop(0.0, rect, torch.ones(n, dtype=torch.bool)), flip)


@pytest.mark.parametrize("flip", [False, True])
def test_render_equals_paper_order_inside_the_image(flip):
    image = random_image(30, 40, seed=1)
    plan = plan_for(NO_COLOUR, Expansion(40, 30, 0, 0), (5, 3, 37, 27), flip)
    # 32 x 24 -> 16 x 16: scales 2 and 1.5, so the bilinear weights are multiples of 1/4
    # and every product and sum of integer pixels is exact in float32, in any order
    assert torch.equal(
        render(image, plan, 16, torch.tensor(MEAN).view(3, 1, 1)),
        paper_order_reference(image, plan, 16, MEAN),
    )


@pytest.mark.parametrize("flip", [False, True])
def test_render_with_expansion_keeps_fill_undistorted(flip):
    # A 40 x 40 image at (20, 20) on an 80 x 80 canvas, resized by 1/2 to 40 x 40: the
    # seam falls between output pixels, so both orders give the same pixels. Values stay
    # below 200 so that brightness +30 never saturates (it then commutes with resizing).
    image = random_image(40, 40, seed=2, high=200)
    plan = plan_for(PhotometricParams(brightness=30.0), Expansion(80, 80, 20, 20), (0, 0, 80, 80), flip)
    x = render(image, plan, 40, torch.tensor(MEAN).view(3, 1, 1))
    # scale 2: weights 1/2, integer pixels (+30): exact in float32 in either order
    assert torch.equal(x, paper_order_reference(image, plan, 40, MEAN))
    fill = torch.ones(40, 40, dtype=torch.bool)
    fill[10:30, 10:30] = False
    assert (x[:, fill] == 0).all()  # the mean fill, untouched by the brightness change


def test_render_hsv_of_a_uniform_image():
    colour = torch.tensor([200.0, 120.0, 40.0])
    image = colour.view(3, 1, 1).expand(3, 20, 30).to(torch.uint8).contiguous()
    params = PhotometricParams(saturation=1.3, hue=12.0, contrast=0.8, contrast_first=False)
    plan = plan_for(params, Expansion(30, 20, 0, 0), (2, 2, 20, 18), True)
    x = render(image, plan, 8, torch.tensor(MEAN).view(3, 1, 1))
    expected = hsv_reference(colour.view(3, 1, 1), 1.3, 12.0).flatten() * 0.8 - torch.tensor(MEAN)
    # HSV_TOL, then x 0.8 and - mean: two more roundings at <= 255
    torch.testing.assert_close(
        x, expected.view(3, 1, 1).expand(3, 8, 8), atol=HSV_TOL + rounding(255, 2), rtol=0
    )


def test_whole_image_plan_equals_eval_transform_and_predict_resize():
    image = random_image(37, 53, seed=4)
    plan = plan_for(NO_COLOUR, Expansion(53, 37, 0, 0), (0, 0, 53, 37), False)
    x = render(image, plan, 24, torch.tensor(MEAN).view(3, 1, 1))
    x_eval, _ = EvalTransform(24, MEAN)(image, make_target(torch.zeros(0, 4)))
    assert torch.equal(x, x_eval)
    assert torch.equal(x_eval, preprocess([image], 24, MEAN)[0])


def mirror(boxes):
    return torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)


def test_transform_boxes_hand_computed():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 100.0, 100.0], [90.0, 0.0, 95.0, 5.0]])
    keep = torch.tensor([True, True, False])
    # image at (10, 5) on the canvas; crop (20, 10)-(120, 60), 100 x 50 canvas pixels
    plan = AugmentPlan(NO_COLOUR, Expansion(150, 110, 10, 5), Crop(0.3, (20, 10, 120, 60), keep), False)
    expected = torch.tensor([[0.0, 0.3, 0.4, 1.0], [0.0, 0.0, 0.9, 1.0]])
    torch.testing.assert_close(transform_boxes(boxes, plan), expected, atol=BOX_TOL, rtol=0)
    flipped = AugmentPlan(NO_COLOUR, Expansion(150, 110, 10, 5), Crop(0.3, (20, 10, 120, 60), keep), True)
    expected = torch.tensor([[0.6, 0.3, 1.0, 1.0], [0.1, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(transform_boxes(boxes, flipped), expected, atol=BOX_TOL, rtol=0)


def test_flip_is_its_own_inverse():
    image = random_image(30, 40, seed=5)
    boxes = torch.tensor([[3.0, 4.0, 20.0, 25.0], [25.0, 2.0, 39.0, 12.0]])
    mean = torch.tensor(MEAN).view(3, 1, 1)
    for expansion, rect in [
        (Expansion(40, 30, 0, 0), (2, 1, 35, 29)),
        (Expansion(70, 50, 13, 9), (5, 0, 60, 45)),
    ]:
        kept = plan_for(NO_COLOUR, expansion, rect, False, n=2)
        mirrored = plan_for(NO_COLOUR, expansion, rect, True, n=2)
        assert torch.equal(render(image, mirrored, 20, mean), render(image, kept, 20, mean).flip(-1))
        once = transform_boxes(boxes, mirrored)
        # x * -s + (1 - o) against 1 - (x * s + o): different roundings
        torch.testing.assert_close(once, mirror(transform_boxes(boxes, kept)), atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(mirror(once), transform_boxes(boxes, kept), atol=BOX_TOL, rtol=0)


def expected_boxes(boxes, plan):
    """The plan's box transform, written out: shift onto the canvas, clip to the crop,
    divide by its size, mirror."""
    e, (x0, y0, x1, y1) = plan.expansion, plan.crop.rect
    out = []
    for (bx0, by0, bx1, by1), keep in zip(boxes.tolist(), plan.crop.keep.tolist()):
        if not keep:
            continue
        ax0, ax1 = (min(max(v + e.left, x0), x1) for v in (bx0, bx1))
        ay0, ay1 = (min(max(v + e.top, y0), y1) for v in (by0, by1))
        fx0, fx1 = (ax0 - x0) / (x1 - x0), (ax1 - x0) / (x1 - x0)
        fy0, fy1 = (ay0 - y0) / (y1 - y0), (ay1 - y0) / (y1 - y0)
        if plan.flip:
            fx0, fx1 = 1 - fx1, 1 - fx0
        out.append([fx0, fy0, fx1, fy1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def test_augmentation_invariants_over_many_seeds():
    aug = SSDAugmentation(size=32, mean=MEAN)
    image = random_image(48, 64, seed=6)
    flips, dropped = set(), 0
    for seed in range(200):
        g = torch.Generator().manual_seed(1000 + seed)
        boxes = random_boxes(seed % 5, 64, 48, g)
        target = make_target(boxes)
        x, out = aug(image, target, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
        assert torch.isfinite(x).all()
        # bilinear weights rounded (their sum 1 within 2 EPS) times pixels <= 255, four
        # products and three sums, then the mean's subtraction: <= 8 roundings at 255
        slack = rounding(255, ops=8)
        assert (x >= -max(MEAN) - slack).all() and (x <= 255 - min(MEAN) + slack).all()
        b = out["boxes"]
        assert b.dtype == torch.float32 and b.shape == (len(out["labels"]), 4)
        assert ((b >= 0) & (b <= 1)).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        # the same draws, replayed, give the plan; the boxes follow it exactly
        plan = aug.plan(64, 48, boxes, torch.Generator().manual_seed(seed))
        check_crop(plan.crop, boxes + torch.tensor([plan.expansion.left, plan.expansion.top] * 2),
                   plan.expansion.width, plan.expansion.height)  # fmt: skip
        torch.testing.assert_close(b, expected_boxes(boxes, plan), atol=BOX_TOL, rtol=0)
        # labels, difficult and truncated filtered in step (labels identify the objects)
        index = out["labels"] - 1
        assert torch.equal(out["difficult"], target["difficult"][index])
        assert torch.equal(out["truncated"], target["truncated"][index])
        assert out["image_id"] is target["image_id"] and out["size"] is target["size"]
        flips.add(plan.flip)
        dropped += len(boxes) - len(b)
    assert flips == {False, True} and dropped > 0


def test_same_seed_same_output_and_generator_precedence():
    image = random_image(40, 50, seed=7)
    target = make_target(torch.tensor([[5.0, 5.0, 30.0, 35.0], [20.0, 10.0, 48.0, 38.0]]))
    aug = SSDAugmentation(size=24)
    a = aug(image, target, generator=torch.Generator().manual_seed(11))
    b = aug(image, target, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    outputs = [aug(image, target, generator=torch.Generator().manual_seed(s))[0] for s in range(6)]
    assert all(not torch.equal(outputs[i], outputs[j]) for i in range(6) for j in range(i))  # all differ
    # a generator given at construction is used when the call passes none
    own = SSDAugmentation(size=24, generator=torch.Generator().manual_seed(11))
    assert torch.equal(own(image, target)[0], a[0])
    # and without any generator, torch's global one
    torch.manual_seed(123)
    c = aug(image, target)
    torch.manual_seed(123)
    d = aug(image, target)
    assert torch.equal(c[0], d[0]) and torch.equal(c[1]["boxes"], d[1]["boxes"])


def test_inputs_are_not_modified():
    image = random_image(40, 50, seed=8)
    boxes = torch.tensor([[5.0, 5.0, 30.0, 35.0]])
    target = make_target(boxes.clone())
    saved_image = image.clone()
    for seed in range(20):
        SSDAugmentation(size=24)(image, target, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(image, saved_image) and torch.equal(target["boxes"], boxes)


def test_images_without_objects():
    aug = SSDAugmentation(size=16)
    image = random_image(20, 30, seed=9)
    for seed in range(40):
        x, out = aug(image, make_target(torch.zeros(0, 4)), generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 16, 16) and torch.isfinite(x).all()
        assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_boxes_outside_the_image_are_clipped_and_empty_ones_dropped():
    image = random_image(20, 40, seed=10)
    target = make_target(torch.tensor([[-10.0, 5.0, 20.0, 30.0], [8.0, 8.0, 8.0, 15.0]]))
    x, out = EvalTransform(10)(image, target)
    expected = torch.tensor([[0.0, 0.25, 0.5, 1.0], [0.2, 0.4, 0.2, 0.75]])
    torch.testing.assert_close(out["boxes"], expected, atol=BOX_TOL, rtol=0)
    seen = set()
    for seed in range(30):
        _, out = SSDAugmentation(10)(image, target, generator=torch.Generator().manual_seed(seed))
        seen.add(tuple(out["labels"].tolist()))
    assert seen == {(1,)}  # the empty box (label 2) never survives; a crop keeps the other, the only object


def test_bounding_boxes_input_in_another_format():
    image = random_image(40, 50, seed=11)
    xyxy = torch.tensor([[5.0, 5.0, 30.0, 35.0], [20.0, 10.0, 48.0, 38.0]])
    cxcywh = tv_tensors.BoundingBoxes(
        torch.tensor([[17.5, 20.0, 25.0, 30.0], [34.0, 24.0, 28.0, 28.0]]),
        format="CXCYWH",
        canvas_size=(40, 50),
    )
    aug = SSDAugmentation(size=24)
    for seed in range(5):
        a = aug(image, make_target(xyxy), generator=torch.Generator().manual_seed(seed))
        b = aug(image, make_target(cxcywh), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a[0], b[0])
        # CXCYWH -> XYXY of these half-integers is exact: then the same arithmetic
        assert torch.equal(a[1]["boxes"], b[1]["boxes"])
        assert type(b[1]["boxes"]) is torch.Tensor


def test_eval_transform_hand_computed():
    image = random_image(20, 40, seed=12)
    target = make_target(torch.tensor([[4.0, 5.0, 20.0, 15.0]]))
    x, out = EvalTransform(size=10, mean=MEAN)(image, target, generator=torch.Generator())
    assert torch.equal(x, preprocess([image], 10, MEAN)[0])
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.1, 0.25, 0.5, 0.75]]), atol=BOX_TOL, rtol=0)
    assert torch.equal(out["labels"], target["labels"]) and out["image_id"] == "img"


@pytest.mark.parametrize(
    "image, target, message",
    [
        (torch.zeros(3, 8, 8), make_target(torch.zeros(0, 4), "a7"), "a7"),
        (torch.zeros(8, 8, dtype=torch.uint8), make_target(torch.zeros(0, 4), "b1"), "uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), make_target(torch.zeros(2, 5), "c2"), "c2"),
        (
            torch.zeros(3, 8, 8, dtype=torch.uint8),
            {**make_target(torch.ones(2, 4)), "labels": torch.ones(3)},
            "labels",
        ),
        (
            torch.zeros(3, 8, 8, dtype=torch.uint8),
            make_target(torch.tensor([[0.0, 0.0, float("nan"), 1]])),
            "finite",
        ),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), {"labels": torch.ones(1)}, "boxes"),
    ],
)
def test_bad_inputs_raise_value_error(image, target, message):
    for transform in (SSDAugmentation(8), EvalTransform(8)):
        with pytest.raises(ValueError, match=message):
            transform(image, target)


class RandomImages:
    """6 random images of 24 x 32 with 2 objects each, as a detection dataset returns them."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(6):
            target = make_target(random_boxes(2, 32, 24, g))
            self.items.append((random_image(24, 32, seed=i), {**target, "image_id": f"im{i}"}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, target = self.items[i]
        return image.clone(), dict(target)


def test_train_loader_batches_are_identical_with_and_without_worker_processes():
    from itertools import islice

    from singleshot.training.data import make_train_loader

    def batches(workers, seed=7):
        loader = make_train_loader(RandomImages(), SSDAugmentation(size=16), 4, seed=seed, workers=workers)
        return list(islice(loader, 5))  # 20 samples: over three passes of the 6 images

    single, parallel = batches(0), batches(2)
    for (xa, ta), (xb, tb) in zip(single, parallel, strict=True):
        assert torch.equal(xa, xb)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        for a, b in zip(ta, tb, strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    # the equality is not that of an identity transform: the same image is augmented anew on
    # each pass, and another run seed gives other batches
    x = torch.cat([xs for xs, _ in single])
    ids = [t["image_id"] for _, ts in single for t in ts]
    first, again = ids.index("im0"), ids.index("im0", ids.index("im0") + 1)
    assert not torch.equal(x[first], x[again])
    assert not torch.equal(single[0][0], batches(0, seed=8)[0][0])


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (1, 40)])
def test_tiny_images(height, width):
    # crops of 0.3 of a side round to nothing: the whole image must come out instead
    image = random_image(height, width, seed=13)
    target = make_target(torch.tensor([[0.0, 0.0, float(width), float(height)]]))
    for seed in range(10):
        x, out = SSDAugmentation(8)(image, target, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 8, 8) and torch.isfinite(x).all()
        assert out["labels"].tolist() == [1]
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()


# ---------------------------------------------------------------- steps switched off (SSDLite)


def test_without_photometric_and_expand_the_output_is_crop_flip_resize():
    image = random_image(48, 64, seed=9)
    on, off = (
        SSDAugmentation(size=32, mean=MEAN),
        SSDAugmentation(size=32, mean=MEAN, photometric=False, expand=False),
    )
    assert repr(off) == f"SSDAugmentation(size=32, mean={MEAN}, photometric=False, expand=False)"
    flips, cropped = set(), 0
    for seed in range(40):
        boxes = random_boxes(1 + seed % 4, 64, 48, torch.Generator().manual_seed(500 + seed))
        plan = off.plan(64, 48, boxes, torch.Generator().manual_seed(seed))
        assert plan.photometric.identity and plan.expansion == Expansion(64, 48, 0, 0)
        # the flip is drawn as with both steps on: switching them off changes no other draw
        assert plan.flip == on.plan(64, 48, boxes, torch.Generator().manual_seed(seed)).flip
        x, out = off(image, make_target(boxes), generator=torch.Generator().manual_seed(seed))
        x0, y0, x1, y1 = plan.crop.rect
        expected = preprocess([image[:, y0:y1, x0:x1]], 32, MEAN)[0]
        assert torch.equal(x, expected.flip(-1) if plan.flip else expected), seed
        torch.testing.assert_close(out["boxes"], expected_boxes(boxes, plan), atol=BOX_TOL, rtol=0)
        flips.add(plan.flip)
        cropped += plan.crop.rect != (0, 0, 64, 48)
    assert flips == {False, True} and cropped > 10


@pytest.mark.parametrize("photometric, expand", [(False, False), (False, True), (True, False)])
def test_steps_switched_off_on_a_flat_image(photometric, expand):
    """A flat image shows both steps: a colour change moves its value, an expansion leaves a
    mean-filled (zero) border; the default pipeline shows both over these seeds."""
    colour = torch.tensor([30.0, 200.0, 90.0])
    image = colour.to(torch.uint8).view(3, 1, 1).expand(3, 40, 50).contiguous()
    target = make_target(torch.tensor([[5.0, 5.0, 45.0, 35.0]]))
    aug = SSDAugmentation(size=16, mean=MEAN, photometric=photometric, expand=expand)
    default = SSDAugmentation(size=16, mean=MEAN)
    flat = (colour - torch.tensor(MEAN)).view(3, 1, 1)

    def shows(x):
        """(mean-filled border?, colour changed?): the bilinear weights' rounding moves a flat
        image by <= 8 roundings at 255; a colour change by far more."""
        border = (x == 0).all(0)  # the mean fill, 0 once subtracted (no image pixel is the mean)
        return bool(border.any()), bool(((x - flat)[:, ~border].abs() > rounding(255, ops=8)).any())

    recoloured = bordered = default_recoloured = default_bordered = 0
    for seed in range(30):
        border, colour_changed = shows(aug(image, target, generator=torch.Generator().manual_seed(seed))[0])
        bordered, recoloured = bordered + border, recoloured + colour_changed
        border, colour_changed = shows(
            default(image, target, generator=torch.Generator().manual_seed(seed))[0]
        )
        default_bordered, default_recoloured = default_bordered + border, default_recoloured + colour_changed
    assert (recoloured > 0) == photometric and (bordered > 0) == expand
    assert default_recoloured > 0 and default_bordered > 0
    if not photometric and not expand:
        assert recoloured == bordered == 0
