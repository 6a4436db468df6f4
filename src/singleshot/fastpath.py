"""An inference-only copy of a model for the CPU: BatchNorm folded into its convolutions and
the squeeze-excitation 1x1 convolutions run as matrix products.

`fuse_for_inference` never changes the model it is given: it returns a converted deep copy
whose forward computes the same ``(loc, conf)`` to float32 rounding. The copy is for running
(`singleshot.SSD.predict`, `singleshot.evaluation.evaluate_model`), not for training or saving:
its BatchNorm layers are gone (``nn.Identity``), so its state dict no longer matches the
checkpoint's. `singleshot.SSD.optimize_for_inference` applies these conversions together with
the Winograd convolutions and the memory format, and marks its copy inference-only.

Why, for SSDLite320 on a 2-core AVX-512 CPU (``benchmarks/bench_infer.py --model ssdlite320_coco``):

- every MobileNetV3 / SSDLite convolution is followed by a BatchNorm, a separate pass over
  the feature map in eager PyTorch; folded into the convolution's weights and bias
  (`torch.nn.utils.fusion.fuse_conv_bn_eval`) it costs nothing;
- the squeeze-excitation layers apply 1x1 convolutions to pooled (B, C, 1, 1) maps: in a
  channels-last model oneDNN takes milliseconds over each of these tiny products, which
  ``F.linear`` on (B, C) does in microseconds.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["PooledLinear", "fuse_batch_norms", "fuse_for_inference", "pooled_to_linear"]

ModelT = TypeVar("ModelT", bound=nn.Module)


class PooledLinear(nn.Module):
    """A 1x1 convolution for (B, C_in, 1, 1) inputs, run as ``F.linear``: (B, C_in, 1, 1) ->
    (B, C_out, 1, 1). Holds the convolution's weight as (C_out, C_in) and its bias (C_out,)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_pooled_pointwise(conv):
            raise ValueError(f"not a plain 1x1 convolution: {conv}")
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, conv.in_channels))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (1, 1):  # not a pooled map: what the convolution would compute
            weight = self.weight[:, :, None, None]
            return F.conv2d(x, weight, self.bias)
        out = F.linear(x.reshape(x.shape[0], x.shape[1]), self.weight, self.bias)
        return out[:, :, None, None]


def is_pooled_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` that `PooledLinear` can stand for (1x1, stride 1,
    no padding, dilation or groups)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def fuse_batch_norms(model: nn.Module) -> list[str]:
    """Fold, in place, every ``nn.BatchNorm2d`` that directly follows an ``nn.Conv2d`` among a
    module's children into that convolution (which gains a bias); the BatchNorm becomes
    ``nn.Identity``. For eval mode only (the running statistics are used). Returns the fused
    convolutions' names."""
    fused: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if type(conv) is not nn.Conv2d or type(norm) is not nn.BatchNorm2d:
                continue
            if norm.running_mean is None or norm.running_var is None:
                continue  # no statistics to fold
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(parent, norm_name, nn.Identity())
            fused.append(f"{parent_name}.{conv_name}" if parent_name else conv_name)
    return fused


def pooled_to_linear(model: nn.Module) -> list[str]:
    """Replace, in place, the 1x1 convolutions of squeeze-excitation blocks (torchvision's
    ``SqueezeExcitation``: ``fc1``, ``fc2`` after an ``avgpool``) by `PooledLinear`.
    Returns the replaced modules' names."""
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        if not isinstance(getattr(parent, "avgpool", None), nn.AdaptiveAvgPool2d):
            continue
        if parent.avgpool.output_size not in (1, (1, 1)):
            continue
        for name in ("fc1", "fc2"):
            conv = getattr(parent, name, None)
            if conv is not None and is_pooled_pointwise(conv):
                setattr(parent, name, PooledLinear(conv))
                replaced.append(f"{parent_name}.{name}")
    return replaced


def fuse_for_inference(model: ModelT) -> ModelT:
    """A converted deep copy of ``model`` for float32 inference: BatchNorm folded into the
    convolutions (`fuse_batch_norms`), squeeze-excitation convolutions as matrix products
    (`pooled_to_linear`), in eval mode, without gradients. ``model`` is left as it was.

    The copy's forward equals the original's to float32 rounding (the folded weights are
    ``w * gamma / sqrt(var + eps)``, rounded once). Do not train or save it.
    """
    copied = copy.deepcopy(model).eval()
    with torch.no_grad():
        fuse_batch_norms(copied)
        pooled_to_linear(copied)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied
