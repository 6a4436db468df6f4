"""``singleshot detect`` on video files, HTTP streams and cameras, on videos the tests write.

The detector is a real SSD set by hand to find a bright square (`video_fixtures`), so each
frame's detections say which frame they came from: a mixed-up, dropped or reordered frame
shows as a box in the wrong place.
"""

import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.cli.detect import split_inputs
from singleshot.cli.detect_video import video_output_names
from singleshot.video import VideoSource, parse_source
from video_fixtures import HEIGHT, PERIOD, WIDTH, box_center, read_video, square_detector, write_video

THRESHOLD = 0.3
FPS = Fraction(25)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "square.pt", square_detector())


class _Server(http.server.SimpleHTTPRequestHandler):
    """Files of the served folder; ``/slow/NAME`` sends NAME at 1 kB per 0.1 s, as a live
    camera's stream trickles in."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/slow/"):
            return super().do_GET()
        data = (self.directory + "/" + self.path[len("/slow/") :]).encode()
        with open(data, "rb") as file:
            body = file.read()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            for start in range(0, len(body), 1024):
                self.wfile.write(body[start : start + 1024])
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(folder, base URL) of a loopback HTTP server over a folder."""
    folder = tmp_path_factory.mktemp("served")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Server, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def detect_command(checkpoint, out, *inputs):
    return [sys.executable, "-m", "singleshot.cli", "detect", "--checkpoint", str(checkpoint),
            "--out", str(out), "--threshold", str(THRESHOLD), "--no-progress", *inputs]  # fmt: skip


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def top_center(record):
    x, y, w, h = record["detections"][0]["bbox"]
    return x + w / 2, y + h / 2


def by_box(results):
    """(bbox, score) pairs in box order: equal scores may come in either order."""
    return sorted((d["bbox"], d["score"]) for d in results)


def assert_follows_the_square(records):
    """Each frame's best box sits on that frame's square (the square moves two cells a frame)."""
    for record in records:
        assert record["detections"], f"frame {record['frame']}: nothing found"
        assert {d["category_id"] for d in record["detections"]} == {1}
        scores = [d["score"] for d in record["detections"]]
        assert scores == sorted(scores, reverse=True) and scores[-1] > THRESHOLD
        # on this frame's square (to the file's 3 decimals), two cells from the next frame's
        assert top_center(record) == pytest.approx(box_center(record["frame"]), abs=2e-3), record["frame"]


def test_video_file_and_live_stream_through_the_cli(checkpoint, served, tmp_path):
    folder, url = served
    clip = tmp_path / "clip.mp4"
    write_video(clip, PERIOD, fps=FPS)
    write_video(folder / "live", 5 * PERIOD, fps=FPS, codec="libx264", format="mpegts")  # no suffix: live
    out = tmp_path / "out"
    command = detect_command(checkpoint, out, str(clip), "--source", f"{url}/live", "--batch-size", "3")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4", "live.jsonl", "live.mp4"]

    # the file: every frame, in order, at its time, each found where its square is
    records = read_lines(out / "clip.jsonl")
    assert [r["frame"] for r in records] == list(range(PERIOD))
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(PERIOD)], abs=1e-6)
    assert_follows_the_square(records)
    assert all(d["image_id"] == r["frame"] for r in records for d in r["detections"])
    # ...and equal to predicting each decoded frame alone (the CLI ran batches of 3)
    model = square_detector()
    inputs, _, _, _ = read_video(clip)
    drawn, times, rate, size = read_video(out / "clip.mp4")
    assert size == (WIDTH, HEIGHT) and rate == FPS and len(drawn) == PERIOD
    assert times == pytest.approx([r["time"] for r in records], abs=1e-6)
    expected = model.predict(
        [torch.from_numpy(f).permute(2, 0, 1) for f in inputs], score_threshold=THRESHOLD
    )
    plotted = [det.plot(score_threshold=0.0).permute(1, 2, 0).numpy().astype(float) for det in expected]
    for index, (record, det) in enumerate(zip(records, expected)):
        got, wanted = by_box(record["detections"]), by_box(det.to_json(index))
        assert len(got) == len(wanted)
        assert np.allclose([box for box, _ in got], [box for box, _ in wanted], atol=2e-3)
        assert np.allclose([score for _, score in got], [score for _, score in wanted], atol=1e-4)
        # the output frame is this frame with these boxes drawn (up to the encoder's loss):
        # nearer to that than to the frame undrawn or to any other frame drawn
        distance = [np.abs(drawn[index] - other).mean() for other in [inputs[index], *plotted]]
        own = distance.pop(1 + index)
        assert own < 0.5 * min(distance), (index, own, distance)

    # the stream: read live, so frames the model could not keep up with were skipped
    live = read_lines(out / "live.jsonl")
    indices = [r["frame"] for r in live]
    assert indices == sorted(set(indices)) and indices[-1] == 5 * PERIOD - 1  # in order, up to the last
    assert_follows_the_square(live)
    summary = re.search(r"/live: (\d+) frames, (\d+) stale frames skipped", done.stdout)
    assert summary and int(summary[1]) == len(live) and int(summary[1]) + int(summary[2]) == 5 * PERIOD
    _, live_times, live_rate, live_size = read_video(out / "live.mp4")
    assert live_size == (WIDTH, HEIGHT) and len(live_times) == len(live)
    assert live_times == pytest.approx([r["time"] for r in live], abs=1e-6)  # skipped frames leave gaps


