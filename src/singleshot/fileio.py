"""Reading tensor files safely (``torch.load`` with ``weights_only=True``, safetensors) and
writing any file atomically.

Format-neutral readers shared by singleshot checkpoints (`singleshot.checkpoint`) and foreign
weight files (`singleshot.weights`): data only, never code. Checkpoints, downloads and exports
are written with `atomic_write`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
from torch import Tensor

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "naming_failed_writes",
    "is_safetensors_file",
    "read_safetensors",
    "torch_load_data",
    "torch_save_to",
]


@contextlib.contextmanager
def naming_failed_writes(path: str | os.PathLike, remove_partial: bool = False) -> Iterator[None]:
    """Re-raise an OSError that names no file (a failed write: a full disk, a size limit) as
    one naming ``path``: "[Errno 28] No space left on device: 'PATH'". With ``remove_partial``,
    the block writes ``path`` itself, and what it wrote of it is deleted."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            if remove_partial:
                Path(path).unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` (its result is ignored) on a temporary file beside ``path``, fsync
    it, then rename it over ``path``: a failure or crash at any point leaves the previous file
    (if any) as it was. The file gets the previous file's permissions, or a new file's.

    Raises:
        OSError: the file could not be written (a full disk, a size limit, no permission);
            the error names ``path`` where the system's did not.
    """
    path = Path(path)
    if path.is_dir():  # else found only by the final rename, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "a folder is there, not a file", str(path))
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming_failed_writes(path), os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # mkstemp's file is private (0600)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _new_file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the umask (read from /proc, since
    ``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of ``text`` in UTF-8."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


class _KeepWriteError:
    """``handle``'s ``write`` and ``flush``, remembering the OSError a write raised."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def torch_save_to(obj: Any, handle: BinaryIO) -> None:
    """`torch.save` ``obj`` into the open file ``handle``; a failed write raises the file's own
    OSError (torch's zip writer reports it as a RuntimeError, "unexpected pos", that says not why)."""
    kept = _KeepWriteError(handle)
    try:
        torch.save(obj, cast(BinaryIO, kept))  # it calls only write and flush
    except RuntimeError:
        if kept.error is not None:
            raise kept.error from None
        raise


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
