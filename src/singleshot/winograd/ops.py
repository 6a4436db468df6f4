"""``torch.ops.singleshot.winograd_conv3x3``: the C kernels as a PyTorch operator.

The operator is the boundary between PyTorch and ``kernels.c``: it checks every
argument the C code reads through a raw pointer (rank, shape, dtype, device, memory
layout) and raises `ValueError` before any C runs, so a bad call is an error and never a
crash. Its fake (meta) implementation gives the output's shape and layout without
running C, so ``torch.export``, ``torch.compile`` and ``make_fx`` record one opaque
operator in their graphs instead of tracing into pointers.

Three steps: the input transform, the 36 matrix products (C, register-blocked over the
packed filters of `singleshot.winograd.conv.pack_filters`) and the output transform, which
can also max-pool each tile's 2x2 windows (``pool``: a convolution whose output feeds only
a 2x2, stride-2 max pooling then never writes its full-size map). Where
the kernels are built with OpenMP (`singleshot.winograd.build`) one C call runs them on
PyTorch's own OpenMP threads (``torch.get_num_threads()``): for narrow layers each thread
takes its own small blocks of tiles through all three steps (`BLOCKS_MAX_FILTERS`), for
wide ones the tiles go through in shared chunks small enough to stay in the shared cache,
each step split between the threads. Without OpenMP this module loops over the chunks and
cuts each step between this thread and helper threads (ctypes releases the GIL). Every
path sums each output in the same order, so they give the same bits.
"""

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .build import kernels_use_openmp, load_kernels

__all__ = [
    "BLOCKS_MAX_FILTERS",
    "BLOCK_TILES",
    "BY_RULE",
    "CHUNK_ELEMENTS",
    "NOT_EXPORTABLE",
    "NO_POOL",
    "POOL_CEIL",
    "POOL_FLOOR",
    "SHARED_CHUNKS",
    "TILE",
    "check_arguments",
    "check_block_tiles",
    "check_pool",
    "pooled_size",
    "winograd_conv3x3_op",
]

TILE = 4
# Tiles per chunk times channels: the chunk's transformed inputs (36 x tiles x channels
# floats, 9.4 MB) stay in the last-level cache until the product reads them. Measured
# best at 512 tiles for 128 channels, 128 for 512.
CHUNK_ELEMENTS = 65536

# With OpenMP, a convolution whose filters have at most this many (input, output) channel pairs
# runs in blocks of BLOCK_TILES tiles, each thread taking its own blocks through all three steps
# in its own cache; wider ones in shared chunks. On an AMD EPYC (Zen 4, 2 threads) blocks ran
# SSD300's conv1_2 ... conv3_3 (up to 256 x 256) 1.2x-1.8x as fast as chunks, conv4_1 and wider
# 0.6x-0.9x (their transformed filters, 19+ MB, no longer stay in the shared cache either).
BLOCKS_MAX_FILTERS = 256 * 256
BLOCK_TILES = 6  # one register block of the products (fewer stalls than 12-96 tiles, measured)
# The operator's ``block_tiles``: n > 0 runs per-thread blocks of n tiles, SHARED_CHUNKS the
# shared chunks, BY_RULE the choice above. Every schedule gives the same bits (each output is
# summed in one order), only its speed differs, and which is fastest depends on the CPU's
# caches: `singleshot.winograd.schedule` times them on the machine.
SHARED_CHUNKS = 0
BY_RULE = -1

# The operator's ``pool``: none, or a 2x2 max pooling with stride 2 and no padding of the
# (biased, ReLU'd) output, whose last odd row or column POOL_FLOOR drops and POOL_CEIL keeps
# as a window of one (``nn.MaxPool2d(2, 2)`` and ``nn.MaxPool2d(2, 2, ceil_mode=True)``).
NO_POOL = 0
POOL_FLOOR = 1
POOL_CEIL = 2

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


def _in_parallel(call: Callable[[int, int], object], parts: list[tuple[int, int]]) -> None:
    """``call(first, last)`` for every (first, last) of ``parts``: the first range on this
    thread, the others on helper threads; returns when all are done."""
    jobs = [_helpers().submit(call, first, last) for first, last in parts[1:]]
    try:
        call(*parts[0])
    finally:
        for job in jobs:
            job.result()


