"""Reading tensor files safely: ``torch.load`` with ``weights_only=True`` and safetensors.

Format-neutral readers shared by singleshot checkpoints (`singleshot.checkpoint`) and
foreign weight files (`singleshot.weights`): data only, never code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["is_safetensors_file", "read_safetensors", "torch_load_data"]


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """True for a ``.safetensors`` name or a file that starts like one (u64 header size, then ``{``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file (needs the ``safetensors`` package)."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ValueError(
            f"{path}: reading safetensors files needs the `safetensors` package (pip install safetensors)"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file: {error}") from None
    return tensors, metadata


def torch_load_data(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` with ``weights_only=True``, turning every failure into a ValueError naming ``path``."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise ValueError(f"{path}: empty file")
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise ValueError(f"{path}: not a PyTorch file (neither a torch.save zip archive nor a pickle)")
    if head.startswith(b"PK"):
        _check_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: refused to load: it contains objects other than tensors and plain data "
            f"(loading it could run code from the file): {error}"
        ) from None
    except Exception as error:  # a damaged pickle or archive fails in many ways (IndexError, KeyError...)
        raise ValueError(
            f"{path}: not a readable PyTorch file (truncated or corrupt?): {type(error).__name__}: {error}"
        ) from None


def _check_archive(path: Path) -> None:
    """Check every member of a torch.save archive against its CRC-32 (torch.load does not, so a
    damaged byte in the weights would load silently). Members saved without a checksum
    (``torch.serialization.set_crc32_options(False)`` writes 0) are not checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:
                    continue
                with archive.open(info) as member:
                    while member.read(1 << 22):
                        pass
    except Exception as error:  # zipfile raises BadZipFile, EOFError, OSError, NotImplementedError...
        raise ValueError(
            f"{path}: not a readable PyTorch file (truncated or corrupt?): {type(error).__name__}: {error}"
        ) from None
