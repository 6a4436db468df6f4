"""`singleshot.results.Detections`: what `predict` returns, still the dict it always was, plus
its image, class names, pictures, COCO results and data frames."""

import collections
import copy
import json
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.export import TorchScriptDetector, export_torchscript
from singleshot.imageio import read_image
from singleshot.pipeline import predict_files
from singleshot.results import Detections
from singleshot.visualize import draw_detections
from singleshot.weights.names import coco_names_81, coco_names_91
from video_fixtures import SQUARE_NAMES, square_detector, square_frame

KEYS = ["boxes", "scores", "labels"]


@pytest.fixture(scope="module")
def model():
    return square_detector()


@pytest.fixture()
def frame_file(tmp_path):
    path = tmp_path / "000000000139.png"
    Image.fromarray(square_frame(2)).save(path)
    return path


def hand_made(**kwargs):
    """Two detections with known numbers."""
    return Detections(
        torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 5.5, 8.25, 9.0]]),
        torch.tensor([0.875, 0.25]),
        torch.tensor([1, 2]),
        image_size=(64, 96),
        **kwargs,
    )


def test_predict_returns_the_same_dict_as_before(model, frame_file, tmp_path):
    image = read_image(frame_file)
    (det,) = model.predict(image, score_threshold=0.3)
    assert type(det) is Detections and isinstance(det, dict)
    assert list(det) == KEYS and list(det.keys()) == KEYS
    plain = dict(det)
    assert type(plain) is dict and list(plain) == KEYS
    assert all(plain[k] is det[k] for k in KEYS)
    assert det == plain and plain == det  # dict equality compares the same tensor objects
    assert len(det["scores"]) > 0
    assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
    # copies keep what the results know
    for clone in (copy.copy(det), copy.deepcopy(det)):
        assert type(clone) is Detections and list(clone) == KEYS
        assert torch.equal(clone["boxes"], det["boxes"])
        assert clone.names == SQUARE_NAMES and clone.image_size == (128, 192)
        assert torch.equal(clone.image, image)
    assert copy.copy(det)["boxes"] is det["boxes"] and copy.deepcopy(det)["boxes"] is not det["boxes"]
    # saved, results are their dicts alone: files load with weights_only=True, as before
    torch.save([det], tmp_path / "detections.pt")
    (loaded,) = torch.load(tmp_path / "detections.pt", weights_only=True)
    assert type(loaded) is collections.OrderedDict and list(loaded) == KEYS
    assert all(torch.equal(loaded[k], det[k]) for k in KEYS)
    assert list(pickle.loads(pickle.dumps(det))) == KEYS


def test_results_know_their_image_names_and_size(model, frame_file):
    image = read_image(frame_file)
    from_tensor, from_path = model.predict([image, str(frame_file)], score_threshold=0.3)
    assert from_tensor.path is None and from_tensor.image is image  # kept, not copied
    assert from_path.path == frame_file  # kept as a path: the picture is read when asked for
    assert from_path._image is None and torch.equal(from_path.image, image)
    for det in (from_tensor, from_path):
        assert det.image_size == (128, 192)
        assert det.names == SQUARE_NAMES
        assert det.label_names == ["square"] * len(det["labels"])
    unnamed = hand_made()
    assert unnamed.label_names == ["class 1", "class 2"]
    assert hand_made(names=["__background__", "cat"]).label_names == ["cat", "class 2"]
    with pytest.raises(ValueError, match="neither their image nor its file"):
        unnamed.plot()


def test_plot_and_save_draw_the_boxes(model, frame_file, tmp_path):
    (det,) = model.predict(frame_file, score_threshold=0.3)
    image = read_image(frame_file)
    expected = draw_detections(image, det, SQUARE_NAMES, score_threshold=0.5)
    drawn = det.plot()
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 128, 192)
    assert torch.equal(drawn, expected) and not torch.equal(drawn, image)
    assert torch.equal(det.plot(score_threshold=0.0), draw_detections(image, det, SQUARE_NAMES, 0.0))
    saved = det.save(tmp_path / "deep" / "boxes.png", score_threshold=0.0)
    assert torch.equal(read_image(saved), det.plot(score_threshold=0.0))  # PNG: lossless


