"""Export: ONNX (dynamo exporter, onnxruntime) and TorchScript, network alone and whole detector."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.export import (
    DetectorGraph,
    OnnxDetector,
    TorchScriptDetector,
    export_onnx,
    export_torchscript,
    multiclass_nms,
    outputs_to_detections,
)
from singleshot.inference import preprocess
from singleshot.postprocess import class_probabilities, detect
from tolerances import network, rounding


class TinyBackbone(torch.nn.Module):
    """Two sources at strides 8 and 16: enough structure for export tests, few graph nodes."""

    out_channels = (16, 32)

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=4, padding=1), torch.nn.ReLU(),
        )  # fmt: skip
        self.down = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU())

    def forward(self, x):
        first = self.stem(x)
        return [first, self.down(first)]


def make_model():
    """A tiny SSD (64 px, 3 levels, 5 classes) whose random scores spread out without ties."""
    from singleshot.models import SSD, ExtraSpec, build_extras
    from singleshot.priors import PriorConfig

    torch.manual_seed(0)
    config = PriorConfig(
        image_size=64, feature_maps=(8, 4, 2), steps=(8.0, 16.0, 32.0), min_sizes=(10.0, 24.0, 40.0),
        max_sizes=(24.0, 40.0, 60.0), aspect_ratios=((2.0,), (2.0, 3.0), (2.0,)),
    )  # fmt: skip
    model = SSD(
        backbone=TinyBackbone(),
        extras=build_extras(32, (ExtraSpec(16, 32, 3, 2, 1),)),
        num_classes=5,
        prior_config=config,
        class_names=["__background__", "a", "b", "c", "d"],
    )
    with torch.no_grad():
        for conv in model.head.conf:
            conv.weight.mul_(0.02)
        for conv in model.head.loc:
            conv.weight.mul_(0.005)
    return model.eval()


def make_images():
    g = torch.Generator().manual_seed(1)
    sizes = [(48, 80), (64, 64), (90, 37)]
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def threshold_in_a_gap(model, images, at_least=3, at_most=150):
    """A score threshold in the middle of a wide gap between the scores, with at least
    ``at_least`` candidates per image above it and at most ``at_most``: no candidate is then
    near the threshold (in float terms) and no top-k or max_detections cut binds, so float
    differences between runtimes cannot change the detections."""
    with torch.no_grad():
        _, conf = model(preprocess(images, model.image_size, model.image_mean))
    per_image = conf.softmax(-1)[..., 1:].flatten(1).sort(dim=1, descending=True).values
    high, low = float(per_image[:, at_least - 1].min()), float(per_image[:, at_most].max())
    scores = per_image.flatten()
    scores = scores[(scores > low) & (scores < high)].sort().values
    gaps = scores[1:] - scores[:-1]
    best = int(gaps.argmax())
    # wider than twice what another runtime can move a score (softmax: <= 1/2 the logits')
    assert gaps[best] > 2 * network(model, conf.abs().max().item())
    return float((scores[best] + scores[best + 1]) / 2)


def make_compact():
    """ssd160_compact (a preset, so it can be checkpointed) with spread-out scores."""
    torch.manual_seed(0)
    model = singleshot.build_model(
        "ssd160_compact", class_names=["__background__"] + [f"c{i}" for i in range(20)]
    )
    with torch.no_grad():
        for conv in model.head.conf:
            conv.weight.mul_(0.2)
            conv.bias.view(-1, model.num_classes)[:, 0] += 5.0
        for conv in model.head.loc:
            conv.weight.mul_(0.05)
    return model.eval()


def network_tolerances(model, images):
    """Bounds for detections from the same network run by other kernels (another runtime).

    Scores: softmax moves by <= 1/2 the logits' largest change (the sum over j of
    |d p_i / d z_j| is 2 p_i (1 - p_i)); boxes: decode scales a loc change by 0.1 or 0.2
    times the prior's size (< 1) and the image's side (<= 90 px), plus its own rounding
    (an ulp of exp, the corners: <= 4 roundings at <= 1.5).
    """
    with torch.no_grad():
        loc, conf = model(preprocess(images, model.image_size, model.image_mean))
    box_tol = 90 * (network(model, loc.abs().max().item()) + rounding(1.5, ops=4))
    return box_tol, network(model, conf.abs().max().item())


def assert_same_detections(got, expected, box_tol, score_tol):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a["labels"].tolist() == b["labels"].tolist()
        torch.testing.assert_close(a["scores"], b["scores"], atol=score_tol, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=box_tol, rtol=0)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def images():
    return make_images()


@pytest.fixture(scope="module")
def onnx_files(model, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    threshold = threshold_in_a_gap(model, images)
    return {
        "network": export_onnx(model, folder / "network.onnx"),
        "detector": export_onnx(
            model, folder / "detector.onnx", with_postprocess=True, score_threshold=threshold
        ),
        "threshold": threshold,
    }


def test_onnx_network_matches_pytorch_with_dynamic_batch(model, images, onnx_files):
    proto = onnx.load(str(onnx_files["network"]))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(onnx_files["network"]), providers=["CPUExecutionProvider"])
    x = preprocess(images, model.image_size, model.image_mean)
    for batch in (x, x[:1]):  # exported with batch 2: other sizes must work
        loc, conf = session.run(None, {"images": batch.numpy()})
        with torch.no_grad():
            ref_loc, ref_conf = model(batch)
        assert loc.shape == tuple(ref_loc.shape) and conf.shape == tuple(ref_conf.shape)
        # onnxruntime's convolutions sum in their own order
        tol_loc, tol_conf = (
            network(model, ref_loc.abs().max().item()),
            network(model, ref_conf.abs().max().item()),
        )
        np.testing.assert_allclose(loc, ref_loc.numpy(), atol=tol_loc, rtol=0)
        np.testing.assert_allclose(conf, ref_conf.numpy(), atol=tol_conf, rtol=0)


def test_onnx_detector_equals_predict(model, images, onnx_files):
    runner = OnnxDetector(onnx_files["detector"], threads=2)
    assert runner.image_size == 64 and runner.class_names == model.class_names
    got = runner.predict(images)
    expected = model.predict(images, score_threshold=onnx_files["threshold"])
    assert all(len(d["scores"]) > 3 for d in expected)
    assert_same_detections(got, expected, *network_tolerances(model, images))
    # the raw outputs: padded to max_detections, zeros after counts[b]
    x = preprocess(images[:1], model.image_size, model.image_mean)
    boxes, scores, labels, counts = runner.run(x)
    assert boxes.shape == (1, 200, 4) and labels.dtype == torch.int64
    n = int(counts[0])
    assert n == len(expected[0]["scores"])
    assert (scores[0, n:] == 0).all() and (labels[0, n:] == 0).all() and (boxes[0, n:] == 0).all()


def assert_gap(values, k, tolerance=1e-4):
    """The k-th and (k+1)-th largest of ``values`` differ by more than ``tolerance`` (if there
    are more than k): a cut after the k-th cannot be moved by float differences between runtimes."""
    ordered = sorted(values, reverse=True)
    if len(ordered) > k:
        assert ordered[k - 1] - ordered[k] > tolerance, (ordered[k - 1], ordered[k])


def test_onnx_detector_with_binding_top_k_and_cap_equals_detect(images, tmp_path):
    """pre_nms_top_k=5 and max_detections=7 inside the ONNX graph (TopK and the cap run in
    onnxruntime) give detect()'s detections with the same settings, and both cuts change them."""
    model = make_model()
    with torch.no_grad():  # class "a" outscores the others: without the top-k it would fill the 7
        for conv in model.head.conf:
            conv.bias.view(-1, model.num_classes)[:, 1] += 0.2
    threshold = threshold_in_a_gap(model, images, at_least=80)
    path = export_onnx(
        model, tmp_path / "capped.onnx", with_postprocess=True, score_threshold=threshold,
        pre_nms_top_k=5, max_detections=7,
    )  # fmt: skip
    x = preprocess(images, model.image_size, model.image_mean)
    with torch.no_grad():
        loc, conf = model(x)
    scores = conf.softmax(-1)

    def reference(top_k, max_det):
        return detect(loc, scores, model.priors, threshold, 0.45, top_k, max_det, clip=False)

    expected, uncapped, no_top_k = reference(5, 7), reference(5, None), reference(10**4, 7)
    # both cuts bind: 7 of more detections kept on every image; the top 5 of class "a" where
    # without the top-k 7 and 6 of them would be among the 7 on images 0 and 2
    assert [len(d["scores"]) for d in expected] == [7, 7, 7]
    assert all(len(d["scores"]) > 7 for d in uncapped)
    assert [d["labels"].tolist().count(1) for d in expected] == [5, 5, 5]
    assert [d["labels"].tolist().count(1) for d in no_top_k] == [7, 5, 6]
    # and neither cut falls between nearly equal scores (else runtimes' rounding could move it)
    for b, detections in enumerate(uncapped):
        assert_gap(detections["scores"].tolist(), 7)
        for c in range(1, model.num_classes):
            assert_gap([v for v in scores[b, :, c].tolist() if v > threshold], 5)

    boxes, out_scores, labels, counts = OnnxDetector(path).run(x)
    assert boxes.shape == (len(images), 7, 4) and counts.tolist() == [7] * len(images)
    # the network ran in onnxruntime: its bounds, with the boxes as fractions (not <= 90 px)
    box_tol, score_tol = network_tolerances(model, images)
    got = outputs_to_detections(boxes, out_scores, labels, counts)
    assert_same_detections(got, expected, box_tol=box_tol / 90, score_tol=score_tol)


