"""Video input and output: files, cameras and streams in, annotated videos out (PyAV).

>>> source = parse_source("clip.mp4")            # also "0" (camera 0) or "rtsp://host/stream"
>>> with VideoReader(source) as reader:
...     for frame in reader.frames():              # VideoFrame(index, time, image uint8 (3, H, W))
...         ...

A file is read frame by frame, every frame in order. A live source (a camera or a stream)
goes on whether or not anyone reads it, so `LatestFrames` reads it in a thread and hands
the consumer only the newest frame: a detector slower than the camera skips frames instead
of falling ever further behind. `VideoWriter` writes frames at the source's size and rate.

Decoding and encoding use PyAV (FFmpeg's libraries), an optional package: ``pip install
'singleshot[video]'``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

from .live import LatestFrames

__all__ = [
    "VIDEO_SUFFIXES",
    "STREAM_SCHEMES",
    "VideoSource",
    "VideoFrame",
    "VideoReader",
    "VideoWriter",
    "LatestFrames",
    "parse_source",
    "require_av",
]

# Container suffixes (lower case) taken for video files.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts")
# URL schemes taken for live streams (FFmpeg's network protocols).
STREAM_SCHEMES: tuple[str, ...] = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_AV_MISSING = "video input needs PyAV (the 'av' package): pip install 'singleshot[video]' (or pip install av)"


def require_av() -> ModuleType:
    """The ``av`` module.

    Raises:
        ImportError: PyAV is not installed (the message says how to install it).
    """
    try:
        import av
    except ImportError:
        raise ImportError(_AV_MISSING) from None
    return av


@dataclass(frozen=True)
class VideoSource:
    """Where frames come from.

    Attributes:
        kind: "file", "camera" or "stream" (a URL).
        target: the file path, the camera index (as text) or the URL.
        name: a short name for output files ("clip" for clip.mp4, "camera0", the URL's stem).
        live: frames arrive in real time (a camera, a stream), so stale ones are skipped; a
            file, or a URL of a video file, is read frame by frame instead.
    """

    kind: str
    target: str
    name: str
    live: bool

    def __str__(self) -> str:
        return f"camera {self.target}" if self.kind == "camera" else self.target


def parse_source(text: str) -> VideoSource | None:
    """The video source that ``text`` names, or None when it names something else (an image).

    A URL with a stream scheme (``rtsp://``, ``http://``, ...) is a stream, live unless its
    path ends in a video suffix (a video file served over HTTP is read frame by frame); digits
    that are not an existing file are a camera index; a path with a video suffix is a file.
    """
    url = urlsplit(text)
    if url.scheme.lower() in STREAM_SCHEMES:
        path = Path(url.path)
        recorded = path.suffix.lower() in VIDEO_SUFFIXES
        return VideoSource("stream", text, path.stem or "stream", live=not recorded)
    if text.isdigit() and not Path(text).exists():
        return VideoSource("camera", str(int(text)), f"camera{int(text)}", live=True)
    if Path(text).suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource("file", text, Path(text).stem, live=False)
    return None


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    Attributes:
        index: its position in the source, from 0 (a live source's skipped frames leave gaps).
        time: seconds since the source's first frame.
        image: uint8 (3, H, W) RGB.
    """

    index: int
    time: float
    image: Tensor


def _camera_input(index: str) -> tuple[str, str]:
    """(device, FFmpeg input format) of camera ``index`` on this system."""
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return index, "avfoundation"
    raise ValueError(
        f"camera {index}: camera indices work on Linux (v4l2) and macOS (avfoundation); "
        "on this system pass the camera as a stream URL"
    )


class VideoReader:
    """A video file, camera or stream opened for decoding.

    Args:
        source: what to open (see `parse_source`).
        timeout: seconds a stream may stay silent before reading fails.

    Attributes:
        width, height: the frames' size in pixels.
        fps: frames per second (a Fraction; 30 when the source does not say).
        frame_count: frames in the file when the container says, else None.

    Raises:
        ImportError: PyAV is missing.
        ValueError: the source cannot be opened or holds no video (naming it and why).
    """

    def __init__(self, source: VideoSource, timeout: float = 10.0) -> None:
        av = require_av()
        self.source = source
        self.error: str | None = None
        self._container = self._open(av, source, timeout)
        streams = self._container.streams.video
        if not streams:
            self._container.close()
            raise ValueError(f"{source}: no video stream")
        self._stream = streams[0]
        if not source.live:  # frame threads decode ahead: faster, but a live frame would wait
            self._stream.thread_type = "AUTO"
        context = self._stream.codec_context
        self.width, self.height = int(context.width), int(context.height)
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps = Fraction(rate) if rate else Fraction(30)
        self.frame_count = None if source.live else (int(self._stream.frames) or None)

    @staticmethod
    def _open(av: ModuleType, source: VideoSource, timeout: float) -> Any:
        if source.kind == "file" and not Path(source.target).is_file():
            raise ValueError(f"{source.target}: no such file")
        try:
            if source.kind == "camera":
                device, input_format = _camera_input(source.target)
                return av.open(device, format=input_format, timeout=timeout)
            return av.open(source.target, timeout=timeout)
        except (av.FFmpegError, OSError) as error:
            where = f"camera {source.target} cannot be opened" if source.kind == "camera" else source
            raise ValueError(f"{where}: {error}") from None

    def frames(self) -> Iterator[VideoFrame]:
        """Decode every frame, in order. A decoding error ends the frames early and is kept
        in ``error`` (the frames before it are not lost)."""
        av = require_av()
        first_time: float | None = None
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                time = float(frame.time) if frame.time is not None else index / float(self.fps)
                first_time = time if first_time is None else first_time
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield VideoFrame(index, time - first_time, image)
        except (av.FFmpegError, OSError) as error:
            self.error = f"{self.source}: decoding stopped: {error}"

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class VideoWriter:
    """Encode frames into a video file (H.264 in any container FFmpeg writes from the suffix).

    Frames are placed at their source times (``write(image, time)``), so a live source's
    skipped frames keep the video's timing; the rate is the stream's nominal rate.

    Args:
        path: the output file; its suffix picks the container (.mp4, .mkv, ...).
        width, height: the frames' size (odd sizes are kept, in 4:4:4 chroma).
        fps: frames per second.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction) -> None:
        av = require_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = Fraction(fps)
        self._container = av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width, self._stream.height = width, height
        # 4:2:0 halves the chroma planes, which needs even sides
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._last_pts = -1
        self.frames_written = 0

    def write(self, image: Tensor, time: float) -> None:
        """Add ``image`` (uint8 (3, H, W) RGB, the writer's size) shown from ``time`` seconds."""
        av = require_av()
        array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
        frame = av.VideoFrame.from_ndarray(array, format="rgb24")
        frame.pts = max(round(time * self.fps), self._last_pts + 1)
        self._last_pts = frame.pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
