"""Counting what a computation reads back from its device, on a machine without a GPU.

A GPU's values reach the host only by waiting for all the work queued before them (a
host sync). The ``meta`` device stands in for it here: its tensors have shapes and no
values, so every read of a value from it is visible. `DeviceReads` records each such
read and answers it with zeros, so that the computation goes on as it would on a GPU
(whose numbers this test does not need); a read whose result would set a shape
(``nonzero``, boolean indexing) cannot be answered and raises, naming the operation.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operations whose output shape depends on the values: no fake answer can stand in for them.
SHAPE_READS = {"aten.nonzero.default", "aten.masked_select.default", "aten.unique_consecutive.default"}


def _on_device(args, kwargs) -> list[torch.Tensor]:
    flat = tree_flatten((args, kwargs))[0]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.device.type == "meta"]


class DeviceReads(TorchDispatchMode):
    """Inside ``with DeviceReads() as reads:``, ``reads.calls`` lists the value reads (by
    operator name) from ``meta`` tensors: scalar reads (``.item()``, ``float()``, ``bool()``)
    answer 0, copies to the host answer zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        on_device = _on_device(args, kwargs)
        if not on_device:
            return func(*args, **kwargs)
        if name in SHAPE_READS or (name == "aten.index.Tensor" and _boolean_index(args)):
            raise AssertionError(f"{name}: a shape read from the device (a host sync on a GPU)")
        if name in ("aten._local_scalar_dense.default", "aten.is_nonzero.default"):
            self.calls.append(name)
            return 0
        if name == "aten.copy_.default" and args[0].device.type == "cpu":
            self.calls.append(name)
            return args[0].zero_()
        if name == "aten._to_copy.default" and torch.device(kwargs.get("device") or "meta").type == "cpu":
            self.calls.append(name)
            source = args[0]
            return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)


def _boolean_index(args) -> bool:
    return any(t is not None and t.dtype == torch.bool for t in args[1])
