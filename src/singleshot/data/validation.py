"""Checks shared by the dataset readers: invalid items, box clipping, image checks, progress.

Readers parse and validate every annotation once, when the dataset is opened. What is
wrong with one item (a malformed file, an unknown class, an empty or inverted box, a
missing or corrupt image) is raised as `InvalidItem`, a ValueError whose message names
the file and the reason. `Problems` either re-raises it or, with ``skip_invalid=True``,
records it in ``skipped`` so that a long training run never meets it halfway.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..imageio import read_image

__all__ = [
    "InvalidItem",
    "Problems",
    "clip_to_image",
    "check_image",
    "progress_bar",
    "VERIFY_MODES",
    "CLIPPED",
    "SIZE_MISMATCH",
]

VERIFY_MODES = ("quick", "full", "none")
CLIPPED = "boxes clipped to the image"
SIZE_MISMATCH = "images whose size differs from the annotation's"

_T = TypeVar("_T")
# Files whose last bytes prove they were written completely.
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


class InvalidItem(ValueError):
    """One dataset item cannot be used; ``str(error)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class Problems:
    """What went wrong while a dataset was read.

    Attributes:
        skip_invalid: record invalid items instead of raising.
        skipped: list of (path, reason) of the items left out.
        warnings: Counter of fixed-up problems, e.g. ``{CLIPPED: 3}``.
    """

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.skipped: list[tuple[str, str]] = []
        self.warnings: Counter[str] = Counter()

    def invalid(self, error: InvalidItem) -> None:
        """Raise ``error``, or record it when invalid items are skipped."""
        if not self.skip_invalid:
            raise error
        self.skipped.append((error.path, error.reason))

    def warn(self, kind: str, count: int = 1) -> None:
        if count:
            self.warnings[kind] += count

    def emit_warnings(self, source: str | os.PathLike) -> None:
        """One Python warning summarising the counted fix-ups, if any."""
        if self.warnings:
            summary = ", ".join(f"{count} {kind}" for kind, count in self.warnings.items())
            warnings.warn(f"{source}: {summary}", stacklevel=3)


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """Clip (n, 4) xyxy pixel boxes to [0, width] x [0, height].

    Returns:
        (clipped boxes, float64 (n, 4), number of boxes that changed).
    """
    limits = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(boxes, 0.0, limits)
    changed = int(np.any(clipped != boxes, axis=1).sum()) if len(boxes) else 0
    return clipped, changed


def _ends_completely(path: Path, image_format: str | None) -> bool:
    """Whether a JPEG or PNG file ends with its end marker (truncated downloads do not).

    Other formats have no such cheap test and count as complete.
    """
    if image_format not in ("JPEG", "PNG", "MPO"):
        return True
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(file.tell() - 64, 0))
        tail = file.read()
    if image_format == "PNG":
        return _PNG_END in tail
    return tail.rstrip(b"\x00\r\n\t ").endswith(_JPEG_END)


def check_image(path: Path, verify: str = "quick") -> tuple[int, int] | None:
    """Check an image file and read its stored (height, width).

    Args:
        path: the image file.
        verify: "quick" reads the header and checks that a JPEG/PNG ends with its end
            marker, decoding the file fully only when it does not (so a truncated file is
            caught up front at the cost of a header read); "full" decodes every image
            (slow, catches corruption inside the data too); "none" does not touch the file
            and returns None (the annotation's size is trusted).

    Raises:
        InvalidItem: missing, unreadable, truncated or corrupt image.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if verify == "none":
        return None
    if not path.is_file():
        raise InvalidItem(path, "image file not found")
    try:
        with Image.open(path) as pil:
            size = (int(pil.size[1]), int(pil.size[0]))
            image_format = pil.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidItem(path, f"not a readable image ({error})") from None
    if verify == "full" or not _ends_completely(path, image_format):
        try:
            image = read_image(path)
        except ValueError as error:
            raise InvalidItem(path, _reason(error, path)) from None
        size = (int(image.shape[1]), int(image.shape[2]))
    return size


def _reason(error: Exception, path: Path) -> str:
    return str(error).removeprefix(f"{path}: ")


def progress_bar(items: Iterable[_T], total: int, description: str, progress: bool | None) -> Iterator[_T]:
    """tqdm over ``items``; ``progress`` None shows it for 1000 items or more on a terminal."""
    if progress is None:
        disable: bool | None = None if total >= 1000 else True
    else:
        disable = not progress
    return iter(tqdm(items, total=total, desc=description, disable=disable, unit="img", leave=False))