def test_to_json_is_the_coco_results_format():
    det = hand_made()
    assert det.to_json(image_id=7) == [
        {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 40.0, 40.0], "score": 0.875},
        {"image_id": 7, "category_id": 2, "bbox": [0.0, 5.5, 8.25, 3.5], "score": 0.25},
    ]
    json.dumps(det.to_json(image_id="a.png"))  # plain Python values
    # the image id from the file: COCO's numeric names as numbers, other names as they are
    assert {r["image_id"] for r in hand_made(path="x/000000000139.jpg").to_json()} == {139}
    assert {r["image_id"] for r in hand_made(path="x/street.jpg").to_json()} == {"street.jpg"}
    with pytest.raises(ValueError, match="needs an image_id"):
        det.to_json()
    # category ids: the training set's, an explicit map, rounding
    trained = hand_made(names=["__background__", "cat", "dog"], category_ids=[0, 17, 40])
    assert [r["category_id"] for r in trained.to_json(1)] == [17, 40]
    assert [r["category_id"] for r in trained.to_json(1, label_to_category_id={1: 3, 2: 4})] == [3, 4]
    exact = Detections(torch.tensor([[1 / 3, 0.0, 1.0, 2 / 3]]), torch.tensor([1 / 7]), torch.tensor([1]),
                       image_size=(4, 4))  # fmt: skip
    assert exact.to_json(0)[0]["bbox"] == [0.333, 0.0, 0.667, 0.667]
    assert exact.to_json(0)[0]["score"] == 0.14286
    assert exact.to_json(0, decimals=None)[0]["score"] == pytest.approx(1 / 7, abs=1e-7)
    with pytest.raises(ValueError, match=r"labels \[2\] have no entry"):
        det.to_json(0, label_to_category_id={1: 5})


def test_to_json_gives_coco_ids_for_coco_classes():
    names = coco_names_81()  # contiguous labels 1..80; COCO's ids have gaps (1..90)
    coco = coco_names_91()
    det = Detections(
        torch.zeros(3, 4), torch.ones(3), torch.tensor([1, 12, 80]), image_size=(8, 8), names=names
    )
    ids = [r["category_id"] for r in det.to_json(0)]
    assert [coco[i] for i in ids] == [names[1], names[12], names[80]]
    assert ids == [1, 13, 90]  # person; stop sign (COCO skips id 12); toothbrush


def test_to_pandas_rows(monkeypatch):
    det = hand_made(names=["__background__", "cat", "dog"])
    frame = det.to_pandas()
    assert list(frame.columns) == ["x1", "y1", "x2", "y2", "score", "label", "name"]
    assert frame[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == det["boxes"].tolist()
    assert frame["score"].tolist() == [0.875, 0.25]
    assert frame["label"].tolist() == [1, 2] and frame["name"].tolist() == ["cat", "dog"]
    empty = Detections(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), image_size=(1, 1)
    )
    assert len(empty.to_pandas()) == 0 and empty.to_json(0) == []
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="needs pandas: pip install pandas"):
        det.to_pandas()


def test_files_and_exported_models_return_the_same_type(model, frame_file, tmp_path):
    """Every way of predicting returns Detections that know the same things."""
    expected = model.predict(frame_file, score_threshold=0.3)[0]
    (item,) = predict_files(model, [frame_file], score_threshold=0.3)
    assert type(item.detections) is Detections
    assert item.detections.path == frame_file and item.detections.image is item.image
    assert item.detections.to_json() == expected.to_json()

    for with_postprocess in (False, True):
        path = tmp_path / f"square_{with_postprocess}.pt"
        runtime = TorchScriptDetector(export_torchscript(model, path, with_postprocess=with_postprocess))
        (exported,) = runtime.predict([str(frame_file)])
        assert type(exported) is Detections and list(exported) == KEYS
        assert exported.path == frame_file and exported.image_size == (128, 192)
        assert exported.names == SQUARE_NAMES and exported.label_names[0] == "square"
        top = exported["scores"] > 0.3
        got = sorted(zip(exported["boxes"][top].tolist(), exported["scores"][top].tolist()))
        want = sorted(zip(expected["boxes"].tolist(), expected["scores"].tolist()))  # ties in either order
        assert np.allclose([b for b, _ in got], [b for b, _ in want], atol=1e-3)
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_load_keeps_results_type(model, tmp_path):
    """A saved and loaded model's results carry the checkpoint's class names and category ids."""
    from singleshot.checkpoint import save_checkpoint

    model.category_ids = [0, 42]
    try:
        path = save_checkpoint(tmp_path / "square.pt", model)
    finally:
        del model.category_ids
    loaded = singleshot.load(path)
    (det,) = loaded.predict(torch.from_numpy(square_frame(0)).permute(2, 0, 1), score_threshold=0.3)
    assert det.category_ids == [0, 42]
    assert {r["category_id"] for r in det.to_json(5)} == {42}
