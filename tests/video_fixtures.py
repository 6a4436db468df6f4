"""Short videos of a moving bright square, and a real SSD whose weights make it find the square.

The detector is an ``ssd160_compact`` whose convolutions are set by hand: every backbone
stage averages the brightness of its input (channel 0 only), and one default box per cell of
the 20x20 level (the 24 px square) scores class 1, "square", from that brightness; every
other box and level is silenced and the box offsets are zero. Its top detection is then the
default box of the cell the square sits in (`box_center`; the square moves two cells a
frame), so the boxes of a video's frames follow the square from frame to frame: a test that
mixed up, dropped or reordered frames would see the wrong box. Videos are written and read
back with PyAV itself, not with singleshot's video module.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from torch import nn

import singleshot

SQUARE_NAMES = ["__background__", "square"]
WIDTH, HEIGHT = 192, 128  # not square, so that a width/height mix-up shows
SQUARE_SIZE = (28, 20)  # (width, height) in pixels
CELL = (WIDTH / 20, HEIGHT / 20)  # a cell of the 20x20 level, in the frame's pixels
PERIOD = 8  # the square moves two cells right and one down a frame, back every 8 frames
# The stride-2 convolutions centre a cell's view 3.5 input pixels (of 160) up and left of its
# default box's centre, so the square sits there for its cell to win clearly.
VIEW_OFFSET = (3.5 * WIDTH / 160, 3.5 * HEIGHT / 160)


def square_detector() -> singleshot.SSD:
    """The hand-set detector of bright squares (see the module's docstring)."""
    model = singleshot.build_model("ssd160_compact", num_classes=2, class_names=SQUARE_NAMES).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):  # identity in eval mode
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        for module in model.backbone.modules():
            if isinstance(module, nn.Conv2d):  # channel 0 := the 3x3 mean of RGB, then of channel 0
                inputs = 3 if module.weight.shape[1] == 3 else 1
                module.weight[0, :inputs] = 1.0 / (9 * inputs)
        for conv in model.head.conf:  # (anchor, class) channels: class 1 off everywhere...
            conv.bias.view(-1, 2)[:, 1] = -50.0
        level0 = model.head.conf[0]  # ...except the 24 px box of the 20x20 level, read from brightness
        level0.weight.view(-1, 2, *level0.weight.shape[1:])[1, 1, 0, 1, 1] = 0.1
        level0.bias.view(-1, 2)[1, 1] = -5.0
    return model


def box_center(index: int) -> tuple[float, float]:
    """(x, y) pixel centre of the detector's top box in frame ``index``: its cell's default box."""
    step = index % PERIOD
    column, row = 2 + 2 * step, 2 + step
    return (column + 0.5) * CELL[0], (row + 0.5) * CELL[1]


def square_center(index: int) -> tuple[float, float]:
    """(x, y) pixel centre of the square in frame ``index``."""
    x, y = box_center(index)
    return x - VIEW_OFFSET[0], y - VIEW_OFFSET[1]


def square_frame(index: int) -> np.ndarray:
    """Frame ``index``: uint8 (H, W, 3), a white square on black."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    cx, cy = square_center(index)
    x0, y0 = round(cx - SQUARE_SIZE[0] / 2), round(cy - SQUARE_SIZE[1] / 2)
    frame[y0 : y0 + SQUARE_SIZE[1], x0 : x0 + SQUARE_SIZE[0]] = 255
    return frame


def write_video(
    path,
    count: int,
    fps: Fraction = Fraction(25),
    codec: str = "libx264",
    format: str | None = None,
    **options,
) -> None:
    """Write ``count`` square frames with PyAV: ``format`` the container (None: from the
    suffix), ``options`` the muxer's (e.g. movflags). H.264 is lossless (qp 0): the frames
    decode to exactly `square_frame`'s pixels."""
    import av

    with av.open(str(path), mode="w", format=format, options=options) as container:
        stream = container.add_stream(codec, rate=fps, options={"qp": "0"} if codec == "libx264" else {})
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(square_frame(index), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def read_video(path) -> tuple[list[np.ndarray], list[float], Fraction, tuple[int, int]]:
    """(frames uint8 (H, W, 3), their times in seconds, the stream's rate, (width, height)), by PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [
            (frame.to_ndarray(format="rgb24"), float(frame.time)) for frame in container.decode(stream)
        ]
        rate = Fraction(stream.average_rate)
        size = (stream.codec_context.width, stream.codec_context.height)
    return [f for f, _ in decoded], [t for _, t in decoded], rate, size
