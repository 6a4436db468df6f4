"""Converting a model's convolutions to `WinogradConv2d`, and back.

A converted module holds the original convolution's ``weight`` and ``bias`` parameters
(the same tensors) and the transformed filters as a non-persistent buffer, so a converted
model's ``state_dict`` has exactly the original keys and tensors: checkpoints written
from it load into a plain model, and `revert_winograd` gives back ``nn.Conv2d`` modules
holding the very same parameters.
"""

from __future__ import annotations

import math
from typing import TypeGuard

import torch
from torch import Tensor, nn

from .build import load_kernels
from .conv import conv_packed, pack_filters, transform_weight
from .ops import BY_RULE, NOT_EXPORTABLE

__all__ = ["FusedReLU", "WinogradConv2d", "is_winograd_eligible", "revert_winograd", "use_winograd"]


def is_winograd_eligible(module: nn.Module) -> TypeGuard[nn.Conv2d]:
    """A 3x3, stride-1, padding-1, undilated, ungrouped, zero-padded ``nn.Conv2d``."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


class FusedReLU(nn.Identity):
    """Stands where a ``nn.ReLU`` was that the `WinogradConv2d` before it now applies."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace  # the replaced ReLU's, restored by revert_winograd

    def extra_repr(self) -> str:
        return "fused into the convolution before"


def _refresh_after_load(module: WinogradConv2d, incompatible_keys: object) -> None:
    module.refresh()


class WinogradConv2d(nn.Module):
    """An eligible ``nn.Conv2d`` (optionally with the ReLU after it) by `winograd_conv3x3`.

    Inference only (no backward). forward: (B, C, H, W) -> (B, K, H, W), channels-last
    memory. ``weight`` (K, C, 3, 3) and ``bias`` (K,) are the convolution's parameters;
    ``u`` (36, C * K), the transformed filters packed for this CPU (`pack_filters`), is
    computed from them, again after ``load_state_dict``; call `refresh` after changing
    ``weight`` any other way. ``schedules`` maps a batch size to how the kernels schedule
    the tiles at that batch (``block_tiles`` of `singleshot.winograd.ops.winograd_conv3x3_op`),
    as `singleshot.winograd.schedule.tune_winograd` timed them; a batch runs with the
    schedule of the nearest batch size timed (`block_tiles`), `BY_RULE` while none was.
    Speed only: the result is the same.
    """

    u: Tensor

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"Winograd needs a 3x3, stride-1, padding-1, ungrouped, undilated conv: {conv}")
        self.in_channels, self.out_channels, self.relu = conv.in_channels, conv.out_channels, relu
        self.schedules: dict[int, int] = {}
        self.weight = conv.weight
        self.bias = conv.bias
        self.register_buffer("u", pack_filters(transform_weight(conv.weight)), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.train(conv.training)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the packed transformed filters ``u`` from ``weight``."""
        self.u = pack_filters(transform_weight(self.weight))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("WinogradConv2d is for inference: it has no backward")
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            raise RuntimeError(NOT_EXPORTABLE)
        return conv_packed(x.float(), self.u, self.bias, self.relu, self.block_tiles(x.shape[0]))

    def block_tiles(self, batch: int) -> int:
        """The tile schedule for ``batch`` images: the one timed at the nearest batch size in
        ``schedules`` (by ratio; the larger of two as near), or `BY_RULE` if none was timed."""
        if not self.schedules:
            return BY_RULE
        nearest = min(self.schedules, key=lambda timed: (abs(math.log(timed / max(batch, 1))), -timed))
        return self.schedules[nearest]

    def to_conv2d(self) -> nn.Conv2d:
        """The plain convolution, holding this module's ``weight`` and ``bias`` parameters."""
        has_bias = self.bias is not None
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, padding=1, bias=has_bias, device="meta")
        conv.weight = self.weight
        conv.bias = self.bias
        return conv.train(self.training)

    def extra_repr(self) -> str:
        timed = f", schedules={self.schedules}" if self.schedules else ""
        return f"{self.in_channels}, {self.out_channels}, relu={self.relu}{timed}"


def use_winograd(model: nn.Module, min_channels: int = 128) -> list[str]:
    """Replace, in place, the eligible convolutions of ``model`` with at least ``min_channels``
    input and output channels by `WinogradConv2d`; a ReLU right after one in the same
    ``nn.Sequential`` is fused and becomes `FusedReLU` (an identity).

    For inference on the CPU in float32. The state dict keeps its keys and tensors, so the
    model can still be saved; `revert_winograd` undoes the conversion. The tiles are
    scheduled by the fixed rule until `singleshot.winograd.schedule.tune_winograd` times the
    schedules on this machine (`optimize_for_inference` does both). Builds the C kernels
    first (raises `KernelBuildError` without a compiler), so a model is never left half converted.

    Returns:
        The replaced modules' names: for SSD300/SSD512's VGG16 with the default,
        conv2_2 ... conv5_3 (10 layers, about 72% of SSD300's multiply-adds).
    """
    load_kernels()
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("use_winograd: the model must be on the CPU")
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if not is_winograd_eligible(child) or min(child.in_channels, child.out_channels) < min_channels:
                continue
            following = children[index + 1][1] if index + 1 < len(children) else None
            relu = following if isinstance(parent, nn.Sequential) and type(following) is nn.ReLU else None
            setattr(parent, name, WinogradConv2d(child, relu=relu is not None))
            if relu is not None:
                setattr(parent, children[index + 1][0], FusedReLU(relu.inplace))
            replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


def revert_winograd(model: nn.Module) -> list[str]:
    """Undo `use_winograd` in place: every `WinogradConv2d` becomes an ``nn.Conv2d`` holding its
    ``weight`` and ``bias`` parameters (the same tensors, so bit for bit the original), every
    `FusedReLU` an ``nn.ReLU`` again. Returns the reverted convolutions' names."""
    reverted: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WinogradConv2d):
                setattr(parent, name, child.to_conv2d())
                reverted.append(f"{parent_name}.{name}" if parent_name else name)
            elif isinstance(child, FusedReLU):
                setattr(parent, name, nn.ReLU(inplace=child.inplace))
    return reverted
