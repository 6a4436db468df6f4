"""The post-processing graph in ONNX Runtime against `detect`, on logits chosen by the test.

The network is replaced by one that reads ``loc`` and ``conf`` straight from its input, so
the scores are exactly the test's: rows of (image, class) with more candidates above the
threshold than ``pre_nms_top_k``, rows with fewer and rows with none, images the
``max_detections`` cap binds on and an image it does not.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from singleshot.export import DetectorGraph, ForegroundScoresByProducts, outputs_to_detections
from singleshot.export.onnx_ops import ONNX_TRANSLATIONS, OnnxNMS
from singleshot.postprocess import detect

PRIORS, CLASSES, SIDE = 60, 4, 13  # 60 priors, 3 foreground classes, 13 x 13 input
THRESHOLD, TOP_K, IOU = 0.2, 6, 0.45


class InputAsOutputs(torch.nn.Module):
    """x (B, 3, 13, 13) -> loc (B, 60, 4), conf (B, 60, 4): the first 240 and next 240 values."""

    def forward(self, x):
        flat = x.flatten(1)
        size = PRIORS * 4
        return flat[:, :size].reshape(-1, PRIORS, 4), flat[:, size : 2 * size].reshape(-1, PRIORS, CLASSES)


def make_inputs():
    """Three images of loc offsets and logits; each (image, class) row gets an offset that
    puts few (-2.5) or many (+1.5) of its scores above the threshold."""
    g = torch.Generator().manual_seed(7)
    centres, sizes = torch.rand(PRIORS, 2, generator=g), 0.1 + 0.3 * torch.rand(PRIORS, 2, generator=g)
    priors = torch.cat([centres, sizes], 1)  # (P, 4) cxcywh
    loc = 0.5 * torch.randn(3, PRIORS, 4, generator=g)
    conf = torch.randn(3, PRIORS, CLASSES, generator=g)
    offsets = torch.tensor([[1.5, -2.5, 1.5], [-2.5, -2.5, 1.5], [-2.5, -2.5, -2.5]])
    conf[:, :, 1:] += offsets[:, None, :]
    x = torch.zeros(3, 3 * SIDE * SIDE)
    x[:, : PRIORS * 4] = loc.flatten(1)
    x[:, PRIORS * 4 : PRIORS * 4 + PRIORS * CLASSES] = conf.flatten(1)
    return priors, loc, conf, x.reshape(3, 3, SIDE, SIDE)


def export_graph(priors, max_detections, path):
    # the NMS and the softmax export_onnx builds the graph with
    graph = DetectorGraph(
        InputAsOutputs(), priors, CLASSES, score_threshold=THRESHOLD, nms_threshold=IOU,
        pre_nms_top_k=TOP_K, max_detections=max_detections, nms=OnnxNMS(IOU, THRESHOLD),
        scores=ForegroundScoresByProducts(),
    ).eval()  # fmt: skip
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (torch.zeros(3, 3, SIDE, SIDE),), dynamo=True, opset_version=18,
            input_names=["images"], custom_translation_table=ONNX_TRANSLATIONS,
        )  # fmt: skip
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("max_detections", [None, 10])
def test_onnx_cuts_equal_detect_where_top_k_and_cap_bind_on_some_rows(tmp_path, max_detections):
    priors, loc, conf, x = make_inputs()
    scores = conf.softmax(-1)
    above = (scores[:, :, 1:] > THRESHOLD).sum(1)  # (image, class) candidates
    # the top-k binds on some rows and not on others, and some rows have no candidate at all
    assert (above > TOP_K).any() and ((above > 0) & (above < TOP_K)).any() and (above == 0).any()
    expected = detect(loc, scores, priors, THRESHOLD, IOU, TOP_K, max_detections, clip=False)
    uncut = detect(loc, scores, priors, THRESHOLD, IOU, PRIORS, None, clip=False)
    counts = [len(d["scores"]) for d in expected]
    # the top-k changes the result; the cap binds on images 0 and 2 (12 and 17 survive NMS), not on 1
    assert [len(d["scores"]) for d in uncut] != [12, 6, 17]
    assert counts == ([12, 6, 17] if max_detections is None else [10, 6, 10])

    boxes, out_scores, labels, out_counts = export_graph(priors, max_detections, tmp_path / "g.onnx").run(
        None, {"images": x.numpy()}
    )
    assert out_counts.tolist() == counts
    assert out_scores.shape[1] == (max_detections or (CLASSES - 1) * TOP_K)
    assert np.all(out_scores[1, 6:] == 0) and np.all(labels[1, 6:] == 0) and np.all(boxes[1, 6:] == 0)
    got = outputs_to_detections(boxes, out_scores, labels, out_counts)
    for a, b in zip(got, expected):
        assert a["labels"].tolist() == b["labels"].tolist()
        # ONNX Runtime's softmax and decoding may round differently in the last bit
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-5, rtol=0)
