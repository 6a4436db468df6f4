"""Property-based tests of image decoding over damaged files of every supported format.

`read_image`, `image_size` and `check_image` must raise a ValueError naming the file, or
give what the file holds: a uint8 (3, H, W) tensor; an undamaged lossless file decodes to
exactly its pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from fuzzing import expect_named_error, mutated
from singleshot.data.validation import check_image
from singleshot.imageio import image_size, read_image

pytestmark = pytest.mark.fuzz

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}
LOSSLESS = ("PNG", "BMP", "TIFF")


def encode(pixels: np.ndarray, image_format: str, mode: str) -> bytes:
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"lossless": True} if image_format == "WEBP" else {}))
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's start)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


sources = st.tuples(
    st.sampled_from(sorted(FORMATS)),
    st.sampled_from(["RGB", "L"]),
    st.integers(1, 24),
    st.integers(1, 24),
    st.integers(0, 2**32 - 1),
)


@given(source=sources, data=st.data())
@example(source=("PNG", "RGB", 4, 4, 0), data=None).via("a header claiming 60000 x 60000 pixels")
def test_damaged_images_fail_cleanly(tmp_path_factory, source, data):
    image_format, mode, height, width, seed = source
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    original = encode(pixels, image_format, mode)
    content = data.draw(mutated(original, focus=64)) if data is not None else png_claiming(60000, 60000)
    path = tmp_path_factory.getbasetemp() / f"fuzz{FORMATS[image_format]}"
    path.write_bytes(content)
    image = expect_named_error(lambda: read_image(path), path)
    size = expect_named_error(lambda: image_size(path), path)
    checked = expect_named_error(lambda: check_image(path, "full"), path)
    if image is not None:
        assert str(image.dtype) == "torch.uint8" and image.ndim == 3 and image.shape[0] == 3
        assert image.shape[1] * image.shape[2] > 0
    if checked is not None:  # a full check decodes, so it agrees with read_image
        assert image is not None and checked == tuple(image.shape[1:])
    if content == original:
        assert size == (height, width) and image is not None and tuple(image.shape[1:]) == (height, width)
        if image_format in LOSSLESS:
            want = np.repeat(pixels[:, :, :1], 3, axis=2) if mode == "L" else pixels
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), want)


@given(
    content=st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]))
)
def test_garbage_files_fail_cleanly(tmp_path_factory, content):
    for suffix in (".jpg", ".png"):
        path = tmp_path_factory.getbasetemp() / f"garbage{suffix}"
        path.write_bytes(content)
        expect_named_error(lambda path=path: read_image(path), path)
        expect_named_error(lambda path=path: image_size(path), path)


def test_missing_and_folder_paths_are_named(tmp_path: Path):
    for path in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(ValueError, match=str(path)):
            read_image(path)
        with pytest.raises(ValueError, match=str(path)):
            image_size(path)


def test_png_with_a_damaged_stream_is_refused(tmp_path: Path):
    """torchvision's PNG decoder segfaulted on this (a 15x5 PNG whose zlib checksum is wrong)."""
    pixels = np.random.default_rng(1).integers(0, 256, (5, 15, 3), dtype=np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)
    stream = zlib.compress(raw)
    stream = stream[:-4] + bytes(b ^ 0x55 for b in stream[-4:])  # a wrong Adler-32
    header = struct.pack(">IIBBBBB", 15, 5, 8, 2, 0, 0, 0)
    path = tmp_path / "damaged.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match="damaged.png"):
        read_image(path)