def test_onnx_network_runner_postprocesses_like_predict(model, images, onnx_files):
    runner = OnnxDetector(onnx_files["network"])
    threshold = onnx_files["threshold"]
    assert_same_detections(
        runner.predict(images, score_threshold=threshold),
        model.predict(images, threshold),
        *network_tolerances(model, images),
    )


def test_a_graph_with_nms_inside_takes_only_a_higher_score_threshold(model, images, tmp_path):
    """Built at 0.01, asked for a threshold in a gap: its output filtered there equals predict's at
    that threshold (NMS never lets a lower score suppress a higher one); lower thresholds and
    other NMS settings are refused, naming the file."""
    path = export_onnx(model, tmp_path / "low.onnx", with_postprocess=True, score_threshold=0.01)
    runner = OnnxDetector(path)
    assert runner.postprocess.score_threshold == 0.01 and runner.model_postprocess == model.postprocess
    threshold = threshold_in_a_gap(model, images)
    got = runner.predict(images, score_threshold=threshold, nms_threshold=model.postprocess.nms_threshold)
    expected = model.predict(images, score_threshold=threshold)
    assert all(0 < len(d["scores"]) < len(r["scores"]) for d, r in zip(expected, runner.predict(images)))
    assert_same_detections(got, expected, *network_tolerances(model, images))
    with pytest.raises(
        ValueError, match=r"low.onnx: NMS is inside this graph and keeps only scores above 0.01"
    ):
        runner.predict(images, score_threshold=0.005)
    with pytest.raises(
        ValueError, match=r"low.onnx: NMS is inside this graph, built at export with nms_threshold=0.45"
    ):
        runner.predict(images, nms_threshold=0.3)


