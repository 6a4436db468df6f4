"""`singleshot.video` and `singleshot.live`: sources, decoding, encoding and the live reader,
on short videos the tests write with PyAV itself."""

import itertools
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from singleshot.live import LatestFrames
from singleshot.video import VideoReader, VideoSource, VideoWriter, parse_source, require_av
from video_fixtures import HEIGHT, WIDTH, read_video, square_frame, write_video


def test_parse_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source("clips/holiday.MP4") == VideoSource(
        "file", "clips/holiday.MP4", "holiday", live=False
    )
    for suffix in (".avi", ".mkv", ".webm"):
        assert parse_source(f"a{suffix}").kind == "file"
    assert parse_source("0") == VideoSource("camera", "0", "camera0", live=True)
    assert parse_source("02").target == "2"
    assert parse_source("rtsp://10.0.0.5:554/cam/main") == VideoSource(
        "stream", "rtsp://10.0.0.5:554/cam/main", "main", live=True
    )
    assert parse_source("http://host/") == VideoSource("stream", "http://host/", "stream", live=True)
    # a video file served over HTTP is read frame by frame, like a file
    assert parse_source("https://host/v/clip.mp4?x=1") == VideoSource(
        "stream", "https://host/v/clip.mp4?x=1", "clip", live=False
    )
    for image_input in ("photo.jpg", "folder", "images/*.png", "-1"):
        assert parse_source(image_input) is None
    (tmp_path / "7").write_bytes(b"")  # an existing file named by digits is that file, not camera 7
    assert parse_source("7") is None


@pytest.mark.parametrize(
    "suffix, codec, fps",
    [(".mp4", "libx264", Fraction(25)), (".avi", "mpeg4", Fraction(30000, 1001)),
     (".mkv", "libx264", Fraction(24)), (".webm", "libvpx-vp9", Fraction(30))],
)  # fmt: skip
def test_reader_gives_every_frame_in_order(tmp_path, suffix, codec, fps):
    path = tmp_path / f"clip{suffix}"
    write_video(path, 7, fps=fps, codec=codec)
    with VideoReader(parse_source(str(path))) as reader:
        assert (reader.width, reader.height) == (WIDTH, HEIGHT)
        assert reader.fps == fps
        frames = list(reader.frames())
    assert reader.error is None
    assert [f.index for f in frames] == list(range(7))
    assert [f.time for f in frames] == pytest.approx([i / fps for i in range(7)], abs=1e-3)
    for frame in frames:
        assert frame.image.dtype == torch.uint8 and frame.image.shape == (3, HEIGHT, WIDTH)
        expected = torch.from_numpy(square_frame(frame.index)).permute(2, 0, 1).float()
        # lossy codecs: close to the frame drawn, and far from its neighbours
        error = (frame.image.float() - expected).abs().mean()
        assert error < 8
        for other in (frame.index - 1, frame.index + 1):
            neighbour = torch.from_numpy(square_frame(other)).permute(2, 0, 1).float()
            assert (frame.image.float() - neighbour).abs().mean() > 4 * error


def test_reader_errors_name_the_source(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="missing.mp4: no such file"):
        VideoReader(parse_source(str(tmp_path / "missing.mp4")))
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="garbage.mkv: .*Invalid data"):
        VideoReader(parse_source(str(garbage)))
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ValueError, match=r"camera 63 cannot be opened: .*/dev/video63"):
        VideoReader(parse_source("63"))
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ValueError, match="camera 0: camera indices work on Linux"):
        VideoReader(parse_source("0"))


def test_decoding_error_keeps_the_frames_before_it(tmp_path):
    path = tmp_path / "damaged.avi"
    write_video(path, 10, codec="mjpeg")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + len(data) // 6] = b"\xff" * (len(data) // 6)  # a damaged stretch of frames
    path.write_bytes(bytes(data))
    with VideoReader(parse_source(str(path))) as reader:
        frames = list(reader.frames())
    assert 0 < len(frames) < 10 and [f.index for f in frames] == list(range(len(frames)))
    assert "damaged.avi: decoding stopped: " in reader.error and "Invalid data" in reader.error


