"""Int8 export: calibration data, QDQ quantisation with layers kept in float, the accuracy report.

The model has a real signal: a small compact SSD (64 px input) fitted in a few dozen steps
to the train split of a tiny synthetic VOC set, on which it then finds its objects
(mAP 1 here). The int8 file must find them too.
"""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from singleshot.boxes import iou
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.data import open_dataset
from singleshot.data.synthetic import write_dataset
from singleshot.evaluation import evaluate_model
from singleshot.export import OnnxDetector, export_onnx
from singleshot.export.calibration import ImageBatches, calibration_images, evenly_spaced
from singleshot.export.int8 import float_layer_nodes, network_nodes, quantize_onnx
from singleshot.loss import MultiBoxLoss
from singleshot.models.build import build_ssd
from singleshot.models.compact import CompactBackbone
from singleshot.models.extras import ExtraSpec
from singleshot.models.spec import Part
from singleshot.presets import _extras, _prior_config, get_preset
from singleshot.transforms import preprocess

CONFIDENT = 0.5  # detections the fitted model is sure of (its true positives score ~0.9)


def small_compact(class_names):
    """The compact preset's parts, narrower and for 64 px (three levels: 8x8, 4x4, 2x2)."""
    spec = get_preset("ssd160_compact").spec.replace(
        backbone=Part(CompactBackbone, {"widths": [8, 16, 16, 32, 32]}),
        extras=_extras((ExtraSpec(16, 32, 3, 2, 1),), batch_norm=True),
        prior_config=_prior_config(64, (8, 4, 2), (8, 16, 32), (12, 24, 40), (24, 40, 64), ((2,),) * 3),
        num_classes=len(class_names),
        class_names=tuple(class_names),
    )
    return build_ssd(spec, preset="ssd160_compact")


def fit(model, dataset, steps=20):
    """Full-batch Adam on the whole (tiny) dataset: the model learns its objects."""
    images, targets = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        images.append(image)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        targets.append({"boxes": target["boxes"] / scale, "labels": target["labels"]})
    x = preprocess(images, model.image_size, model.image_mean)
    loss = MultiBoxLoss(model.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        loc, conf = model(x)
        loss_loc, loss_conf = loss(loc, conf, model.priors, targets)
        optimizer.zero_grad()
        (loss_loc + loss_conf).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(data root, checkpoint, model) with the model at mAP 1 on the data's train split."""
    root = tmp_path_factory.mktemp("int8")
    data = write_dataset(root / "data", "voc", num_train=16, num_test=4, size=64, seed=3, max_objects=2,
                         min_size=0.3)  # fmt: skip
    train = open_dataset(data, split="train")
    torch.manual_seed(0)
    model = fit(small_compact(train.classes), train)
    assert evaluate_model(model, train, progress=False)["map"] > 0.9  # a real signal to keep
    save_checkpoint(root / "model.pt", model)
    return data, root / "model.pt", model


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    """`singleshot export --int8 --val-data` run as a user runs it; its stdout and output file."""
    data, checkpoint, _ = fitted
    out = tmp_path_factory.mktemp("out") / "model.int8.onnx"
    command = [sys.executable, "-m", "singleshot.cli", "export", "--checkpoint", str(checkpoint),
               "--format", "onnx", "--with-postprocess", "--int8", "--calibration", str(data),
               "--calibration-images", "8", "--val-data", str(data), "--val-split", "train", "--threads", "1",
               "--no-progress", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout, out


def count_ops(graph):
    counts = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_file_is_qdq_with_the_first_convolution_in_float(exported):
    _, out = exported
    graph = onnx.load(str(out)).graph
    counts = count_ops(graph)
    convs = [node for node in graph.node if node.op_type == "Conv"]
    # every convolution but the first reads dequantised int8 activations and weights
    producer = {name: node for node in graph.node for name in node.output}
    first = [conv for conv in convs if conv.input[0] == "images"]
    assert len(first) == 1
    quantized = [conv for conv in convs if conv.input[0] in producer
                 and producer[conv.input[0]].op_type == "DequantizeLinear"]  # fmt: skip
    assert len(quantized) == len(convs) - 1 and first[0] not in quantized
    assert all(producer[conv.input[1]].op_type == "DequantizeLinear" for conv in quantized)
    assert counts["QuantizeLinear"] >= len(quantized) and counts["DequantizeLinear"] >= 2 * len(quantized)
    # the first convolution's weights stay float32 initialisers
    initialisers = {tensor.name: tensor for tensor in graph.initializer}
    assert initialisers[first[0].input[1]].data_type == onnx.TensorProto.FLOAT
    # post-processing stays in the graph, float
    assert counts["NonMaxSuppression"] == 1
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "counts"]
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["singleshot"])
    assert meta["int8"]["float_layers"] == ["first"] and meta["int8"]["calibration_images"] == 8