def _split(start: int, stop: int, threads: int) -> list[tuple[int, int]]:
    size = stop - start
    return [(start + size * i // threads, start + size * (i + 1) // threads) for i in range(threads)]


def _transform(kernel: Callable[..., object], base: int, count: int, threads: int, *leading: object) -> None:
    """Run a tile transform built without OpenMP over the chunk's tiles [base, base + count),
    cut between this thread and ``threads - 1`` helpers."""
    parts = _split(base, base + count, threads)
    _in_parallel(lambda first, last: kernel(*leading, first, last, base, count, 1), parts)


def _products(kernel: Callable[..., object], threads: int, *leading: object) -> None:
    """Run the products kernel over the 36 positions, cut as `_transform` cuts tiles."""
    _in_parallel(lambda first, last: kernel(*leading, first, last, 1), _split(0, 36, threads))


def _chunk_tiles(channels: int, out_channels: int) -> int:
    """Tiles per shared chunk (`CHUNK_ELEMENTS`)."""
    return max(32, CHUNK_ELEMENTS // max(channels, out_channels))


def check_block_tiles(block_tiles: object) -> None:
    """Raise `ValueError` unless ``block_tiles`` is an int: tiles per block (> 0),
    `SHARED_CHUNKS` or `BY_RULE`."""
    if isinstance(block_tiles, bool) or not isinstance(block_tiles, int) or block_tiles < BY_RULE:
        raise ValueError(
            f"block_tiles must be tiles per block (> 0), {SHARED_CHUNKS} (shared chunks) or {BY_RULE} "
            f"(by the rule), got {block_tiles!r}"
        )


def check_pool(pool: object) -> None:
    """Raise `ValueError` unless ``pool`` is `NO_POOL`, `POOL_FLOOR` or `POOL_CEIL`."""
    if type(pool) is not int or pool not in (NO_POOL, POOL_FLOOR, POOL_CEIL):
        raise ValueError(
            f"pool must be {NO_POOL} (none), {POOL_FLOOR} (2x2 max pooling, floor) or {POOL_CEIL} "
            f"(2x2 max pooling, ceil mode), got {pool!r}"
        )


def pooled_size(size: int, pool: int) -> int:
    """A side of ``size`` outputs after ``pool`` (see `NO_POOL`)."""
    return size if pool == NO_POOL else (size + 1) // 2 if pool == POOL_CEIL else size // 2


def check_arguments(
    x: Tensor, filters: Tensor, bias: Tensor | None, block_tiles: int = BY_RULE, pool: int = NO_POOL
) -> int:
    """Raise `ValueError` unless the C kernels can read these tensors as laid out; returns K.

    x: (B, C, H, W) float32 CPU, channels-last contiguous; filters: (36, C * K) float32 CPU
    contiguous, from `singleshot.winograd.conv.pack_filters`; bias: None or (K,) float32 CPU
    contiguous; block_tiles: as `check_block_tiles` wants; pool: as `check_pool` wants.
    """
    check_block_tiles(block_tiles)
    check_pool(pool)
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(
            f"expected a float32 CPU (B, C, H, W) input, got {x.dtype} {tuple(x.shape)} on {x.device}"
        )
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"the input must be channels-last contiguous (x.contiguous(memory_format=torch.channels_last)), "
            f"got strides {x.stride()} for shape {tuple(x.shape)}"
        )
    if pool != NO_POOL and min(pooled_size(x.shape[2], pool), pooled_size(x.shape[3], pool)) < 1:
        raise ValueError(f"a {tuple(x.shape[2:])} map is too small for 2x2 max pooling without ceil mode")
    channels = x.shape[1]
    packed = (
        filters.dim() == 2 and filters.shape[0] == 36 and channels > 0 and filters.shape[1] % channels == 0
    )
    if filters.dtype != torch.float32 or not packed or filters.shape[1] == 0:
        raise ValueError(
            f"filters {filters.dtype} {tuple(filters.shape)} are not float32 (36, {channels} * K) "
            "from pack_filters(transform_weight(weight))"
        )
    if filters.device.type != "cpu" or not filters.is_contiguous():
        raise ValueError(
            f"the filters must be contiguous on the CPU, got strides {filters.stride()} on {filters.device}"
        )
    out_channels = filters.shape[1] // channels
    if bias is None:
        return out_channels
    if bias.dtype != torch.float32 or tuple(bias.shape) != (out_channels,) or bias.device.type != "cpu":
        raise ValueError(
            f"bias {bias.dtype} {tuple(bias.shape)} on {bias.device} is not float32 ({out_channels},) CPU"
        )
    if not bias.is_contiguous():
        raise ValueError(f"the bias must be contiguous, got stride {bias.stride()}")
    return out_channels


def _on_python_threads(
    kernels: ctypes.CDLL,
    x: Tensor,
    filters: Tensor,
    bias: Tensor | None,
    relu: bool,
    pool: int,
    y: Tensor,
    threads: int,
) -> None:
    """The convolution without OpenMP: chunk after chunk, each step split between this thread
    and helper threads."""
    images, channels, height, width = x.shape
    out_channels = y.shape[1]
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)
    total = images * tiles_h * tiles_w
    chunk = _chunk_tiles(channels, out_channels)
    x_ptr, y_ptr, filters_ptr = x.data_ptr(), y.data_ptr(), filters.data_ptr()
    bias_ptr = bias.data_ptr() if bias is not None else None
    for base in range(0, total, chunk):
        count = min(chunk, total - base)
        transformed = torch.empty(36, count, channels)
        products = torch.empty(36, count, out_channels)
        _transform(kernels.winograd_input_transform, base, count, threads,
                   x_ptr, transformed.data_ptr(), height, width, channels, tiles_h, tiles_w)  # fmt: skip
        _products(kernels.winograd_products, threads, transformed.data_ptr(), filters_ptr,
                  products.data_ptr(), count, channels, out_channels)  # fmt: skip
        _transform(kernels.winograd_output_transform, base, count, threads,
                   products.data_ptr(), y_ptr, bias_ptr, int(relu), pool, height, width, out_channels,
                   tiles_h, tiles_w)  # fmt: skip


def _on_openmp(
    kernels: ctypes.CDLL,
    x: Tensor,
    filters: Tensor,
    bias: Tensor | None,
    relu: bool,
    pool: int,
    y: Tensor,
    threads: int,
    block_tiles: int = BY_RULE,
) -> None:
    """The convolution in one C call on PyTorch's OpenMP threads: in per-thread blocks of
    ``block_tiles`` tiles, or in shared chunks (`SHARED_CHUNKS`); by default (`BY_RULE`)
    blocks of `BLOCK_TILES` for narrow layers (`BLOCKS_MAX_FILTERS`), else chunks."""
    images, channels, height, width = x.shape
    out_channels = y.shape[1]
    head = (
        x.data_ptr(),
        filters.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        int(relu),
        pool,
        y.data_ptr(),
    )
    shape = (images, height, width, channels, out_channels)
    total = images * -(-height // TILE) * -(-width // TILE)
    if block_tiles == BY_RULE:
        block_tiles = BLOCK_TILES if channels * out_channels <= BLOCKS_MAX_FILTERS else SHARED_CHUNKS
    if block_tiles > 0:
        block_tiles = min(block_tiles, total)  # a block never holds more tiles than there are
        scratch = torch.empty(threads * 36 * block_tiles * (channels + out_channels))
        kernels.winograd_convolution_blocks(*head, scratch.data_ptr(), *shape, block_tiles, threads)
        return
    chunk = min(_chunk_tiles(channels, out_channels), total)
    transformed, products = torch.empty(36, chunk, channels), torch.empty(36, chunk, out_channels)
    kernels.winograd_convolution(*head, transformed.data_ptr(), products.data_ptr(), *shape, chunk, threads)


@torch.library.custom_op("singleshot::winograd_conv3x3", mutates_args=())
def winograd_conv3x3_op(
    x: Tensor,
    filters: Tensor,
    bias: Tensor | None,
    relu: bool,
    block_tiles: int = BY_RULE,
    pool: int = NO_POOL,
) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, by F(4x4, 3x3), plus bias, then ReLU if ``relu``,
    then 2x2 max pooling if ``pool`` says so (`NO_POOL`).

    x (B, C, H, W) channels-last, filters (36, C * K) packed, bias (K,) or None (see
    `check_arguments`) -> (B, K, H', W') float32, channels-last, H' = ``pooled_size(H, pool)``
    and W' likewise. ``block_tiles``: how the OpenMP build schedules the tiles (n > 0:
    per-thread blocks of n tiles; `SHARED_CHUNKS`; `BY_RULE`), the same result whichever;
    kernels without OpenMP always run in chunks.
    """
    out_channels = check_arguments(x, filters, bias, block_tiles, pool)
    kernels = load_kernels()
    images, _, height, width = x.shape
    shape = (images, out_channels, pooled_size(height, pool), pooled_size(width, pool))
    y = torch.empty(shape, memory_format=torch.channels_last)
    threads = max(1, torch.get_num_threads())
    if kernels_use_openmp():
        _on_openmp(kernels, x, filters, bias, relu, pool, y, threads, block_tiles)
    else:
        _on_python_threads(kernels, x, filters, bias, relu, pool, y, threads)
    return y


@winograd_conv3x3_op.register_fake
def _(
    x: Tensor,
    filters: Tensor,
    bias: Tensor | None,
    relu: bool,
    block_tiles: int = BY_RULE,
    pool: int = NO_POOL,
) -> Tensor:
    out_channels = check_arguments(x, filters, bias, block_tiles, pool)
    if torch.onnx.is_in_onnx_export():  # read here, at run time: Dynamo folds it to False in forward
        raise RuntimeError(NOT_EXPORTABLE)
    shape = (x.shape[0], out_channels, pooled_size(x.shape[2], pool), pooled_size(x.shape[3], pool))
    return torch.empty(shape, dtype=torch.float32, device=x.device, memory_format=torch.channels_last)
