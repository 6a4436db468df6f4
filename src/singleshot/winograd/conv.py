"""3x3 convolutions by Winograd's F(4x4, 3x3), for CPU inference.

Lavin and Gray ("Fast Algorithms for Convolutional Neural Networks", 2016): each 6x6
input tile d and each filter g are carried to a transform domain (``V = B^T d B``,
``U = G g G^T``), multiplied there as 36 independent matrix products over the channels,
and brought back (``Y = A^T M A``) as a 4x4 output tile. The products take a quarter of
the direct convolution's multiplies. The tile transforms and the products are C loops
(``kernels.c``, compiled once per machine) behind the operator
``torch.ops.singleshot.winograd_conv3x3`` (`singleshot.winograd.ops`); the products read
the filters packed in panels (`pack_filters`).

Results equal the direct convolution's to float32 rounding (relative error ~1e-5; the
filters are transformed in float64). How much faster than oneDNN's direct convolution
depends on the CPU and the layer: the wide layers gain most, the 64-channel ones least
(``benchmarks/bench_winograd.py`` measures each of VGG16's; figures in benchmarks/README.md),
hence `use_winograd`'s ``min_channels``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .build import load_kernels
from .ops import BY_RULE, NO_POOL, check_block_tiles, check_pool, winograd_conv3x3_op

__all__ = [
    "FILTER_TRANSFORM",
    "conv_packed",
    "pack_filters",
    "panel_width",
    "transform_weight",
    "winograd_conv3x3",
]

# F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity. B^T and A^T
# are written out in kernels.c; G transforms the filters here.
FILTER_TRANSFORM = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)


def transform_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> float32 (36, C, K): ``G g G^T`` per filter, computed in float64;
    position p's (C, K) matrix multiplies the transformed input tiles (tiles, C) at p."""
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"expected (K, C, 3, 3) filters, got {tuple(weight.shape)}")
    g = torch.tensor(FILTER_TRANSFORM, dtype=torch.float64)
    # U[ab] = sum_ij G[a, i] g[ij] G[b, j]: one (36, 9) x (9, C*K) product with G (x) G, which
    # writes the (36, C, K) layout directly (a two-sided einsum took 2.5 s for SSD300's filters)
    out_channels, in_channels = weight.shape[:2]
    taps = weight.detach().cpu().double().permute(2, 3, 1, 0).reshape(9, in_channels * out_channels)
    u = torch.kron(g, g) @ taps
    return u.float().reshape(36, in_channels, out_channels)


def panel_width() -> int:
    """Output channels per packed panel in the loaded kernels: twice the CPU's float32 vector
    width (32 with AVX-512, 16 with AVX2, 8 otherwise). Builds the kernels if needed."""
    return int(load_kernels().winograd_panel_width())


def pack_filters(u: Tensor) -> Tensor:
    """(36, C, K) transformed filters -> (36, C * K) in the kernels' panel layout.

    Each position's (C, K) matrix is cut into panels of `panel_width` output channels (the
    last may be narrower), each stored as its C rows in turn: panel j's row c, columns
    k0 .. k0 + w (k0 = j * width), starts at ``k0 * C + c * w``. The layout depends on the
    CPU's vector width, so packed filters are made where they are used, never saved.
    """
    if u.dim() != 3 or u.shape[0] != 36:
        raise ValueError(f"expected (36, C, K) filters from transform_weight, got {tuple(u.shape)}")
    positions, channels, out_channels = u.shape
    width = panel_width()
    whole = out_channels // width * width
    panels = u[:, :, :whole].reshape(positions, channels, -1, width).transpose(1, 2)
    rest = u[:, :, whole:]  # (36, C, K - whole): already the last panel's row-major layout
    return torch.cat([panels.reshape(positions, -1), rest.reshape(positions, -1)], dim=1).contiguous()


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, by F(4x4, 3x3).

    Args:
        x: (B, C, H, W) float32 on the CPU, any memory format (copied to channels-last
            unless it is already).
        u: (36, C, K) transformed filters from `transform_weight` (packed on each call;
            `WinogradConv2d` packs once).
        bias: (K,) or None (converted to a contiguous float32 copy when it is not one).
        relu: apply ReLU to the result (inside the output transform).

    Returns:
        (B, K, H, W) float32, channels-last in memory. Bad arguments raise `ValueError`.
    """
    channels = x.shape[1] if x.dim() == 4 else "C"
    if u.dim() != 3 or u.shape[0] != 36 or u.dtype != torch.float32 or u.shape[1] != channels:
        raise ValueError(
            f"filters {u.dtype} {tuple(u.shape)} are not float32 (36, {channels}, K) from transform_weight"
        )
    return conv_packed(x, pack_filters(u), bias, relu)


def conv_packed(
    x: Tensor,
    filters: Tensor,
    bias: Tensor | None,
    relu: bool,
    block_tiles: int = BY_RULE,
    pool: int = NO_POOL,
) -> Tensor:
    """`winograd_conv3x3` with filters already packed (36, C * K) by `pack_filters`, its tiles
    scheduled as ``block_tiles`` says, its output max-pooled as ``pool`` says
    (`singleshot.winograd.ops.winograd_conv3x3_op`)."""
    check_block_tiles(block_tiles)  # before the dispatcher, whose type errors are RuntimeErrors
    check_pool(pool)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.detach().float().contiguous()
    return winograd_conv3x3_op(x, filters, bias, relu, block_tiles, pool)
