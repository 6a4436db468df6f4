"""Checking an exported file against the PyTorch model it came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..transforms import std_divisor
from .graph import DetectorGraph
from .openvino import OpenVinoDetector
from .runtime import OnnxDetector, TorchScriptDetector
from .to_onnx import postprocess_settings

if TYPE_CHECKING:
    from ..models.ssd import SSD

__all__ = ["verify_export", "NETWORK_TOLERANCE", "SCORE_TOLERANCE"]

NETWORK_TOLERANCE = 1e-3  # loc and conf logits, absolute
SCORE_TOLERANCE = 1e-4  # post-processed scores (probabilities), absolute


def _random_batch(model: SSD) -> Tensor:
    """Two model inputs (2, 3, S, S): RGB uniform in [0, 255), minus the model's mean and
    divided by its std, seeded."""
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
    x = torch.rand(2, 3, size, size, generator=generator) * 255 - mean
    divisor = std_divisor(getattr(model, "image_std", None), (1, 3, 1, 1))
    return x if divisor is None else x / divisor


def _compare_network(path: str | os.PathLike, got: list[Tensor], expected: tuple[Tensor, ...]) -> str:
    worst = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    if worst > NETWORK_TOLERANCE:
        raise ValueError(f"{path}: outputs differ from PyTorch by up to {worst:.3g}")
    return f"verified: loc and conf match PyTorch (max abs difference {worst:.2e})"


def _compare_detections(path: str | os.PathLike, got: list[Tensor], expected: tuple[Tensor, ...]) -> str:
    boxes, scores, labels, counts = got
    ref_boxes, ref_scores, ref_labels, ref_counts = expected
    if not torch.equal(counts, ref_counts.to(counts.dtype)):
        raise ValueError(
            f"{path}: detection counts {counts.tolist()} differ from PyTorch's {ref_counts.tolist()}"
        )
    score_error = float((scores - ref_scores).abs().max()) if scores.numel() else 0.0
    if score_error > SCORE_TOLERANCE:
        raise ValueError(f"{path}: scores differ from PyTorch by up to {score_error:.3g}")
    same = (labels == ref_labels) & ((boxes - ref_boxes).abs().amax(-1) < SCORE_TOLERANCE)
    return (
        f"verified: {counts.tolist()} detections, scores within {score_error:.1e} of PyTorch, "
        f"{float(same.float().mean()):.1%} of rows with the same label and box"
    )


def verify_export(
    model: SSD,
    path: str | os.PathLike,
    fmt: str,
    with_postprocess: bool = False,
    postprocess: Mapping[str, Any] | None = None,
) -> str:
    """Run the exported file and ``model`` on two random inputs; return a one-line report.

    Args:
        model: the `SSD` that was exported (it is put in eval mode).
        path: the file `export_onnx`, `export_openvino` or `export_torchscript` wrote.
        fmt: "onnx" (run by ONNX Runtime), "openvino" (an IR, run by OpenVINO) or
            "torchscript" (torch.jit).
        with_postprocess: whether the file holds decoding and NMS (outputs boxes (B, K, 4)
            xyxy fractions, scores (B, K), labels (B, K), counts (B,)) or just the network
            (loc (B, P, 4), conf (B, P, C)).
        postprocess: the options it was exported with (`DetectorGraph`'s keywords); those
            left out are ``model.postprocess``'s, as the exporters do.

    Network outputs must agree within `NETWORK_TOLERANCE`. With post-processing, the
    detection counts must be equal and the scores agree within `SCORE_TOLERANCE`; boxes and
    labels are compared row by row and reported, not required (rows tied in score may
    legitimately come in another order).

    Raises:
        ValueError: an unknown ``fmt``, or a mismatch (the message names ``path``).
    """
    runners = {"onnx": OnnxDetector, "openvino": OpenVinoDetector, "torchscript": TorchScriptDetector}
    if fmt not in runners:
        raise ValueError(f"{path}: unknown export format {fmt!r}; choose {', '.join(runners)}")
    x = _random_batch(model)
    runner = runners[fmt](path)
    got = runner.run(x)
    with torch.no_grad():
        if not with_postprocess:
            return _compare_network(path, got, model.eval()(x))
        settings = postprocess_settings(model, postprocess or {})
        graph = DetectorGraph(model, model.priors, model.num_classes, **settings)
        return _compare_detections(path, got, graph.eval()(x))
