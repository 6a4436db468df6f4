"""The ``--fast / --no-fast`` and ``--winograd / --no-winograd`` options shared by ``detect`` and
``eval``, and the memory format they run the model in (`apply_layout`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..layout import LayoutDecision
    from ..models.ssd import SSD

ModelT = TypeVar("ModelT", bound="nn.Module")


def add_winograd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--winograd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on the CPU, run VGG16's 3x3 convolutions with 128+ channels by Winograd's F(4x4, 3x3) "
        "(C kernels built once with the machine's compiler, with a one-line note, or ahead of time by "
        "`singleshot build-kernels`; 1.4-1.6x faster end to end on a 2-core "
        "AVX-512 CPU, equal to the direct convolution within float32 rounding). Default: on for "
        "--device cpu, falling back to the direct convolution with a note when no C compiler is "
        "found; --winograd makes that an error, --no-winograd turns it off",
    )


def apply_winograd(model: nn.Module, choice: bool | None, device: str | torch.device) -> bool:
    """Convert ``model`` in place as ``--winograd`` asks; returns whether it was converted."""
    import torch

    from ..winograd import KernelBuildError, use_winograd

    if choice is False:
        return False
    if torch.device(device).type != "cpu":
        if choice:
            raise ValueError("--winograd is for the CPU (on a GPU, cuDNN chooses its own algorithms)")
        return False
    try:
        use_winograd(model)
    except KernelBuildError as error:
        if choice:
            raise ValueError(f"--winograd: {error}") from None
        print(f"note: direct convolutions ({error})", file=sys.stderr)
        return False
    return True


def add_fast_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run an inference-only copy of the model: BatchNorm folded into the convolutions and "
        "squeeze-excitation convolutions as matrix products (singleshot.fastpath.fuse_for_inference; "
        "equal to the model within float32 rounding, the checkpoint untouched; for SSDLite320 on a "
        "2-core AVX-512 CPU see benchmarks/README.md). Default: on for --device cpu in float32; "
        "--no-fast runs the model as loaded",
    )


def apply_fast(model: ModelT, choice: bool | None, device: str | torch.device, half: bool = False) -> ModelT:
    """The model to run as ``--fast`` asks: `fuse_for_inference`'s copy, or ``model`` itself."""
    import torch

    from ..fastpath import fuse_for_inference

    if choice is False or (choice is None and (half or torch.device(device).type != "cpu")):
        return model
    return fuse_for_inference(model)


def apply_layout(model: SSD, device: str | torch.device, batch_size: int) -> LayoutDecision:
    """Put ``model`` (an SSD, plain or converted) in the faster memory format for inference, in place.

    A model with Winograd convolutions runs channels-last (their C kernels read that layout):
    no choice. Otherwise a forward-only trial of both layouts at (a part of) ``batch_size``
    decides, once per machine and model (`singleshot.layout.choose_memory_format`, cached);
    a note on stderr says what a new trial measured.
    """
    from ..layout import apply_memory_format, choose_memory_format, forced_layout, trial_batch_size
    from ..winograd.module import WinogradConv2d

    if any(isinstance(module, WinogradConv2d) for module in model.modules()):
        decision = forced_layout(True, "the Winograd convolutions")
    else:
        size = model.image_size
        shape = (trial_batch_size(batch_size, size), 3, size, size)
        decision = choose_memory_format(model, shape, training=False)
        if decision.source == "measured":
            print(f"note: memory format {decision.describe()}", file=sys.stderr)
    apply_memory_format(model, decision)
    return decision
