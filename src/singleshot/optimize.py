"""`optimize_for_inference`: an inference-only copy of an SSD with the conversions that help on
its device, the way ``singleshot detect`` and ``eval`` run a checkpoint.

    model = singleshot.load("ssd300_voc.pt")
    fast = model.optimize_for_inference()     # model itself is left as it was
    detections = fast.predict(images)         # the same detections to float32 rounding
    print(fast.optimizations.describe())

The conversions, in this order, each applied to the copy only:

1. BatchNorm folded into the convolution before it, squeeze-excitation 1x1 convolutions as
   matrix products (`singleshot.fastpath.fuse_batch_norms`, `pooled_to_linear`): the folded
   weights ``w * gamma / sqrt(var + eps)`` are rounded once; the products are summed in
   another order. Default: on for a float32 model on the CPU.
2. The backbone's 3x3 stride-1 convolutions with 64+ channels (VGG16's conv1_2 ... conv5_3)
   by Winograd's F(4x4, 3x3) (`singleshot.winograd.use_winograd` on ``model.backbone``), and
   the head's 3x3 predictors with 256+ inputs and 24+ outputs on maps of 10x10 and more
   (SSD300's conf on 38x38, loc and conf on 19x19 and 10x10; on smaller maps a 4x4 tile is
   mostly padding), C kernels built once with the machine's compiler; the ReLU after each,
   and the 2x2 max pooling after conv1_2, conv2_2 and conv3_3, run in its output transform
   (exact: pooling there or after gives the same bits). Float32 arithmetic in another order,
   whose rounding error can reach 16x the direct convolution's (still ~1e-6 relative).
   Default: on for a float32 model on the CPU; without a compiler the copy keeps direct
   convolutions and a `WinogradUnavailableWarning` says why.
3. The memory format (channels-last or NCHW) that a short timed trial of the converted copy
   at ``batch_size`` finds faster on this machine (`singleshot.layout.choose_memory_format`,
   cached per machine and model); channels-last without a trial when Winograd runs (its
   kernels read that layout). A layout changes only the convolutions' summation order.
4. For each Winograd convolution, the tile schedules that run fastest at ``batch_size`` and
   at one image on this machine (`singleshot.winograd.schedule.tune_winograd`: timed once
   per machine and layer shape, then cached); other batches take the nearest one's. They
   change no bit of the result.

So the copy's ``(loc, conf)`` equal the original's in eval mode to float32 rounding, and its
`predict` gives the same detections, scores and boxes within that rounding (a detection
whose score sits on a threshold, or ties with another, may come or go). Its last bits can
differ between machines, since the layout and the kernels do.

The copy is for running (`predict`, `singleshot.evaluation.evaluate_model`, ``model(x)``),
never for training or saving: ``.train()`` raises, as do `singleshot.checkpoint.save_checkpoint`
and every export (ONNX, OpenVINO, TorchScript, ``torch.export``); save and export the model
it was made from, which stays usable.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch

from . import fastpath
from .layout import LayoutDecision, apply_memory_format, choose_memory_format, forced_layout
from .models.ssd import SSD

__all__ = [
    "InferenceOptimizations",
    "WinogradUnavailableWarning",
    "inference_layout",
    "optimize_for_inference",
]

# Winograd for the backbone's convolutions with at least this many input and output channels
BACKBONE_MIN_CHANNELS = 64
# and for the head's predictors on maps of at least HEAD_MIN_GRID x HEAD_MIN_GRID cells with at
# least HEAD_MIN_INPUTS inputs and HEAD_MIN_OUTPUTS outputs. On an AMD EPYC (Zen 4, 2 threads,
# batch 1) SSD300's conf on 38x38 ran 1.9x, loc and conf on 19x19 1.8x and 2.4x, on 10x10 2.0x
# as fast as oneDNN's direct convolution (the whole model 1.06x-1.13x at batch 1-8), but its
# 16-output loc on 38x38 0.84x (half of each 32-channel panel was padding); the compact model's
# 128- and 192-channel predictors made it 0.92x-0.97x at batch 8
HEAD_MIN_GRID = 10
HEAD_MIN_INPUTS = 256
HEAD_MIN_OUTPUTS = 24


class WinogradUnavailableWarning(RuntimeWarning):
    """Winograd was on by default but its C kernels could not be built (no compiler, or it
    failed): the copy runs direct convolutions. Pass ``winograd=True`` to make it an error,
    ``winograd=False`` to not ask."""


@dataclass(frozen=True)
class InferenceOptimizations:
    """What `optimize_for_inference` did to its copy (the copy's ``optimizations``).

    Attributes:
        device: where the copy runs, e.g. ``"cpu"``.
        dtype: its parameters' dtype, e.g. ``"torch.float32"``.
        fused_batch_norms: the convolutions a BatchNorm was folded into (module names).
        pooled_linears: the squeeze-excitation 1x1 convolutions now run as ``F.linear``.
        winograd_convs: the convolutions run by Winograd's F(4x4, 3x3).
        winograd_fallback: why Winograd, on by default, did not run (the kernel build's
            error); None when it ran or was not on.
        layout: the memory format the copy runs in, and why (a trial's timings, or forced).
        winograd_schedules: (module name, batch size, block_tiles) of each tile schedule of a
            Winograd convolution chosen by timing (`singleshot.winograd.schedule`); empty when
            none was.
    """

    device: str
    dtype: str
    fused_batch_norms: tuple[str, ...]
    pooled_linears: tuple[str, ...]
    winograd_convs: tuple[str, ...]
    winograd_fallback: str | None
    layout: LayoutDecision
    winograd_schedules: tuple[tuple[str, int, int], ...] = ()

    def describe(self) -> str:
        """One line, e.g. ``cpu, torch.float32: BatchNorm folded into 14 convolutions, 10 convolutions
        by Winograd, channels-last (forced by the Winograd convolutions, no trial)``."""
        done = []
        if self.fused_batch_norms:
            done.append(f"BatchNorm folded into {_count(self.fused_batch_norms, 'convolution')}")
        if self.pooled_linears:
            done.append(f"{_count(self.pooled_linears, 'squeeze-excitation convolution')} as matrix products")
        if self.winograd_convs:
            done.append(f"{_count(self.winograd_convs, 'convolution')} by Winograd")
        if self.winograd_fallback is not None:
            done.append(f"direct convolutions ({self.winograd_fallback})")
        done.append(self.layout.describe())
        return f"{self.device}, {self.dtype}: " + ", ".join(done)


def _count(names: tuple[str, ...], noun: str) -> str:
    return f"{len(names)} {noun}{'' if len(names) == 1 else 's'}"


def optimize_for_inference(
    model: SSD,
    *,
    fuse: bool | None = None,
    winograd: bool | None = None,
    channels_last: bool | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
) -> SSD:
    """An inference-only copy of ``model`` with the conversions that help on its device (see
    the module docstring for each and its exactness); ``model`` is left as it was.

    Args:
        model: an `SSD` on the device it will run on (in any train/eval mode: the copy
            computes what ``model.eval()`` computes).
        fuse: fold BatchNorm and run squeeze-excitation convolutions as matrix products.
            None: on for float32 on the CPU (elsewhere unmeasured, so off).
        winograd: Winograd convolutions. None: on for float32 on the CPU, falling back to
            direct convolutions with a `WinogradUnavailableWarning` when the kernels cannot
            be built; True: that is an error (`singleshot.winograd.KernelBuildError`), as is
            any other device or dtype (ValueError); False: off.
        channels_last: the memory format. None: the faster in a timed trial (cached per
            machine), channels-last without one when Winograd runs; True / False: forced.
        batch_size: the images per `predict` call the copy will run; the layout trial and
            the Winograd schedules time forward passes of that many images (the schedules
            also of one image).
        dtype: the dtype to run in (None: the model's); the BatchNorm folding is done in
            the model's dtype before the cast (e.g. ``torch.float16`` on CUDA).

    Returns:
        The copy: an `SSD` in eval mode, without gradients, whose ``optimizations`` is an
        `InferenceOptimizations` saying what was done.

    Raises:
        ValueError: ``model`` is such a copy already (optimize the original instead), a
            forced conversion that cannot apply here, or ``batch_size`` < 1.
    """
    if model.optimizations is not None:
        raise ValueError(
            "this model is already an inference-only copy made by optimize_for_inference: call it "
            "on the model it was made from"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parameter = next(model.parameters())
    device, dtype = parameter.device, (dtype if dtype is not None else parameter.dtype)
    on_cpu_float32 = device.type == "cpu" and dtype == torch.float32
    copied = copy.deepcopy(model).eval()
    fused, linears = _fuse(copied) if (on_cpu_float32 if fuse is None else fuse) else ([], [])
    copied = copied.to(dtype=dtype).requires_grad_(False)
    converted, fallback = _use_winograd(copied, winograd, on_cpu_float32)
    copied.eval()  # the modules the conversions put in (Identity, FusedReLU) start in train mode
    layout = inference_layout(copied, batch_size, channels_last)
    apply_memory_format(copied, layout)
    schedules = _tune_winograd(copied, batch_size) if converted else ()
    done = (tuple(fused), tuple(linears), tuple(converted), fallback, layout, schedules)
    copied.optimizations = InferenceOptimizations(str(device), str(dtype), *done)
    return copied


def _fuse(model: SSD) -> tuple[list[str], list[str]]:
    with torch.no_grad():
        return fastpath.fuse_batch_norms(model), fastpath.pooled_to_linear(model)


def _use_winograd(model: SSD, choice: bool | None, on_cpu_float32: bool) -> tuple[list[str], str | None]:
    """(the convolutions converted in place, why not when Winograd was on by default and its
    kernels could not be built)."""
    from .winograd import KernelBuildError, use_winograd

    if choice is False or (choice is None and not on_cpu_float32):
        return [], None
    if not on_cpu_float32:
        parameter = next(model.parameters())
        raise ValueError(
            f"winograd=True: Winograd convolutions are for float32 on the CPU, and this model is "
            f"{parameter.dtype} on {parameter.device}"
        )
    try:
        # 64: on an AMD EPYC (Zen 4) conv2_1 ran 1.25x and conv1_2 0.99-1.17x as fast as oneDNN's
        # direct convolution at batch 1-8 once the transforms shared PyTorch's OpenMP threads
        converted = use_winograd(model.backbone, min_channels=BACKBONE_MIN_CHANNELS)
        return [f"backbone.{name}" for name in converted] + _winograd_head(model), None
    except KernelBuildError as error:
        if choice:
            raise
        warnings.warn(f"direct convolutions: {error}", WinogradUnavailableWarning, stacklevel=4)
        return [], str(error)


def _winograd_head(model: SSD) -> list[str]:
    """Convert the head's eligible predictors (see HEAD_MIN_GRID) in place; returns their names.
    A head without per-level ``loc`` and ``conf`` lists of convolutions is left alone."""
    from .winograd import WinogradConv2d, is_winograd_eligible

    converted = []
    for kind in ("loc", "conf"):
        predictors = getattr(model.head, kind, None)
        if not isinstance(predictors, torch.nn.ModuleList):
            continue
        for level, (conv, grid) in enumerate(zip(predictors, model.prior_config.feature_maps)):
            if not is_winograd_eligible(conv) or grid < HEAD_MIN_GRID:
                continue
            if conv.in_channels >= HEAD_MIN_INPUTS and conv.out_channels >= HEAD_MIN_OUTPUTS:
                predictors[level] = WinogradConv2d(conv)
                converted.append(f"head.{kind}.{level}")
    return converted


def _tune_winograd(model: SSD, batch_size: int) -> tuple[tuple[str, int, int], ...]:
    """Each Winograd convolution's fastest tile schedules at ``batch_size`` images and at one
    (a single image, the commonest call), timed on this machine or cached
    (`singleshot.winograd.schedule.tune_winograd`): (module name, batch, block_tiles)."""
    from .winograd.schedule import tune_winograd

    size = model.image_size
    return tuple(
        (name, batch, tiles)
        for batch in sorted({1, batch_size})
        for name, tiles in tune_winograd(model, (batch, 3, size, size)).items()
    )


def inference_layout(model: SSD, batch_size: int = 8, channels_last: bool | None = None) -> LayoutDecision:
    """The memory format to run ``model`` (plain or converted) in for inference; nothing is changed.

    ``channels_last`` True / False forces it. Otherwise a model with Winograd convolutions
    runs channels-last (their C kernels read that layout): no trial. Else a forward-only
    trial of both layouts at ``batch_size`` images decides, once per machine and model
    (`singleshot.layout.choose_memory_format`, cached; the decision's source says "measured"
    or "cached").

    Raises:
        ValueError: ``channels_last=False`` for a model with Winograd convolutions.
    """
    from .winograd.module import WinogradConv2d

    winograd = any(isinstance(module, WinogradConv2d) for module in model.modules())
    if winograd and channels_last is False:
        raise ValueError(
            "channels_last=False: the Winograd convolutions run channels-last (pass winograd=False too)"
        )
    if channels_last is not None:
        return forced_layout(channels_last, f"channels_last={channels_last}")
    if winograd:
        return forced_layout(True, "the Winograd convolutions")
    size = model.image_size
    shape = (batch_size, 3, size, size)
    return choose_memory_format(model, shape, training=False)
