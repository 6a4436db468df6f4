"""3x3 convolutions by Winograd's F(4x4, 3x3), for CPU inference.

Lavin and Gray ("Fast Algorithms for Convolutional Neural Networks", 2016): each 6x6
input tile d and each filter g are carried to a transform domain (``V = B^T d B``,
``U = G g G^T``), multiplied there as 36 independent matrix products over the channels,
and brought back (``Y = A^T M A``) as a 4x4 output tile. The products take a quarter of
the direct convolution's multiplies. The tile transforms are C loops (``kernels.c``,
compiled once per machine), the products ``torch.bmm``; tiles go through in chunks
small enough for the transformed values to stay in cache between the three steps.

Results equal the direct convolution's to float32 rounding (relative error ~1e-5; the
filters are transformed in float64). On this project's 2-core AVX-512 machine, batch 8,
the layers of VGG16 with 128 channels or more ran 1.24x (conv2_2) to 2.7x (conv4_2) as
fast as oneDNN's direct convolution, those with 64 channels 0.87-1.02x (the transforms
cost what they save), hence `use_winograd`'s ``min_channels`` (benchmarks/bench_winograd.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from .build import load_kernels

__all__ = ["WinogradConv2d", "is_winograd_eligible", "transform_weight", "use_winograd", "winograd_conv3x3"]

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
TILE = 4
# Tiles per chunk times channels: the chunk's transformed inputs (36 x tiles x channels
# floats, 9.4 MB) stay in the last-level cache until the product reads them. Measured
# best at 512 tiles for 128 channels, 128 for 512.
CHUNK_ELEMENTS = 65536

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _workers(threads: int) -> ThreadPoolExecutor:
    """Threads for the transforms (ctypes releases the GIL during a call)."""
    global _pool, _pool_size
    if _pool is None or _pool_size != threads:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(threads, thread_name_prefix="winograd"), threads
    return _pool


def _on_workers(pool: ThreadPoolExecutor, kernel, parts, base: int, count: int, *leading) -> None:
    """Run ``kernel(*leading, first, last, base, count)`` for every (first, last) tile range of
    ``parts`` at once on ``pool``, and wait for all of them."""
    for job in [pool.submit(kernel, *leading, first, last, base, count) for first, last in parts]:
        job.result()


def transform_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> float32 (36, C, K): ``G g G^T`` per filter, computed in float64
    and laid out for ``bmm`` with the transformed input tiles (36, tiles, C)."""
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"expected (K, C, 3, 3) filters, got {tuple(weight.shape)}")
    g = torch.tensor(FILTER_TRANSFORM, dtype=torch.float64)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().cpu().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, by F(4x4, 3x3).

    Args:
        x: (B, C, H, W) float32 on the CPU, any memory format.
        u: (36, C, K) transformed filters from `transform_weight`.
        bias: (K,) float32 or None.
        relu: apply ReLU to the result (inside the output transform).

    Returns:
        (B, K, H, W) float32, channels-last in memory.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        raise ValueError(
            f"expected a float32 CPU (B, C, H, W) input, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    if u.dtype != torch.float32 or u.dim() != 3 or u.shape[0] != 36 or u.shape[1] != x.shape[1]:
        raise ValueError(
            f"filters {u.dtype} {tuple(u.shape)} are not float32 (36, {x.shape[1]}, K) from transform_weight"
        )
    kernels = load_kernels()
    images, channels, height, width = x.shape
    out_channels = u.shape[2]
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty(images, out_channels, height, width, memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.detach().float().contiguous()
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
    total = images * tiles_h * tiles_w
    chunk = max(32, CHUNK_ELEMENTS // max(channels, out_channels))
    threads = max(1, torch.get_num_threads())
    pool = _workers(threads)
    x_ptr, y_ptr = x.data_ptr(), y.data_ptr()
    bias_ptr = bias.data_ptr() if bias is not None else None
    for base in range(0, total, chunk):
        count = min(chunk, total - base)
        parts = [(base + count * i // threads, base + count * (i + 1) // threads) for i in range(threads)]
        transformed = torch.empty(36, count, channels)
        _on_workers(pool, kernels.winograd_input_transform, parts, base, count,
                    x_ptr, transformed.data_ptr(), height, width, channels, tiles_h, tiles_w)  # fmt: skip
        products = torch.bmm(transformed, u)
        _on_workers(pool, kernels.winograd_output_transform, parts, base, count,
                    products.data_ptr(), y_ptr, bias_ptr, int(relu), height, width, out_channels,
                    tiles_h, tiles_w)  # fmt: skip
    return y


def is_winograd_eligible(module: nn.Module) -> bool:
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


class WinogradConv2d(nn.Module):
    """An eligible ``nn.Conv2d`` (optionally with the ReLU after it) by `winograd_conv3x3`.

    Inference only: it holds transformed copies of the weights, so no gradient reaches
    the original convolution. forward: (B, C, H, W) -> (B, K, H, W), channels-last memory.
    """

    u: Tensor
    bias: Tensor | None

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"Winograd needs a 3x3, stride-1, padding-1, ungrouped, undilated conv: {conv}")
        self.in_channels, self.out_channels, self.relu = conv.in_channels, conv.out_channels, relu
        self.register_buffer("u", transform_weight(conv.weight))
        bias = conv.bias.detach().cpu().float().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("WinogradConv2d is for inference: it has no backward")
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            # a trace would record the matrix products but not the C transforms: a wrong graph
            raise RuntimeError(
                "WinogradConv2d runs C kernels that cannot be traced or exported: "
                "export the model as loaded, without use_winograd"
            )
        return winograd_conv3x3(x.float(), self.u, self.bias, self.relu)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, relu={self.relu}"


def use_winograd(model: nn.Module, min_channels: int = 128) -> list[str]:
    """Replace, in place, the eligible convolutions of ``model`` with at least ``min_channels``
    input and output channels by `WinogradConv2d`; a ReLU right after one in the same
    ``nn.Sequential`` is fused and becomes ``nn.Identity``.

    For inference on the CPU in float32: the model's state dict changes (transformed
    filters), so convert a copy (``copy.deepcopy``) if the original is still needed for
    training or saving. Builds the C kernels first (raises `KernelBuildError` without a
    compiler), so a model is never left half converted.

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
            fuse = isinstance(parent, nn.Sequential) and isinstance(following, nn.ReLU)
            setattr(parent, name, WinogradConv2d(child, relu=fuse))
            if fuse:
                setattr(parent, children[index + 1][0], nn.Identity())
            replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced
