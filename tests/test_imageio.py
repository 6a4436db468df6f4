import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from singleshot.imageio import image_size, read_image, to_rgb_tensor


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def rgb_array():
    return np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)


def test_rgb_png_exact(tmp_path, rgb_array):
    path = save(Image.fromarray(rgb_array), tmp_path / "a.png")
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 9)
    assert torch.equal(image, torch.from_numpy(rgb_array).permute(2, 0, 1))


def test_grayscale_png_is_repeated_over_channels(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    image = read_image(save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    for c in range(3):
        assert torch.equal(image[c], torch.from_numpy(gray))


def test_grayscale_jpeg(tmp_path):
    gray = np.full((16, 16), 100, dtype=np.uint8)
    gray[:, 8:] = 200
    image = read_image(save(Image.fromarray(gray, "L"), tmp_path / "g.jpg", quality=95))
    assert image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert abs(int(image[0, 8, 2]) - 100) <= 3 and abs(int(image[0, 8, 13]) - 200) <= 3


def test_rgba_png_drops_alpha(tmp_path, rgb_array):
    alpha = np.zeros((6, 9, 1), dtype=np.uint8)  # fully transparent: colour must survive anyway
    path = save(Image.fromarray(np.concatenate([rgb_array, alpha], 2), "RGBA"), tmp_path / "a.png")
    assert torch.equal(read_image(path), torch.from_numpy(rgb_array).permute(2, 0, 1))


def test_gray_alpha_png(tmp_path):
    la = np.stack([np.full((4, 4), 77, np.uint8), np.full((4, 4), 10, np.uint8)], axis=2)
    image = read_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    assert torch.equal(image, torch.full((3, 4, 4), 77, dtype=torch.uint8))


@pytest.mark.parametrize("transparency", [None, 1])
def test_palette_png_gives_palette_colours(tmp_path, transparency):
    palette_image = Image.new("P", (3, 2))
    palette_image.putpalette([255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 6))
    palette_image.putdata([0, 1, 0, 1, 1, 0])
    kwargs = {} if transparency is None else {"transparency": transparency}
    image = read_image(save(palette_image, tmp_path / "p.png", **kwargs))
    expected = torch.tensor(
        [[[255, 0, 255], [0, 0, 255]], [[0, 128, 0], [128, 128, 0]], [[0, 255, 0], [255, 255, 0]]],
        dtype=torch.uint8,
    )
    assert torch.equal(image, expected)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    # C=0, M=255, Y=255, K=0 is pure red; C=255, M=Y=K=0 is cyan.
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)
    cmyk[:, 8:] = (255, 0, 0, 0)
    image = read_image(save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.jpg", quality=100))
    assert image.shape == (3, 16, 16)
    red, cyan = image[:, 8, 2].int(), image[:, 8, 13].int()
    assert (red - torch.tensor([255, 0, 0])).abs().max() <= 4
    assert (cyan - torch.tensor([0, 255, 255])).abs().max() <= 4


def test_16bit_gray_png_scaled(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = read_image(save(Image.fromarray(values), tmp_path / "g16.png"))
    # round(v * 255 / 65535): 0, 1, 127.5019 -> 128, 255
    assert image[:, 0].tolist() == [[0, 1, 128, 255]] * 3


def test_16bit_rgb_png_scaled(tmp_path):
    values = np.array([[[0, 257, 65535], [32768, 514, 65280]]], dtype=np.uint16)
    (tmp_path / "c16.png").write_bytes(png16_rgb(values))
    image = read_image(tmp_path / "c16.png")
    # 65280 * 255 / 65535 = 254.0039 -> 254; 514 -> 2
    assert image[:, 0, 0].tolist() == [0, 1, 255]
    assert image[:, 0, 1].tolist() == [128, 2, 254]


def test_bmp_through_pillow(tmp_path, rgb_array):
    path = save(Image.fromarray(rgb_array), tmp_path / "a.bmp")
    assert torch.equal(read_image(path), torch.from_numpy(rgb_array).permute(2, 0, 1))


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" when displayed
    path = save(Image.new("RGB", (20, 10), (10, 20, 30)), tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(path).shape == (3, 10, 20)
    assert image_size(path) == (10, 20)


def test_truncated_jpeg_names_the_file(tmp_path, rgb_array):
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(rgb_array, 8, 0), 8, 1)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: not a readable image \((?i:.*truncated)"):
        read_image(path)


@pytest.mark.parametrize(
    "name, content, reason",
    [("empty.jpg", b"", "empty file"), ("text.png", b"not an image at all", "not a readable image")],
)
def test_bad_files_name_the_file(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"{name}: {reason}"):
        read_image(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.jpg: cannot read image"):
        read_image(tmp_path / "nothere.jpg")
    with pytest.raises(ValueError, match=r"nothere\.jpg: image file not found"):
        image_size(tmp_path / "nothere.jpg")


def test_to_rgb_tensor_inputs(rgb_array):
    expected = torch.from_numpy(rgb_array).permute(2, 0, 1)
    assert torch.equal(to_rgb_tensor(Image.fromarray(rgb_array)), expected)
    assert torch.equal(to_rgb_tensor(expected[:1]), expected[:1].expand(3, -1, -1))
    assert torch.equal(to_rgb_tensor(torch.cat([expected, expected[:1]])), expected)  # RGBA tensor
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_tensor(expected.float())
    with pytest.raises(TypeError):
        to_rgb_tensor(3)