def test_torchscript_exports_equal_predict(model, images, tmp_path):
    detector = TorchScriptDetector(export_torchscript(model, tmp_path / "det.pt", with_postprocess=True))
    # the traced graph runs the same kernels on the same tensors: the same detections
    assert_same_detections(detector.predict(images), model.predict(images), box_tol=0, score_tol=0)
    frozen = TorchScriptDetector(export_torchscript(model, tmp_path / "net.pt", freeze=True))
    x = preprocess(images, model.image_size, model.image_mean)
    with torch.no_grad():
        for a, b in zip(frozen.run(x), model(x)):  # freezing may fold and reorder the arithmetic
            torch.testing.assert_close(a, b, atol=network(model, b.abs().max().item()), rtol=0)


@pytest.mark.parametrize("top_k, max_det, clip, threshold", [(5, 7, True, 0.05), (200, None, False, 0.01)])
def test_detector_graph_equals_detect(model, images, top_k, max_det, clip, threshold):
    x = preprocess(images, model.image_size, model.image_mean)
    graph = DetectorGraph(
        model, model.priors, model.num_classes, score_threshold=threshold,
        pre_nms_top_k=top_k, max_detections=max_det, clip=clip,
    ).eval()  # fmt: skip
    with torch.no_grad():
        boxes, scores, labels, counts = graph(x)
        loc, conf = model(x)
    probabilities = class_probabilities(conf)  # predict's softmax
    expected = detect(loc, probabilities, model.priors, threshold, 0.45, top_k, max_det, clip=clip)
    assert boxes.shape[1] == (max_det or (model.num_classes - 1) * top_k)
    assert counts.tolist() == [len(d["scores"]) for d in expected]
    assert_same_detections(
        outputs_to_detections(boxes, scores, labels, counts), expected, box_tol=0, score_tol=0
    )


