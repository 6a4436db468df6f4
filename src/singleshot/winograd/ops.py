"""``torch.ops.singleshot.winograd_conv3x3``: the C tile transforms as a PyTorch operator.

The operator is the boundary between PyTorch and ``kernels.c``: it checks every
argument the C code reads through a raw pointer (rank, shape, dtype, device, memory
layout) and raises `ValueError` before any C runs, so a bad call is an error and never a
crash. Its fake (meta) implementation gives the output's shape and layout without
running C, so ``torch.export``, ``torch.compile`` and ``make_fx`` record one opaque
operator in their graphs instead of tracing into pointers.

Between the two C transforms the 36 matrix products run in ``torch.bmm``; tiles go
through in chunks small enough for the transformed values to stay in cache, each chunk's
tiles cut between ``torch.get_num_threads()`` threads: PyTorch's own OpenMP threads where
the kernels are built with OpenMP (`singleshot.winograd.build`), else this thread and
helper threads (ctypes releases the GIL).
"""

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .build import kernels_use_openmp, load_kernels

__all__ = ["CHUNK_ELEMENTS", "NOT_EXPORTABLE", "TILE", "check_arguments", "winograd_conv3x3_op"]

TILE = 4
# Tiles per chunk times channels: the chunk's transformed inputs (36 x tiles x channels
# floats, 9.4 MB) stay in the last-level cache until the product reads them. Measured
# best at 512 tiles for 128 channels, 128 for 512.
CHUNK_ELEMENTS = 65536

NOT_EXPORTABLE = (
    "a model converted by use_winograd cannot be exported to TorchScript or ONNX (its C kernels are "
    "the operator singleshot::winograd_conv3x3): call singleshot.winograd.revert_winograd(model) first"
)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The process's one pool of helper threads, made on first use and never replaced.

    ThreadPoolExecutor starts its threads only as jobs need them, up to ``max_workers``,
    so a changed ``torch.get_num_threads()`` needs no new pool; concurrent.futures joins
    the threads at exit.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="winograd")
        return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: it makes its own pool


os.register_at_fork(after_in_child=_forget_pool)


def _in_parallel(
    kernel: Callable[..., object], parts: list[tuple[int, int]], base: int, count: int, *leading: object
) -> None:
    """``kernel(*leading, first, last, base, count, 1)`` for every (first, last) of ``parts``: the
    first range on this thread, the others on helper threads; returns when all are done."""
    jobs = [_helpers().submit(kernel, *leading, first, last, base, count, 1) for first, last in parts[1:]]
    try:
        kernel(*leading, *parts[0], base, count, 1)
    finally:
        for job in jobs:
            job.result()


def _transform(kernel: Callable[..., object], base: int, count: int, threads: int, *leading: object) -> None:
    """Run a tile transform over the chunk's tiles [base, base + count) on ``threads`` threads:
    PyTorch's OpenMP threads when the kernels have OpenMP, else this thread and helpers."""
    if kernels_use_openmp():
        kernel(*leading, base, base + count, base, count, threads)
        return
    parts = [(base + count * i // threads, base + count * (i + 1) // threads) for i in range(threads)]
    _in_parallel(kernel, parts, base, count, *leading)


def check_arguments(x: Tensor, u: Tensor, bias: Tensor | None) -> None:
    """Raise `ValueError` unless the C kernels can read these tensors as laid out.

    x: (B, C, H, W) float32 CPU, channels-last contiguous; u: (36, C, K) float32 CPU (any
    strides: only ``torch.bmm`` reads it); bias: None or (K,) float32 CPU contiguous.
    """
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(
            f"expected a float32 CPU (B, C, H, W) input, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"the input must be channels-last contiguous (x.contiguous(memory_format=torch.channels_last)), "
            f"got strides {x.stride()} for shape {tuple(x.shape)}"
        )
    if u.dtype != torch.float32 or u.dim() != 3 or u.shape[0] != 36 or u.shape[1] != x.shape[1]:
        raise ValueError(
            f"filters {u.dtype} {tuple(u.shape)} are not float32 (36, {x.shape[1]}, K) from transform_weight"
        )
    if u.device.type != "cpu":
        raise ValueError(f"the filters must be on the CPU, got {u.device}")
    if bias is None:
        return
    if bias.dtype != torch.float32 or tuple(bias.shape) != (u.shape[2],) or bias.device.type != "cpu":
        raise ValueError(
            f"bias {bias.dtype} {tuple(bias.shape)} on {bias.device} is not float32 ({u.shape[2]},) CPU"
        )
    if not bias.is_contiguous():
        raise ValueError(f"the bias must be contiguous, got stride {bias.stride()}")


@torch.library.custom_op("singleshot::winograd_conv3x3", mutates_args=())
def winograd_conv3x3_op(x: Tensor, u: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, by F(4x4, 3x3), plus bias, then ReLU if ``relu``.

    x (B, C, H, W) channels-last, u (36, C, K), bias (K,) or None (see `check_arguments`)
    -> (B, K, H, W) float32, channels-last.
    """
    check_arguments(x, u, bias)
    kernels = load_kernels()
    images, channels, height, width = x.shape
    out_channels = u.shape[2]
    y = torch.empty(images, out_channels, height, width, memory_format=torch.channels_last)
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
    total = images * tiles_h * tiles_w
    chunk = max(32, CHUNK_ELEMENTS // max(channels, out_channels))
    threads = max(1, torch.get_num_threads())
    x_ptr, y_ptr = x.data_ptr(), y.data_ptr()
    bias_ptr = bias.data_ptr() if bias is not None else None
    for base in range(0, total, chunk):
        count = min(chunk, total - base)
        transformed = torch.empty(36, count, channels)
        _transform(kernels.winograd_input_transform, base, count, threads,
                   x_ptr, transformed.data_ptr(), height, width, channels, tiles_h, tiles_w)  # fmt: skip
        products = torch.bmm(transformed, u)
        _transform(kernels.winograd_output_transform, base, count, threads,
                   products.data_ptr(), y_ptr, bias_ptr, int(relu), height, width, out_channels,
                   tiles_h, tiles_w)  # fmt: skip
    return y


@winograd_conv3x3_op.register_fake
def _(x: Tensor, u: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    check_arguments(x, u, bias)
    if torch.onnx.is_in_onnx_export():  # read here, at run time: Dynamo folds it to False in forward
        raise RuntimeError(NOT_EXPORTABLE)
    shape = (x.shape[0], u.shape[2], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