def test_max_frames_no_draw_and_a_recorded_http_video(checkpoint, served, tmp_path, capsys):
    folder, url = served
    clip = tmp_path / "my.clip.mkv"
    write_video(clip, PERIOD, fps=FPS)
    write_video(folder / "remote.mp4", PERIOD, fps=FPS, movflags="+faststart")
    out = tmp_path / "out"
    code = main(["detect", "--checkpoint", str(checkpoint), str(clip), f"{url}/remote.mp4", "--out", str(out),
                 "--threshold", "0.3", "--max-frames", "3", "--no-draw", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["my.clip.jsonl", "remote.jsonl"]
    for name in ("my.clip.jsonl", "remote.jsonl"):  # a video file over HTTP: every frame, not live
        records = read_lines(out / name)
        assert [r["frame"] for r in records] == [0, 1, 2]
        assert_follows_the_square(records)


def test_inputs_split_into_images_and_video_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, videos = split_inputs(["a.jpg", "0", "photos", "rtsp://cam/main", "b.webm", "*.png"])
    assert images == ["a.jpg", "photos", "*.png"]
    assert videos == [
        VideoSource("camera", "0", "camera0", live=True),
        VideoSource("stream", "rtsp://cam/main", "main", live=True),
        VideoSource("file", "b.webm", "b", live=False),
    ]


def test_output_names_never_clash_nor_overwrite_an_input(tmp_path):
    sources = [parse_source(str(tmp_path / "a" / "clip.mp4")), parse_source(str(tmp_path / "b" / "clip.mkv")),
               parse_source("0"), parse_source("rtsp://cam/clip")]  # fmt: skip
    assert video_output_names(sources, tmp_path / "out") == ["clip", "clip_1", "camera0", "clip_2"]
    # --out is the input's own folder: the annotated video must not replace the input
    assert video_output_names(sources[:1], tmp_path / "a") == ["clip_1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="camera devices are named the v4l2 way")
def test_a_camera_that_cannot_be_opened(checkpoint, tmp_path, capsys):
    code = main(["detect", "--checkpoint", str(checkpoint), "--source", "63", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "camera 63 cannot be opened: " in capsys.readouterr().err
    assert not (tmp_path / "o" / "camera63.jsonl").exists()
    assert main(["detect", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 1
    assert "name at least one INPUT or --source" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(checkpoint), "--source", "0", "--max-frames", "0"]) == 1
    assert "--max-frames must be >= 1" in capsys.readouterr().err


def test_missing_pyav_is_named_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    clip = tmp_path / "clip.mp4"
    write_video(clip, 2)
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    code = main(["detect", "--checkpoint", str(checkpoint), str(clip), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "pip install 'singleshot[video]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'singleshot'; runpy.run_module('singleshot.cli', run_name='__main__')"
)


def test_ctrl_c_on_a_live_stream_keeps_what_was_done(checkpoint, served, tmp_path):
    folder, url = served
    # Sent slowly: 90 s and more, so that Ctrl-C comes well before the end however slowly the
    # command starts (it comes after about 10 s here).
    frames = 3000
    write_video(folder / "long.ts", frames, fps=FPS, format="mpegts")
    out = tmp_path / "out"
    # Python leaves Ctrl-C ignored in a program started with SIGINT ignored (as a shell starts
    # background jobs, so a suite run that way would pass it on): the command gets Python's own
    # handler back first, as it has when run from a terminal.
    command = detect_command(checkpoint, out, "--source", f"{url}/slow/long.ts")
    assert command[1:3] == ["-m", "singleshot.cli"]
    command[1:3] = ["-c", WITH_CTRL_C]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = out / "long.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (lines.exists() and lines.read_text().count("\n") >= 2):
            assert process.poll() is None, process.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no frame processed within 5 minutes"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped by Ctrl-C" in stderr
    records = read_lines(lines)
    assert len(records) >= 2 and records[-1]["frame"] < frames - 1  # stopped before the stream ended
    assert_follows_the_square(records)
    _, times, _, size = read_video(out / "long.mp4")  # a finished, readable file
    assert size == (WIDTH, HEIGHT)
    assert len(records) <= len(times) <= len(records) + 1  # a frame's picture goes in before its line
    assert times[: len(records)] == pytest.approx([r["time"] for r in records], abs=1e-6)
