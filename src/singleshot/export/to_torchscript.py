"""TorchScript export: the traced network, optionally wrapped with scripted post-processing.

The saved file loads with ``torch.jit.load`` in any process that has imported torch and
torchvision (for ``torchvision::nms``); singleshot itself is not needed. The model's
description is stored beside the graph as the extra file ``singleshot.json``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..fileio import atomic_write
from .graph import DetectorGraph, TorchNMS
from .to_onnx import export_metadata, postprocess_settings

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.ssd import SSD

__all__ = ["export_torchscript", "METADATA_FILE"]

METADATA_FILE = "singleshot.json"


def export_torchscript(
    model: SSD,
    path: str | os.PathLike,
    with_postprocess: bool = False,
    freeze: bool = False,
    **postprocess: Any,
) -> Path:
    """Write an SSD as TorchScript.

    Args:
        model: a `singleshot.SSD` (exported in eval mode, float32, on its current device).
        path: the ``.pt`` file to write.
        with_postprocess: False: ``images`` (B, 3, S, S) -> ``loc`` (B, P, 4), ``conf`` (B, P, C).
            True: the whole detector (`DetectorGraph`, NMS by torchvision) -> ``boxes``
            (B, K, 4) xyxy fractions, ``scores`` (B, K), ``labels`` int64 (B, K), ``counts`` (B,).
        freeze: `torch.jit.freeze` the module (weights become constants; faster inference,
            no longer trainable).
        **postprocess: as in `singleshot.export.export_onnx`.
    """
    params = postprocess_settings(model, postprocess)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().eval()
    device = next(model.parameters()).device
    example = torch.zeros(2, 3, model.image_size, model.image_size, device=device)
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, yet still what C++ / mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = _script(model, example, with_postprocess, params, freeze)
        meta = export_metadata(model, with_postprocess, params)
        # through a Python file: saved to a path, a failed write (a full disk) aborts the process
        extra = {METADATA_FILE: json.dumps(meta)}
        return atomic_write(path, lambda handle: torch.jit.save(scripted, handle, _extra_files=extra))


def _script(
    model: SSD, example: Tensor, with_postprocess: bool, params: dict[str, Any], freeze: bool
) -> torch.jit.ScriptModule:
    with torch.no_grad():
        network = torch.jit.trace(model, example, check_trace=False)
    if with_postprocess:
        graph = DetectorGraph(
            network,
            model.priors,
            model.num_classes,
            **params,
            nms=TorchNMS(params["nms_threshold"], params["score_threshold"]),
        ).eval()
        scripted = torch.jit.script(graph)
    else:
        scripted = network
    if freeze:
        scripted = torch.jit.freeze(scripted.eval())
    return scripted
