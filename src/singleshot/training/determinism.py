"""Deterministic CUDA arithmetic for a training run, switched on and back off around it.

On the CPU a run is reproducible bit for bit as it is (same machine, same thread count).
On CUDA three things make two runs differ: cuDNN's autotuner picking convolution
algorithms by timing, kernels that add with atomics (scatter, index_add, the backward of
some poolings and interpolations) and TF32 matrix products whose rounding depends on
the algorithm chosen. ``deterministic=True`` turns all three off for the duration of a
run and restores the process's settings afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["deterministic_algorithms"]

# cuBLAS needs a fixed workspace for reproducible matrix products; read when CUDA starts.
_CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the block: deterministic algorithms, cuDNN without autotuning, no TF32."""
    if not enabled:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:6]
        if saved[6] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]
