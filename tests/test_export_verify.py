"""`singleshot.export.verify_export`: an exported file checked against its PyTorch model."""

import copy

import pytest
import torch

from singleshot.export import export_onnx, export_torchscript, verify_export
from test_export import make_compact, make_model

OPTIONS = {"score_threshold": 0.01, "nms_threshold": 0.45, "pre_nms_top_k": 200, "max_detections": 50,
           "clip": False}  # fmt: skip


@pytest.fixture(scope="module")
def compact():
    return make_compact()


def test_torchscript_network_and_detector_verify(compact, tmp_path):
    network = export_torchscript(compact, tmp_path / "net.pt")
    report = verify_export(compact, network, "torchscript")
    assert report.startswith("verified: loc and conf match PyTorch")
    detector = export_torchscript(compact, tmp_path / "det.pt", with_postprocess=True, **OPTIONS)
    report = verify_export(compact, detector, "torchscript", with_postprocess=True, postprocess=OPTIONS)
    assert "100.0% of rows with the same label and box" in report


def test_onnx_network_verifies(tmp_path):
    model = make_model()
    path = export_onnx(model, tmp_path / "net.onnx")
    assert "max abs difference" in verify_export(model, path, "onnx")


def test_mismatches_raise_naming_the_file(compact, tmp_path):
    network = export_torchscript(compact, tmp_path / "net.pt")
    changed = copy.deepcopy(compact)
    with torch.no_grad():
        changed.head.conf[0].bias += 0.01  # above the 1e-3 network tolerance
    with pytest.raises(ValueError, match=r"net\.pt: outputs differ from PyTorch by up to 0\.01"):
        verify_export(changed, network, "torchscript")

    detector = export_torchscript(compact, tmp_path / "det.pt", with_postprocess=True, **OPTIONS)
    # other thresholds in the reference graph: other detection counts
    with pytest.raises(ValueError, match=r"det\.pt: detection counts \[50, 50\] differ"):
        verify_export(compact, detector, "torchscript", True, {**OPTIONS, "max_detections": 10})
    with pytest.raises(ValueError, match=r"det\.pt: unknown export format 'tflite'"):
        verify_export(compact, detector, "tflite")