def test_int8_detections_agree_with_the_float_model(fitted, exported):
    data, _, model = fitted
    _, out = exported
    train = open_dataset(data, split="train")
    images = [train[i][0] for i in range(len(train))]
    detector = OnnxDetector(out, threads=1)
    assert detector.class_names == list(train.classes)
    reference = model.predict(images)
    matched = 0
    for float_det, int8_det in zip(reference, detector.predict(images)):
        for box, label in zip(float_det["boxes"][float_det["scores"] > CONFIDENT],
                              float_det["labels"][float_det["scores"] > CONFIDENT]):  # fmt: skip
            same = int8_det["labels"] == label
            # VOC's rule for one detection standing for another: IoU >= 0.5, same class
            assert same.any() and float(iou(box[None], int8_det["boxes"][same]).max()) >= 0.5
            matched += 1
    assert matched >= len(train)  # every image has an object the model is sure of


def test_report_has_both_maps_and_timings(fitted, exported):
    data, _, model = fitted
    stdout, out = exported
    report = json.loads(out.with_name("model.int8.report.json").read_text())
    train = open_dataset(data, split="train")
    # the float file's mAP is the checkpoint's (the exported float graph computes the same boxes)
    assert report["float"]["map"] == pytest.approx(
        evaluate_model(model, train, progress=False)["map"], abs=1e-3
    )
    assert report["metric"] == "voc07" and report["num_images"] == len(train)
    assert report["int8"]["map"] >= report["float"]["map"] - 0.05
    assert report["map_change_points"] == pytest.approx(
        100 * (report["int8"]["map"] - report["float"]["map"])
    )
    for name in ("float", "int8"):
        assert report[name]["ms_per_image"] > 0
    assert report["speedup"] == pytest.approx(
        report["float"]["ms_per_image"] / report["int8"]["ms_per_image"]
    )
    assert report["timing"]["threads"] == 1 and report["timing"]["batch"] == 1
    assert report["calibration"].endswith("(train)") and report["int8_settings"]["calibration_images"] == 8
    assert "int8 changes mAP by" in stdout and "calibrating on 8 images" in stdout


def test_heads_kept_in_float_and_a_network_only_int8_file(fitted, tmp_path):
    data, _, model = fitted
    float_path = export_onnx(model, tmp_path / "float.onnx")
    graph = onnx.load(str(float_path)).graph
    heads = float_layer_nodes(graph, ["heads"])
    assert len(heads) == 2 * len(model.prior_config.feature_maps)  # loc and conf per level
    assert set(float_layer_nodes(graph, ["first"])) & set(heads) == set()
    out = quantize_onnx(float_path, tmp_path / "int8.onnx", calibration_images(data, 8),
                        float_layers=["first", "heads"])  # fmt: skip
    quantized = onnx.load(str(out)).graph
    producer = {name: node for node in quantized.node for name in node.output}
    convs = [node for node in quantized.node if node.op_type == "Conv"]
    for node in convs:
        in_float = node.name in heads or node.input[0] == "images"
        int8_weights = node.input[1] in producer and producer[node.input[1]].op_type == "DequantizeLinear"
        assert int8_weights != in_float, node.name
    assert sum(node.name in heads for node in convs) == len(heads)
    # network only: loc and conf stay close to float (int8 noise, far below the logits' spread)
    images = [open_dataset(data, split="train")[i][0] for i in range(4)]
    x = preprocess(images, model.image_size, model.image_mean)
    loc8, conf8 = OnnxDetector(out, threads=1).run(x)
    with torch.no_grad():
        loc, conf = model(x)
    for int8, reference in ((loc8, loc), (conf8, conf)):
        assert float((int8 - reference).norm() / reference.norm()) < 0.1


