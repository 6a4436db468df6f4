"""Converting a model's convolutions to `WinogradConv2d`, and back.

A converted module holds the original convolution's ``weight`` and ``bias`` parameters
(the same tensors) and the transformed filters as a non-persistent buffer, so a converted
model's ``state_dict`` has exactly the original keys and tensors: checkpoints written
from it load into a plain model, and `revert_winograd` gives back ``nn.Conv2d`` modules
holding the very same parameters. A ReLU and a 2x2 max pooling right after a converted
convolution run inside it (its output transform), and identities stand in their places.
"""

from __future__ import annotations

import math
from typing import TypeGuard

import torch
from torch import Tensor, nn

from .build import load_kernels
from .conv import conv_packed, pack_filters, transform_weight
from .ops import BY_RULE, NO_POOL, NOT_EXPORTABLE, POOL_CEIL, POOL_FLOOR, check_pool

__all__ = [
    "FusedMaxPool2d",
    "FusedReLU",
    "WinogradConv2d",
    "fusable_pool",
    "is_winograd_eligible",
    "revert_winograd",
    "use_winograd",
]


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


class FusedMaxPool2d(nn.Identity):
    """Stands where a 2x2, stride-2 ``nn.MaxPool2d`` was that the `WinogradConv2d` before it now
    applies (its ``pool``)."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__()
        self.ceil_mode = ceil_mode  # the replaced pooling's, restored by revert_winograd

    def to_max_pool(self) -> nn.MaxPool2d:
        """The plain pooling this module stands for."""
        return nn.MaxPool2d(2, 2, ceil_mode=self.ceil_mode)

    def extra_repr(self) -> str:
        return f"ceil_mode={self.ceil_mode}, fused into the convolution before"


def fusable_pool(module: nn.Module | None) -> int | None:
    """The `WinogradConv2d` ``pool`` that computes ``module``: `POOL_FLOOR` or `POOL_CEIL` for an
    ``nn.MaxPool2d`` with a 2x2 window, stride 2, no padding or dilation and no indices
    returned; None for anything else."""
    if not isinstance(module, nn.MaxPool2d) or module.return_indices:
        return None
    window = (module.kernel_size, module.stride, module.padding, module.dilation)
    if tuple(_pair(value) for value in window) != ((2, 2), (2, 2), (0, 0), (1, 1)):
        return None
    return POOL_CEIL if module.ceil_mode else POOL_FLOOR


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _refresh_after_load(module: WinogradConv2d, incompatible_keys: object) -> None:
    module.refresh()


class WinogradConv2d(nn.Module):
    """An eligible ``nn.Conv2d`` (optionally with the ReLU and the 2x2 max pooling after it) by
    `winograd_conv3x3`.

    Inference only (no backward). forward: (B, C, H, W) -> (B, K, H, W), channels-last
    memory; with ``pool`` (`singleshot.winograd.ops.POOL_FLOOR` or ``POOL_CEIL``) the pooled
    (B, K, H', W'), H' = H // 2 or (H + 1) // 2, exactly what the pooling module computes.
    ``weight`` (K, C, 3, 3) and ``bias`` (K,) are the convolution's parameters; ``u``
    (36, C * K), the transformed filters packed for this CPU (`pack_filters`), is computed
    from them, again after ``load_state_dict``; call `refresh` after changing ``weight`` any
    other way. ``schedules`` maps a batch size to how the kernels schedule the tiles at that
    batch (``block_tiles`` of `singleshot.winograd.ops.winograd_conv3x3_op`), as
    `singleshot.winograd.schedule.tune_winograd` timed them; a batch runs with the schedule
    of the nearest batch size timed (`block_tiles`), `BY_RULE` while none was.
    Speed only: the result is the same.
    """

    u: Tensor

    def __init__(self, conv: nn.Conv2d, relu: bool = False, pool: int = NO_POOL) -> None:
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"Winograd needs a 3x3, stride-1, padding-1, ungrouped, undilated conv: {conv}")
        check_pool(pool)
        self.in_channels, self.out_channels, self.relu = conv.in_channels, conv.out_channels, relu
        self.pool = pool
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
        return conv_packed(x.float(), self.u, self.bias, self.relu, self.block_tiles(x.shape[0]), self.pool)

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
        pooled = {NO_POOL: "", POOL_FLOOR: ", max_pool=2x2", POOL_CEIL: ", max_pool=2x2 ceil_mode"}[self.pool]
        timed = f", schedules={self.schedules}" if self.schedules else ""
        return f"{self.in_channels}, {self.out_channels}, relu={self.relu}{pooled}{timed}"


def use_winograd(model: nn.Module, min_channels: int = 128, fuse_pool: bool = True) -> list[str]:
    """Replace, in place, the eligible convolutions of ``model`` with at least ``min_channels``
    input and output channels by `WinogradConv2d`; a ReLU right after one in the same plain
    ``nn.Sequential`` (a subclass with a forward of its own may read the convolution's output
    itself: nothing is fused there) is fused and becomes `FusedReLU` (an identity), and so is,
    with ``fuse_pool``, a 2x2 max pooling right after either (`fusable_pool`; it becomes
    `FusedMaxPool2d`): the full-size output is then never written, only the pooled one.

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
            relu, pool = _followers(parent, children[index + 1 :], fuse_pool)
            fused = WinogradConv2d(child, relu=relu is not None, pool=pool[1] if pool else NO_POOL)
            setattr(parent, name, fused)
            if relu is not None:
                setattr(parent, relu[0], FusedReLU(bool(relu[1].inplace)))
            if pool is not None:
                setattr(parent, pool[0], FusedMaxPool2d(ceil_mode=pool[1] == POOL_CEIL))
            replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


def _followers(
    parent: nn.Module, following: list[tuple[str, nn.Module]], fuse_pool: bool
) -> tuple[tuple[str, nn.Module] | None, tuple[str, int] | None]:
    """What a convolution of ``parent`` can run inside it: (name, module) of the ``nn.ReLU`` right
    after it, and (name, ``pool``) of the 2x2 max pooling right after that or after the
    convolution (with ``fuse_pool``); None where there is none. Only in a plain ``nn.Sequential``,
    whose modules each see nothing but the previous one's output."""
    if type(parent).forward is not nn.Sequential.forward:
        return None, None
    relu = following[0] if following and type(following[0][1]) is nn.ReLU else None
    rest = following[1:] if relu is not None else following
    pool = fusable_pool(rest[0][1]) if fuse_pool and rest else None
    return relu, (rest[0][0], pool) if pool is not None else None


def revert_winograd(model: nn.Module) -> list[str]:
    """Undo `use_winograd` in place: every `WinogradConv2d` becomes an ``nn.Conv2d`` holding its
    ``weight`` and ``bias`` parameters (the same tensors, so bit for bit the original), every
    `FusedReLU` an ``nn.ReLU`` and every `FusedMaxPool2d` an ``nn.MaxPool2d`` again. Returns
    the reverted convolutions' names."""
    reverted: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WinogradConv2d):
                setattr(parent, name, child.to_conv2d())
                reverted.append(f"{parent_name}.{name}" if parent_name else name)
            elif isinstance(child, FusedReLU):
                setattr(parent, name, nn.ReLU(inplace=child.inplace))
            elif isinstance(child, FusedMaxPool2d):
                setattr(parent, name, child.to_max_pool())
    return reverted
