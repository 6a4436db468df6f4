import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.evaluation import evaluate_model, evaluate_voc, format_table, plot_pr_curves
from singleshot.evaluation.coco import evaluate_coco
from tolerances import EPS64, rounding

# float64 APs: means of <= 10 x 101 x 2 precisions in [0, 1] (COCO), or a few points' sums
AP_TOL = rounding(1.0, ops=2020, eps=EPS64)

SIZES = [(60, 80), (90, 50), (64, 64), (100, 120)]  # (H, W)


class TinyDataset:
    """In-memory images of several sizes with targets in pixels, like the dataset readers give."""

    def __init__(self, targets, sizes=SIZES):
        self.targets = targets
        self.sizes = sizes
        self.classes = ["__background__", "cat", "dog"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        h, w = self.sizes[index]
        g = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        return image, self.targets[index]


class FixedOutputs(torch.nn.Module):
    """Every image: zero offsets; prior k is class 1 (p = 0.993), prior j class 2 (p = 0.982),
    every other prior background, so the detections are exactly those two priors' boxes."""

    def __init__(self, priors, k, j):
        super().__init__()
        self.register_buffer("priors", priors)
        self.image_size = 160
        self.image_mean = (123.0, 117.0, 104.0)
        self.unused = torch.nn.Parameter(torch.zeros(1))
        conf = torch.zeros(len(priors), 3)
        conf[:, 0] = 8.0
        conf[k] = torch.tensor([0.0, 5.0, -5.0])
        conf[j] = torch.tensor([0.0, -5.0, 4.0])
        self.register_buffer("conf", conf)

    def forward(self, x):
        batch = x.shape[0]
        return torch.zeros(batch, len(self.priors), 4), self.conf.expand(batch, -1, -1)


def inner_priors(priors):
    corners = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    inside = ((corners > 0.05) & (corners < 0.95)).all(1)
    return corners, torch.nonzero(inside).flatten()


@pytest.fixture(scope="module")
def fixed_model_and_data():
    priors = singleshot.build_model("ssd160_compact", num_classes=3).priors
    corners, inside = inner_priors(priors.double())
    k, j = int(inside[0]), int(inside[len(inside) // 2])
    targets = []
    for index, (h, w) in enumerate(SIZES):
        scale = torch.tensor([w, h, w, h], dtype=torch.float64)
        boxes, labels = [corners[k] * scale], [1]
        if index % 2 == 0:  # class 2 only in images 0 and 2
            boxes.append(corners[j] * scale)
            labels.append(2)
        targets.append(
            {"boxes": torch.stack(boxes).float(), "labels": torch.tensor(labels),
             "difficult": torch.zeros(len(labels), dtype=torch.bool), "image_id": 100 + index}
        )  # fmt: skip
    return FixedOutputs(priors, k, j), TinyDataset(targets)


def test_evaluate_model_scales_detections_to_each_image(fixed_model_and_data):
    model, dataset = fixed_model_and_data
    # Class 1 is found in every image: AP 1 (only if the boxes are scaled to each image's size).
    # Class 2: equal scores, so image order: T F T F -> points (1/2, 1), (1/2, 1/2), (1, 2/3), (1, 1/2).
    result = evaluate_model(model, dataset, "voc07", batch_size=3, progress=False)
    assert result["ap"][1] == 1.0
    assert result["ap"][2] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=AP_TOL)
    assert result["num_images"] == 4
    assert result["num_detections"] == {1: 4, 2: 4}
    voc12 = evaluate_model(model, dataset, "voc12", batch_size=4, progress=False)
    assert voc12["ap"][2] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=AP_TOL)
    coco = evaluate_model(model, dataset, "coco", batch_size=2, progress=False)
    assert coco["per_class"][1]["AP"] == pytest.approx(1.0, abs=AP_TOL)  # IoU 1 at every threshold
    assert coco["per_class"][2]["AP"] == pytest.approx(253 / 303, abs=AP_TOL)  # 51 points at 1, 50 at 2/3


def test_evaluate_model_with_a_real_model_equals_predict_then_evaluate():
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    model.train()
    # ground truth the random model does find: in each image, its best class-1 and class-2 boxes
    # (so both classes score well above zero), plus a difficult box far from them
    images = [TinyDataset([None] * len(SIZES))[i][0] for i in range(len(SIZES))]
    targets = []
    for image, (h, w) in zip(images, SIZES):
        found = model.predict(image)[0]
        best = [found["boxes"][found["labels"] == label][0] for label in (1, 2)]
        difficult = torch.tensor([0.0, 0.0, w / 8, h / 8])
        targets.append({"boxes": torch.stack([*best, difficult]), "labels": torch.tensor([1, 2, 1]),
                        "difficult": torch.tensor([False, False, True])})  # fmt: skip
    dataset = TinyDataset(targets)
    result = evaluate_model(model, dataset, "voc12", batch_size=3, progress=False)
    assert model.training  # mode restored
    detections = [model.predict(dataset[i][0])[0] for i in range(len(dataset))]
    expected = evaluate_voc(detections, targets, use_07_metric=False, inclusive_boxes=False)
    assert set(result["ap"]) == set(expected["ap"]) == {1, 2}
    for label, ap in expected["ap"].items():
        assert ap > 0.2  # not a comparison of zeros
        # an AP depends only on the detections' order and matches, which batches of 3 against
        # single images could change only at near-ties; then the same float64 arithmetic
        assert result["ap"][label] == ap
    assert result["num_detections"] == expected["num_detections"]


def test_evaluate_model_rejects_bad_arguments(fixed_model_and_data):
    model, dataset = fixed_model_and_data
    with pytest.raises(ValueError, match="unknown metric 'map'"):
        evaluate_model(model, dataset, "map", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_model(model, dataset, batch_size=0, progress=False)


def test_plot_pr_curves_writes_one_png(tmp_path):
    curves = {
        1: {"recall": np.array([0.5, 0.5, 1.0]), "precision": np.array([1.0, 0.5, 2 / 3])},
        2: {"recall": torch.tensor([0.25, 0.75]), "precision": torch.tensor([1.0, 0.8])},
    }
    path = plot_pr_curves(curves, ["__background__", "cat", "dog"], tmp_path / "sub" / "pr.png", ap={1: 0.8})
    assert path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1050, 600)  # (8 + 2.5) x 6 inches at 100 dpi
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    # tab10's first two colours (the two curves) are drawn.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - colour).sum(1) < 30).sum() > 50
    with pytest.raises(ValueError, match="class 3"):
        plot_pr_curves({3: {"recall": [0.1, 0.2], "precision": [1.0]}}, None, tmp_path / "bad.png")


def test_format_table_voc_and_coco():
    dets = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.8], "labels": [1, 1]}]
    gts = [{"boxes": [[0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70]], "labels": [1, 1, 2]}]
    result = evaluate_voc(dets, gts)
    lines = format_table(result, ["__background__", "cat", "dog"]).splitlines()
    assert lines[0].split() == ["class", "AP", "GT", "dets", "TP"]
    # cat: 2 ground truths, one found first: 11-point AP = 6/11; dog: none found.
    assert lines[2].split() == ["cat", f"{100 * 6 / 11:.2f}", "2", "2", "1"]
    assert lines[3].split() == ["dog", "0.00", "1", "0", "0"]
    assert lines[-1].split()[:2] == ["mAP", f"{100 * 3 / 11:.2f}"]

    coco = evaluate_coco(
        [{"boxes": [[0, 0, 40, 40]], "scores": [0.9], "labels": [2]}],
        [{"boxes": [[0, 0, 40, 40]], "labels": [2]}],
    )
    lines = format_table(coco, {2: "dog"}).splitlines()
    assert lines[0].split() == ["class", "AP", "AP50", "AP75"]
    assert lines[2].split() == ["dog", "100.00", "100.00", "100.00"]


