"""The exported post-processing's parts: `PriorDecoder` against `decode`, the foreground
scores against a float64 softmax, `gather_rows` and `surviving_scores` by hand, and their
ONNX translations in ONNX Runtime against PyTorch."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from singleshot.boxes import LOG_SIZE_CLAMP, decode
from singleshot.export import (
    ForegroundScores,
    ForegroundScoresByProducts,
    PriorDecoder,
    TorchNMS,
    surviving_scores,
)
from singleshot.export.graph import gather_rows
from singleshot.export.onnx_ops import ONNX_TRANSLATIONS, OnnxNMS


def test_prior_decoder_by_hand():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # cxcywh
    # dx = 1, dy = -1 shift the centre by 0.1 of the size; dh = ln(2) / 0.2 doubles the height
    loc = torch.tensor([[[1.0, -1.0, 0.0, math.log(2.0) / 0.2]]])
    boxes = PriorDecoder(priors, (0.1, 0.2), LOG_SIZE_CLAMP)(loc)
    # centre (0.52, 0.46), size (0.2, 0.8)
    torch.testing.assert_close(boxes, torch.tensor([[[0.42, 0.06, 0.62, 0.86]]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_priors", [1, 7, 3208, 8732])
def test_prior_decoder_equals_decode_bit_for_bit(num_priors):
    g = torch.Generator().manual_seed(num_priors)
    centres, sizes = torch.rand(num_priors, 2, generator=g), 0.01 + torch.rand(num_priors, 2, generator=g)
    priors = torch.cat([centres, sizes], 1)
    loc = 3 * torch.randn(3, num_priors, 4, generator=g)
    loc[0, :, 2:] += 25  # the log-size clamp binds on most of image 0's sizes
    assert (loc[0, :, 2:] * 0.2 > LOG_SIZE_CLAMP).any()
    for variances in [(0.1, 0.2), (0.125, 0.3)]:
        ours = PriorDecoder(priors, variances, LOG_SIZE_CLAMP)(loc)
        assert torch.equal(ours, decode(loc, priors, variances, LOG_SIZE_CLAMP))


def test_prior_decoder_keeps_its_constants_on_the_priors_device():
    # "meta" stands in for a GPU: a constant made on the CPU would be left behind there
    decoder = PriorDecoder(torch.rand(5, 4, device="meta"), (0.1, 0.2), LOG_SIZE_CLAMP)
    assert {buffer.device.type for buffer in decoder.buffers()} == {"meta"}
    assert decoder(torch.zeros(2, 5, 4, device="meta")).shape == (2, 5, 4)


def test_prior_decoder_scripts():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.3, 0.3]])
    decoder = PriorDecoder(priors, (0.1, 0.2), LOG_SIZE_CLAMP)
    loc = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.jit.script(decoder)(loc), decoder(loc))


def boxes_and_scores():
    """Image 0: boxes 0 and 1 overlap (IoU 0.9), box 2 stands apart; image 1: three apart."""
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45], [0.6, 0.6, 0.9, 0.9]],
            [[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]],
        ]
    )
    scores = torch.tensor(
        [
            [[0.9, 0.8, 0.3], [0.2, 0.7, 0.0]],  # class 1: box 1 loses to 0; class 2: box 0 loses to 1
            [[0.5, 0.1, 0.0], [0.0, 0.0, 0.6]],  # 0.1 is at the threshold: not a candidate
        ]
    )
    return boxes, scores


def test_surviving_scores_by_hand():
    boxes, scores = boxes_and_scores()
    expected = torch.tensor([[[0.9, 0.0, 0.3], [0.0, 0.7, 0.0]], [[0.5, 0.0, 0.0], [0.0, 0.0, 0.6]]])
    assert torch.equal(surviving_scores(boxes, scores, 0.45, 0.1), expected)
    assert torch.equal(TorchNMS(0.45, 0.1)(boxes, scores), expected)
    # with an IoU threshold above the overlap nothing is suppressed
    assert torch.equal(surviving_scores(boxes, scores, 0.95, 0.1)[0], scores[0])
    assert torch.equal(surviving_scores(boxes, scores, 0.45, 0.95), torch.zeros_like(scores))


class SurvivorsGraph(torch.nn.Module):
    def __init__(self, iou, threshold):
        super().__init__()
        self.nms = OnnxNMS(iou, threshold)

    def forward(self, boxes, scores):
        return self.nms(boxes, scores)


def test_surviving_scores_onnx_equals_pytorch(tmp_path):
    g = torch.Generator().manual_seed(4)
    corner = torch.rand(2, 300, 2, generator=g)
    boxes = torch.cat([corner, corner + 0.05 + 0.3 * torch.rand(2, 300, 2, generator=g)], -1)
    scores = torch.rand(2, 4, 300, generator=g)
    for iou, threshold in [(0.45, 0.25), (0.7, 0.9)]:
        batch, priors = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("priors", min=2, max=10**5)
        with torch.no_grad():
            program = torch.onnx.export(
                SurvivorsGraph(iou, threshold), (boxes, scores), dynamo=True, opset_version=18,
                input_names=["boxes", "scores"], custom_translation_table=ONNX_TRANSLATIONS,
                dynamic_shapes=({0: batch, 1: priors}, {0: batch, 2: priors}),
            )  # fmt: skip
        program.save(str(tmp_path / "nms.onnx"))
        session = ort.InferenceSession(str(tmp_path / "nms.onnx"), providers=["CPUExecutionProvider"])
        for b, p in [(2, 300), (1, 57)]:  # the export's shapes and others
            ours = surviving_scores(boxes[:b, :p], scores[:b, :, :p], iou, threshold)
            feeds = {"boxes": boxes[:b, :p].numpy(), "scores": scores[:b, :, :p].numpy()}
            theirs = session.run(None, feeds)[0]
            assert ours.count_nonzero() > 0
            assert np.array_equal(theirs, ours.numpy())


def test_gather_rows_by_hand():
    # image 0: rows [0 1] [2 3] [4 5]; image 1: [6 7] [8 9] [10 11]
    table = torch.arange(12.0).reshape(2, 3, 2)
    index = torch.tensor([[2, 0, 2], [1, 1, 0]])
    expected = torch.tensor([[[4.0, 5], [0, 1], [4, 5]], [[8, 9], [8, 9], [6, 7]]])
    assert torch.equal(gather_rows(table, index), expected)
    assert gather_rows(table, index[:, :0]).shape == (2, 0, 2)


class GatherRowsGraph(torch.nn.Module):
    def forward(self, table, index):
        return gather_rows(table, index)


def test_gather_rows_onnx_equals_pytorch_for_any_batch(tmp_path):
    g = torch.Generator().manual_seed(5)
    table, index = torch.randn(3, 40, 4, generator=g), torch.randint(0, 40, (3, 25), generator=g)
    batch, rows = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("rows", min=2, max=10**5)
    with torch.no_grad():
        program = torch.onnx.export(
            GatherRowsGraph(), (table, index), dynamo=True, opset_version=18, input_names=["table", "index"],
            dynamic_shapes=({0: batch, 1: rows}, {0: batch}),
        )  # fmt: skip
    program.save(str(tmp_path / "rows.onnx"))
    session = ort.InferenceSession(str(tmp_path / "rows.onnx"), providers=["CPUExecutionProvider"])
    for b, r in [(3, 40), (1, 40), (2, 31)]:  # the export's shapes and others
        chosen = index[:b] % r
        theirs = session.run(None, {"table": table[:b, :r].numpy(), "index": chosen.numpy()})[0]
        assert np.array_equal(theirs, gather_rows(table[:b, :r], chosen).numpy())
        assert np.array_equal(theirs[b - 1, 0], table[b - 1, int(chosen[b - 1, 0])].numpy())


def reference_scores(conf):
    """Foreground softmax scores (B, C-1, P) in float64, written out as the formula."""
    shifted = conf.double() - conf.double().max(dim=-1, keepdim=True).values
    return (shifted.exp() / shifted.exp().sum(-1, keepdim=True)).transpose(1, 2)[:, 1:]


def test_foreground_scores_by_hand():
    # 1 image, 2 priors, 3 classes: exponentials (1, 1, 2) / 4 and (3, 1, 1) / 5
    conf = torch.tensor([[[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0]]])
    expected = torch.tensor([[[0.25, 0.2], [0.5, 0.2]]])  # (1, 2 foreground classes, 2 priors)
    for module in (ForegroundScores(), ForegroundScoresByProducts()):
        torch.testing.assert_close(module(conf), expected, atol=1e-7, rtol=0)


def test_foreground_scores_by_products_equal_the_softmax():
    g = torch.Generator().manual_seed(6)
    conf = 8 * torch.randn(2, 500, 21, generator=g)
    conf[0, :50] += 1000.0  # exp alone would overflow: the max is subtracted first
    conf[1, :50] -= 1000.0
    conf[1, 50:60, 3] = -math.inf  # a class ruled out
    expected = reference_scores(conf)
    products, softmax = ForegroundScoresByProducts()(conf), ForegroundScores()(conf)
    assert products.shape == softmax.shape == (2, 20, 500)
    assert torch.isfinite(products).all() and (products[1, 2, 50:60] == 0).all()
    torch.testing.assert_close(products.double(), expected, atol=3e-7, rtol=1e-6)
    assert torch.equal(softmax, torch.softmax(conf, -1).transpose(1, 2)[:, 1:])


def test_foreground_scores_by_products_in_onnx_runtime(tmp_path):
    g = torch.Generator().manual_seed(8)
    conf = 6 * torch.randn(2, 300, 7, generator=g)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.onnx.export(
            ForegroundScoresByProducts(), (conf,), dynamo=True, opset_version=18, input_names=["conf"],
            dynamic_shapes=({0: batch},),
        )  # fmt: skip
    program.save(str(tmp_path / "scores.onnx"))
    session = ort.InferenceSession(str(tmp_path / "scores.onnx"), providers=["CPUExecutionProvider"])
    for b in (2, 1):
        theirs = session.run(None, {"conf": conf[:b].numpy()})[0]
        np.testing.assert_allclose(theirs, reference_scores(conf[:b]).numpy(), atol=3e-7, rtol=1e-6)
