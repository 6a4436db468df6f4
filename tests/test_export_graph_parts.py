"""The exported post-processing's parts: `PriorDecoder` against `decode`, `surviving_scores`
by hand and its ONNX translation in ONNX Runtime against PyTorch."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from singleshot.boxes import LOG_SIZE_CLAMP, decode
from singleshot.export import PriorDecoder, TorchNMS, surviving_scores
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