def tiny_graph():
    """images -> Conv -> Relu -> Conv (the head) -> Softmax -> Mul by 2 -> TopK -> scores, index."""
    h = onnx.helper
    weights = [
        h.make_tensor(f"w{k}", onnx.TensorProto.FLOAT, (2, 2, 1, 1), [1.0, 0.0, 0.0, 1.0]) for k in (1, 2)
    ]
    two = h.make_tensor("two", onnx.TensorProto.FLOAT, (), [2.0])
    k = h.make_tensor("k", onnx.TensorProto.INT64, (1,), [1])
    nodes = [
        h.make_node("Conv", ["images", "w1"], ["a"], name="stem"),
        h.make_node("Relu", ["a"], ["b"], name="stem_relu"),
        h.make_node("Conv", ["b", "w2"], ["c"], name="head"),
        h.make_node("Softmax", ["c"], ["d"], name="softmax", axis=1),
        h.make_node("Mul", ["d", "two"], ["e"], name="double"),
        h.make_node("TopK", ["e", "k"], ["scores", "index"], name="topk", axis=1),
    ]
    graph = h.make_graph(
        nodes, "tiny", [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, (1, 2, 1, 1))],
        [h.make_tensor_value_info(name, t, None) for name, t in
         (("scores", onnx.TensorProto.FLOAT), ("index", onnx.TensorProto.INT64))],
        [*weights, two, k],
    )  # fmt: skip
    return graph


def test_network_nodes_stop_at_the_heads_and_float_layers_are_found_by_position():
    graph = tiny_graph()
    # the Mul is a quantisable type, but after the last convolution: post-processing
    assert network_nodes(graph) == ["stem", "stem_relu", "head"]
    assert float_layer_nodes(graph, ["first"]) == ["stem"]
    assert float_layer_nodes(graph, ["heads"]) == ["head"]
    assert float_layer_nodes(graph, ["heads", "first"]) == ["stem", "head"]
    assert float_layer_nodes(graph, []) == []
    with pytest.raises(ValueError, match="unknown float layers"):
        float_layer_nodes(graph, ["tail"])


def test_calibration_images_from_a_folder_tree_and_a_dataset_root(tmp_path, fitted):
    assert evenly_spaced(10, 4) == [0, 2, 5, 7] and evenly_spaced(3, 8) == [0, 1, 2]
    rng = np.random.default_rng(0)
    for relative in ("a/1.png", "a/b/2.jpg", "3.bmp", "c/4.png"):
        (tmp_path / "imgs" / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / relative)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    images = calibration_images(tmp_path / "imgs", count=3)
    # sorted paths 3.bmp, a/1.png, a/b/2.jpg, c/4.png; three evenly spaced: indices 0, 1, 2
    assert [n.split("imgs/")[1] for n in images.names] == ["3.bmp", "a/1.png", "a/b/2.jpg"]
    assert images[1].dtype == torch.uint8 and tuple(images[1].shape) == (3, 20, 30)
    data = fitted[0]
    from_root = calibration_images(data, count=5, split="test")
    test = open_dataset(data, split="test")
    assert len(from_root) == 4 and torch.equal(from_root[2], test[2][0])
    # batches are the model's input: resized, mean subtracted
    batches = ImageBatches(from_root, 64, (123.0, 117.0, 104.0), None, "images", batch_size=3)
    first, second = batches.get_next(), batches.get_next()
    assert first["images"].shape == (3, 3, 64, 64) and second["images"].shape == (1, 3, 64, 64)
    assert batches.get_next() is None
    expected = preprocess([test[3][0]], 64, (123.0, 117.0, 104.0)).numpy()
    np.testing.assert_array_equal(second["images"], expected)
    batches.rewind()
    np.testing.assert_array_equal(batches.get_next()["images"], first["images"])