def test_evaluate_detections_reads_the_dataset_through_its_protocols(tmp_path):
    from types import SimpleNamespace

    from singleshot.data import open_coco
    from singleshot.evaluation import evaluate_detections
    from singleshot.evaluation.run import COCOCategories, COCOFileSource, NamedClasses

    detections = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([1])}]  # fmt: skip
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1]),
                "difficult": torch.tensor([False]), "image_id": 7, "size": (20, 20)}]  # fmt: skip
    # ids but no annotation file: scored against the targets, with the dataset's ids and names
    ids_only = SimpleNamespace(label_to_category_id={1: 44}, classes=["__background__", "bottle"])
    assert isinstance(ids_only, COCOCategories) and not isinstance(ids_only, COCOFileSource)
    result = evaluate_detections(detections, targets, "coco", ids_only)
    assert result["per_class"][1]["category_id"] == 44 and result["AP"] == pytest.approx(1.0)
    direct = evaluate_coco(detections, targets, None, {1: 44}, ids_only.classes)
    np.testing.assert_array_equal(result["stats"], direct["stats"])  # nan where COCO has no objects
    # a file-backed COCO dataset follows all three protocols; a VOC-like one only NamedClasses
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (20, 20)).save(images / "a.png")
    annotations = tmp_path / "instances.json"
    annotations.write_text(
        '{"images": [{"id": 7, "file_name": "a.png", "width": 20, "height": 20}], "annotations": '
        '[{"id": 1, "image_id": 7, "category_id": 44, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}], '
        '"categories": [{"id": 44, "name": "bottle"}]}'
    )
    dataset = open_coco(images, annotations)
    assert all(isinstance(dataset, p) for p in (COCOFileSource, COCOCategories, NamedClasses))
    assert dataset.difficult_name == "crowd"
    from_file = evaluate_detections(detections, targets, "coco", dataset)
    assert from_file["per_class"][1]["category_id"] == 44 and from_file["AP"] == pytest.approx(1.0)
    assert not isinstance(SimpleNamespace(classes=["__background__"]), COCOCategories)
