"""`resize_bilinear`: the same pixels on any number of threads, and the bilinear rule."""

import contextlib

import pytest
import torch

from singleshot.transforms import preprocess, resize_bilinear
from tolerances import rounding

# (height, width) -> (out_height, out_width): down, up, mixed, tiny and very wide sources
SHAPES = [((375, 500), (160, 160)), ((375, 500), (300, 300)), ((100, 80), (300, 300)),
          ((7, 5), (300, 512)), ((33, 1000), (160, 160)), ((1, 1), (3, 3))]  # fmt: skip


@contextlib.contextmanager
def intra_op_threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _images(generator):
    for (height, width), size in SHAPES:
        yield torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator), size
        yield 255 * torch.rand(3, height, width, generator=generator), size


def test_resize_gives_the_same_pixels_on_one_thread_and_on_two():
    # a data loader's workers run on one thread, evaluation and prediction on several; on
    # one thread PyTorch's kernel for a (1, 3, h, w) input computed other last bits
    generator = torch.Generator().manual_seed(0)
    for image, (height, width) in _images(generator):
        with intra_op_threads(1):
            one = resize_bilinear(image, height, width)
        with intra_op_threads(2):
            two = resize_bilinear(image, height, width)
        assert one.shape == (3, height, width) and one.dtype == torch.float32 and one.is_contiguous()
        assert torch.equal(one, two), (tuple(image.shape), height, width, image.dtype)


def _worker_preprocess(_):
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=generator)
    return torch.get_num_threads(), preprocess([image], 300, (123.0, 117.0, 104.0))


def test_a_data_loader_worker_sees_the_pixels_prediction_sees():
    loader = torch.utils.data.DataLoader([0], batch_size=None, num_workers=1, collate_fn=_worker_preprocess)
    (threads, in_worker), = list(loader)  # fmt: skip
    assert threads == 1  # PyTorch runs its workers on one thread
    with intra_op_threads(2):
        _, in_process = _worker_preprocess(0)
    assert torch.equal(in_worker, in_process)


def _bilinear_float64(image, height, width):
    """align_corners=False, no antialiasing: PyTorch's source coordinates, (i + 0.5) * scale - 0.5
    with scale = in / out, in float32 and clamped below at 0; the two neighbours (the second
    clamped to the last row or column) weighted by the fractional part, in float64."""
    image = image.double()

    def axis(size_in, size_out):
        scale = torch.tensor(size_in / size_out, dtype=torch.float32)
        source = ((torch.arange(size_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0).double()
        low = source.floor().long().clamp(max=size_in - 1)
        return low, (low + 1).clamp(max=size_in - 1), source - low, source.max().item()

    y0, y1, wy, top_y = axis(image.shape[1], height)
    x0, x1, wx, top_x = axis(image.shape[2], width)
    rows = image[:, y0] * (1 - wy)[:, None] + image[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx, max(top_y, top_x, 1.0)


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_resize_is_the_bilinear_rule(index):
    (height_in, width_in), (height, width) = SHAPES[index]
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, height_in, width_in), dtype=torch.uint8, generator=generator)
    expected, top = _bilinear_float64(image, height, width)
    # the float32 weights and 3 products and sums per direction at <= 255 (12 roundings);
    # a kernel that fuses the coordinate's multiply-add rounds it once, not twice: it moves
    # by <= 1 ulp of the largest coordinate, the weights with it, times a step of <= 255
    tolerance = rounding(255, ops=12) + rounding(top) * 255
    torch.testing.assert_close(
        resize_bilinear(image, height, width).double(), expected, atol=tolerance, rtol=0
    )