def test_bad_int8_requests_are_clear_errors(fitted, tmp_path, capsys):
    data, checkpoint, _ = fitted
    base = ["export", "--checkpoint", str(checkpoint), "--with-postprocess"]
    out = str(tmp_path / "m.onnx")
    cases = [
        (["--format", "onnx", "--int8", out], "--int8 needs --calibration DATA"),
        (["--format", "torchscript", "--int8", "--calibration", str(data), out], "--format onnx or openvino"),
        (["--format", "onnx", "--calibration", str(data), out], "--calibration apply to --int8 exports only"),
        (["--format", "onnx", "--int8", "--calibration", str(tmp_path / "empty"), out],
         f"{tmp_path / 'empty'}: no images to calibrate with"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--float-layers", "tail", out],
         "--float-layers 'tail'"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--calibration-images", "0", out],
         "--calibration-images must be >= 1"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--freeze", out],
         "--freeze applies to --format torchscript only"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--verify", out],
         "--verify compares with PyTorch at float precision; for int8 use --val-data DIR"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--threads", "0", out],
         "--threads must be >= 1"),
        (["--format", "onnx", "--int8", "--calibration", str(tmp_path / "absent"), out],
         f"{tmp_path / 'absent'}: calibration data must be a folder of images or a dataset root"),
        (["--format", "onnx", "--int8", "--calibration", str(data), "--calibration-split", "val", out],
         f"{data}: no split 'val' in this voc dataset (found: test, train)"),
    ]  # fmt: skip
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    for extra, message in cases:
        assert main(base + extra) == 1
        error = capsys.readouterr().err
        assert message in error, error
    assert not (tmp_path / "m.onnx").exists()


def test_openvino_int8_ir_gives_the_int8_onnx_detections(fitted, tmp_path):
    """``--format openvino --int8``: the quantised ONNX file converted to IR, run by OpenVINO."""
    from ci import openvino_runs
    from singleshot.export import load_detector

    data, checkpoint, _ = fitted
    onnx_out, ir_out = tmp_path / "m.int8.onnx", tmp_path / "m.int8.xml"
    for fmt, out in (("onnx", onnx_out), ("openvino", ir_out)):
        args = ["export", "--checkpoint", str(checkpoint), "--format", fmt, "--with-postprocess",
                "--int8", "--calibration", str(data), "--calibration-images", "8", "--no-progress",
                str(out)]  # fmt: skip
        assert main(args) == 0
    assert ir_out.with_suffix(".bin").is_file()
    if not openvino_runs():
        pytest.skip("OpenVINO's CPU plugin does not run with oneDNN forced down to SSE4.1")
    ir, reference = load_detector(ir_out), OnnxDetector(onnx_out, threads=1)
    assert ir.runtime == "openvino" and ir.metadata["int8"] == reference.metadata["int8"]
    train = open_dataset(data, split="train")
    images = [train[i][0] for i in range(len(train))]
    for got, want in zip(ir.predict(images), reference.predict(images)):
        confident = want["scores"] > CONFIDENT
        for box, label in zip(want["boxes"][confident], want["labels"][confident]):
            same = got["labels"] == label  # the same int8 graph, another runtime's kernels
            assert same.any() and float(iou(box[None], got["boxes"][same]).max()) >= 0.5