def onnx_nms_session():
    """A one-node ONNX model: NonMaxSuppression as onnxruntime implements it."""
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "threshold"], ["selected"])
    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", "P", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "C", "P"]),
        helper.make_tensor_value_info("max", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1]),
    ]
    output = helper.make_tensor_value_info("selected", TensorProto.INT64, ["M", 3])
    graph = helper.make_graph([node], "nms", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_multiclass_nms_equals_onnx_nonmaxsuppression():
    g = torch.Generator().manual_seed(4)
    corner = torch.rand(2, 300, 2, generator=g)
    boxes = torch.cat([corner, corner + 0.05 + 0.3 * torch.rand(2, 300, 2, generator=g)], -1)
    scores = torch.rand(2, 4, 300, generator=g)
    scores[0, 1, 7] = 0.25  # exactly at the threshold: not a candidate in either
    session = onnx_nms_session()
    for iou, threshold in [(0.45, 0.25), (0.3, 0.0), (0.7, 0.9)]:
        ours = multiclass_nms(boxes, scores, iou, threshold)
        feeds = {
            "boxes": boxes.numpy(),
            "scores": scores.numpy(),
            "max": np.array([10**6]),
            "iou": np.array([iou], np.float32),
            "threshold": np.array([threshold], np.float32),
        }
        theirs = session.run(None, feeds)[0]
        assert len(ours) > 0
        assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))


def test_export_rejects_bad_options(model, tmp_path):
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(model, tmp_path / "a.onnx", opset=16)
    with pytest.raises(ValueError, match="unknown post-processing options: top_k"):
        export_onnx(model, tmp_path / "a.onnx", with_postprocess=True, top_k=3)
    with pytest.raises(ValueError, match="score_threshold must be in"):
        DetectorGraph(model, model.priors, model.num_classes, score_threshold=-0.1)


def test_export_cli_torchscript_verify(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "model.pt", make_compact())
    out = tmp_path / "detector.pt"
    code = main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--with-postprocess",
                 "--max-detections", "50", "--verify", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "100.0% of rows" in printed
    boxes, _, _, _ = TorchScriptDetector(out).run(torch.zeros(1, 3, 160, 160))
    assert boxes.shape == (1, 50, 4)
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx", str(out)]) == 1
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_export_metadata_carries_class_names_and_category_ids(tmp_path, format):
    model = make_compact()
    model.category_ids = [0] + [100 + 3 * k for k in range(20)]  # as trained on a COCO set with these ids
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    out = tmp_path / ("net.pt" if format == "torchscript" else "net.onnx")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", format, str(out)]) == 0
    runner = TorchScriptDetector(out) if format == "torchscript" else OnnxDetector(out)
    assert runner.class_names == ["__background__"] + [f"c{i}" for i in range(20)]
    assert runner.category_ids[1:] == list(range(100, 160, 3))