def test_missing_pyav_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"PyAV \(the 'av' package\): pip install 'singleshot\[video\]'"):
        require_av()


@pytest.mark.parametrize("width, height", [(WIDTH, HEIGHT), (65, 47)])
def test_writer_keeps_size_rate_and_times(tmp_path, width, height):
    """Frames keep their source times (a live source's skipped frames leave gaps); odd sizes stay."""
    fps = Fraction(25)
    times = [0.0, 0.04, 0.2, 0.24, 0.6]
    g = np.random.default_rng(0)
    images = [torch.from_numpy(g.integers(0, 256, (3, height, width), dtype=np.uint8)) for _ in times]
    for image in images:  # smooth pictures, which the encoder keeps well
        image[:, : height // 2] = 40
        image[:, height // 2 :] = 200
    path = tmp_path / "out.mp4"
    with VideoWriter(path, width, height, fps) as writer:
        for image, t in zip(images, times):
            writer.write(image, t)
    assert writer.frames_written == 5
    frames, read_times, _, size = read_video(path)
    assert size == (width, height) and len(frames) == 5
    assert read_times == pytest.approx(times, abs=1e-6)
    for frame, image in zip(frames, images):
        assert np.abs(frame.astype(float) - image.permute(1, 2, 0).numpy()).mean() < 3
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.framerate == fps


def test_writer_never_repeats_a_time(tmp_path):
    """Two frames at one time (a rate below the source's) still get distinct, rising times."""
    path = tmp_path / "out.mkv"
    with VideoWriter(path, 32, 32, Fraction(10)) as writer:
        for t in (0.0, 0.01, 0.02, 0.3):
            writer.write(torch.zeros(3, 32, 32, dtype=torch.uint8), t)
    assert read_video(path)[1] == pytest.approx([0.0, 0.1, 0.2, 0.3])


class Source:
    """A fake live source: ``count`` items, one every ``interval`` seconds; records its close."""

    def __init__(self, count, interval=0.0, fail_at=None):
        self.count, self.interval, self.fail_at = count, interval, fail_at
        self.closed_in = None

    def __iter__(self):
        try:
            for index in range(self.count):
                if index == self.fail_at:
                    raise OSError("connection reset")
                time.sleep(self.interval)
                yield index
        finally:
            self.closed_in = threading.current_thread().name


def test_slow_consumer_gets_the_newest_items_only():
    source = Source(200)
    items = iter(source)
    taken = []
    with LatestFrames(items) as live:
        for item in live:
            taken.append(item)
            time.sleep(0.05)  # a detector far slower than the source
    assert taken == sorted(set(taken)) and taken[-1] == 199  # in order, the newest last
    assert len(taken) < 20 and live.dropped == 200 - len(taken)  # nothing lost unaccounted


def test_a_consumer_that_keeps_up_gets_every_item():
    source = Source(20)
    taken_one = threading.Event()

    def paced():  # the next item comes only once the consumer has the last one
        for item in source:
            yield item
            assert taken_one.wait(timeout=30)
            taken_one.clear()

    finished = []
    taken = []
    with LatestFrames(paced(), on_finish=lambda: finished.append(threading.current_thread().name)) as live:
        for item in live:
            taken.append(item)
            taken_one.set()
    assert taken == list(range(20)) and live.dropped == 0
    assert source.closed_in == finished[0] == "singleshot-latest-frames"  # closed in the reader thread


def test_errors_come_after_the_items_before_them():
    live = LatestFrames(iter(Source(10, interval=0.01, fail_at=4)))
    taken = []
    with pytest.raises(OSError, match="connection reset"):
        for item in live:
            taken.append(item)
    assert taken[-1] == 3 and taken == sorted(taken)


def test_close_stops_an_endless_source():
    source = Source(10**9, interval=0.005)
    live = LatestFrames(iter(source))
    taken = list(itertools.islice(live, 3))
    assert taken == sorted(taken) and len(taken) == 3
    assert live.close(timeout=5.0)
    assert source.closed_in == "singleshot-latest-frames"
