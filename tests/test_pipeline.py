"""`singleshot.pipeline.predict_files`: the loop behind ``singleshot detect``, through the Python API."""

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from singleshot.imageio import read_image
from singleshot.inference import predict
from singleshot.pipeline import FilePrediction, predict_files


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", class_names=["__background__", "cat", "dog"]).eval()
    with torch.no_grad():  # a few confident detections per image
        for conv in model.head.conf:
            conv.weight.mul_(0.2)
            conv.bias.view(-1, 3)[:, 0] += 4.0
    return model


@pytest.fixture()
def files(tmp_path):
    g = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(["a.png", "broken.jpg", "b.png", "c.jpg"]):
        path = tmp_path / name
        if name == "broken.jpg":
            path.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
        else:
            Image.fromarray(g.integers(0, 256, (50 + 7 * i, 80 - 9 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("prefetch", [True, False])
def test_one_image_per_batch_equals_predict_per_image(model, files, prefetch):
    items = list(predict_files(model, [str(p) for p in files], batch_size=1, prefetch=prefetch,
                               score_threshold=0.2))  # fmt: skip
    assert [item.path for item in items] == files  # order kept, paths as Path
    assert all(isinstance(item, FilePrediction) for item in items)
    broken = items[1]
    assert broken.image is None and broken.detections is None
    assert "broken.jpg" in broken.error
    found = 0
    for item in items[:1] + items[2:]:
        assert item.error is None
        assert torch.equal(item.image, read_image(item.path))
        assert_same(item.detections, model.predict(item.path, score_threshold=0.2)[0])
        found += len(item.detections["scores"])
    assert found > 0  # the comparison saw detections, not just empty tensors


def test_batches_skip_unreadable_files_and_pass_options(model, files):
    options = {"score_threshold": 0.05, "nms_threshold": 0.3, "pre_nms_top_k": 50, "max_detections": 7}
    items = list(predict_files(model, files, batch_size=2, **options))
    # batches [a, broken] and [b, c]: the readable images of each go through one forward pass
    a, b, c = (read_image(files[i]) for i in (0, 2, 3))
    expected = predict(model, [a], **options) + predict(model, [b, c], **options)
    got = [item.detections for item in items if item.error is None]
    assert len(got) == 3
    for one, other in zip(got, expected):
        assert_same(one, other)
    assert max(len(d["scores"]) for d in got) == 7  # max_detections reached the model


def test_empty_and_bad_arguments(model, files):
    assert list(predict_files(model, [])) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(predict_files(model, files, batch_size=0))
    only_bad = list(predict_files(model, [files[1], files[1].with_name("missing.png")]))
    assert [item.detections for item in only_bad] == [None, None]
    assert "missing.png" in only_bad[1].error


def test_reads_ahead_unless_pytorch_runs_the_model_on_the_cpu(model, files, tmp_path, monkeypatch):
    import singleshot.pipeline as pipeline
    from singleshot.export import OnnxDetector, TorchScriptDetector, export_onnx, export_torchscript

    onnx_model = OnnxDetector(export_onnx(model, tmp_path / "m.onnx", with_postprocess=True), threads=1)
    script = TorchScriptDetector(export_torchscript(model, tmp_path / "m.pt"))

    class CudaScript:  # what runtime_of calls "torch", on a GPU
        device = "cuda:0"

    assert pipeline.reads_ahead_by_default(model) is False
    assert pipeline.reads_ahead_by_default(script) is False
    assert pipeline.reads_ahead_by_default(onnx_model) is True
    assert pipeline.reads_ahead_by_default(CudaScript()) is True

    pools = []
    real_pool = pipeline.ThreadPoolExecutor
    monkeypatch.setattr(pipeline, "ThreadPoolExecutor", lambda **kw: pools.append(kw) or real_pool(**kw))
    paths = [str(p) for p in files]
    plain = list(predict_files(model, paths, batch_size=2))
    assert pools == []  # the checkpoint on the CPU: read in line
    ahead = list(predict_files(model, paths, batch_size=2, prefetch=True))
    assert pools == [{"max_workers": 1}]
    for a, b in zip(plain, ahead):
        assert a.path == b.path and a.error == b.error
        if a.detections is not None:
            assert_same(a.detections, b.detections)
    list(predict_files(onnx_model, paths, batch_size=2))
    assert len(pools) == 2  # an ONNX Runtime file: read ahead
