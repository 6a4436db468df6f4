"""Winograd convolution for CPU inference: the 3x3 convolutions of VGG16 with fewer multiplies.

A 3x3, stride-1 convolution computed on m x m output tiles with Winograd's minimal
filtering algorithm F(m x m, 3 x 3) (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): each (m+2) x (m+2) input tile d and each filter g are carried
to a transform domain (``V = B^T d B``, ``U = G g G^T``), multiplied there as (m+2)^2
independent matrix products over the channels, and brought back (``Y = A^T M A``).
The matrix products take 9 m^2 / (m+2)^2 of the direct convolution's multiplies:
0.44x for m = 2, 0.25x for m = 4.

It pays off only where the matrix products dominate (many channels) and the tile
transforms run as fused loops: `use_winograd` replaces the convolutions with at least
``min_channels`` input and output channels, and each replacement runs through one ``torch.compile``d
function shared by all layers (one compilation per input shape). Results equal the
direct convolution's to float32 rounding (relative error ~1e-6 for m = 2, ~1e-5 for
m = 4 on VGG16's layers); the weights are transformed in float64.

Inference only: the transformed weights are a copy (no gradient reaches the original
convolution), so apply it to a model in eval mode that will not be trained further.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WinogradConv2d", "pick_tile", "transform_weight", "use_winograd", "winograd_conv3x3"]

# (B^T, G, A^T) of F(m x m, 3 x 3) with the interpolation points of Lavin and Gray:
# 0, 1, -1 (and infinity) for m = 2; 0, 1, -1, 2, -2 (and infinity) for m = 4.
_TRANSFORMS: dict[int, tuple[list[list[float]], list[list[float]], list[list[float]]]] = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}
TILES = tuple(_TRANSFORMS)


def _combine(coefficients: list[float], terms: list[Tensor]) -> Tensor:
    """sum(c * t), skipping zero coefficients and multiplies by +-1 (constants, so that a
    compiler sees plain adds)."""
    total: Tensor | None = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        scaled = term if c == 1 else -term if c == -1 else term * c
        total = scaled if total is None else total + scaled
    assert total is not None
    return total


def _check_tile(tile: int) -> None:
    if tile not in _TRANSFORMS:
        raise ValueError(f"tile must be one of {TILES}, got {tile}")


def transform_weight(weight: Tensor, tile: int) -> Tensor:
    """(K, C, 3, 3) filters -> float32 (a*a, C, K) with a = tile + 2: ``G g G^T`` per filter,
    computed in float64, laid out for ``bmm`` with the transformed inputs."""
    _check_tile(tile)
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected (K, C, 3, 3) filters, got {tuple(weight.shape)}")
    g = torch.tensor(_TRANSFORMS[tile][1], dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    a = tile + 2
    return u.reshape(a * a, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None, tile: int, relu: bool = False) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, by F(tile x tile, 3 x 3).

    Args:
        x: (B, C, H, W) float32 input, any memory format.
        u: (a*a, C, K) transformed filters from `transform_weight` (a = tile + 2).
        bias: (K,) or None.
        relu: apply ReLU to the result (fused into the output transform when compiled).

    Returns:
        (B, K, H, W) float32, channels-last in memory.
    """
    m, a = tile, tile + 2
    b_t, _, a_t = _TRANSFORMS[tile]
    n, c, h, w = x.shape
    tiles_h, tiles_w = -(-h // m), -(-w // m)
    # Pad to cover whole tiles: one zero row/column before (the convolution's padding),
    # and after, enough to complete the last tile (at least the convolution's one).
    padded = F.pad(x, (1, m * tiles_w + 1 - w, 1, m * tiles_h + 1 - h)).permute(0, 2, 3, 1)
    # d[i][j]: the (i, j) element of every input tile, (B, tiles_h, tiles_w, C).
    d = [[padded[:, i : i + m * tiles_h : m, j : j + m * tiles_w : m, :] for j in range(a)] for i in range(a)]
    left = [[_combine(b_t[p], [d[i][j] for i in range(a)]) for j in range(a)] for p in range(a)]
    v = torch.stack([_combine(b_t[q], left[p]) for p in range(a) for q in range(a)])
    products = torch.bmm(v.reshape(a * a, n * tiles_h * tiles_w, c), u)
    products = products.reshape(a, a, n, tiles_h, tiles_w, -1)
    half = [[_combine(a_t[r], [products[p, q] for p in range(a)]) for q in range(a)] for r in range(m)]
    # y[b, th, r, tw, s, k]: output pixel (th*m + r, tw*m + s) of image b.
    y = torch.stack([torch.stack([_combine(a_t[s], half[r]) for s in range(m)], 3) for r in range(m)], 2)
    y = y.reshape(n, m * tiles_h, m * tiles_w, -1)[:, :h, :w]
    if bias is not None:
        y = y + bias
    if relu:
        y = y.relu()
    return y.permute(0, 3, 1, 2)


_compiled: Callable | None = None


def _compiled_conv() -> Callable:
    global _compiled
    if _compiled is None:
        # One compiled function for every layer: layers of the same shape share its code.
        _compiled = torch.compile(winograd_conv3x3, dynamic=False)
    return _compiled


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` (optionally followed by ReLU) by Winograd.

    forward: (B, C, H, W) -> (B, K, H, W), channels-last memory. ``compiled=False`` runs
    the transforms eagerly (as many passes over memory as there are terms: slower than
    the direct convolution, useful for checking).
    """

    u: Tensor
    bias: Tensor | None

    def __init__(self, conv: nn.Conv2d, tile: int = 4, relu: bool = False, compiled: bool = True) -> None:
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"Winograd needs a 3x3, stride-1, padding-1, ungrouped, undilated conv: {conv}")
        self.tile = tile
        self.relu = relu
        self.compiled = compiled
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.register_buffer("u", transform_weight(conv.weight, tile))
        bias = conv.bias.detach().clone().float() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        run = _compiled_conv() if self.compiled else winograd_conv3x3
        return run(x.float(), self.u, self.bias, self.tile, self.relu)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, tile={self.tile}, relu={self.relu}"


def is_winograd_eligible(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def pick_tile(height: int, width: int) -> int:
    """The tile measured fastest on VGG16's layers: 4 (F(4x4, 3x3)) on maps of at least
    32 x 32, 2 on smaller ones, where a 4-wide tile wastes more of the map's border."""
    return 4 if min(height, width) >= 32 else 2


def use_winograd(
    model: nn.Module,
    example: Tensor | None = None,
    *,
    min_channels: int = 256,
    tile: int | None = None,
    compiled: bool = True,
) -> list[str]:
    """Replace, in place, the eligible convolutions of ``model`` that have at least
    ``min_channels`` input and output channels by `WinogradConv2d`; a following ``nn.ReLU`` in the
    same ``nn.Sequential`` is fused and becomes ``nn.Identity``.

    Args:
        example: an input for ``model``; one forward pass records each convolution's map
            size, from which `pick_tile` chooses its tile. Needed unless ``tile`` is given.
        tile: 2 or 4 for every replaced layer instead.

    Returns:
        The replaced modules' names. For SSD300's VGG16 with the defaults: conv3_2 ...
        conv5_3 (8 layers, about 60% of the network's multiplies). The first call of each
        new input shape compiles (tens of seconds per shape on a 2-core CPU).
    """
    if tile is not None:
        _check_tile(tile)
    elif example is None:
        raise ValueError("use_winograd needs an example input to choose the tiles, or tile=")
    candidates = {
        name: module
        for name, module in model.named_modules()
        if is_winograd_eligible(module) and min(module.in_channels, module.out_channels) >= min_channels
    }
    sizes: dict[str, tuple[int, int]] = {}
    if tile is None:

        def recorder(name: str) -> Callable:
            def record(_module: nn.Module, args: tuple) -> None:
                sizes.setdefault(name, tuple(args[0].shape[-2:]))

            return record

        hooks = [module.register_forward_pre_hook(recorder(name)) for name, module in candidates.items()]
        try:
            with torch.no_grad():
                model(example)
        finally:
            for hook in hooks:
                hook.remove()
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            full_name = f"{parent_name}.{name}" if parent_name else name
            if full_name not in candidates or (tile is None and full_name not in sizes):
                continue  # not eligible, or not reached by the example's forward pass
            chosen = tile if tile is not None else pick_tile(*sizes[full_name])
            following = children[index + 1][1] if index + 1 < len(children) else None
            fuse = isinstance(parent, nn.Sequential) and isinstance(following, nn.ReLU)
            setattr(parent, name, WinogradConv2d(child, tile=chosen, relu=fuse, compiled=compiled))
            if fuse:
                setattr(parent, children[index + 1][0], nn.Identity())
            replaced.append(full_name)
    return replaced
