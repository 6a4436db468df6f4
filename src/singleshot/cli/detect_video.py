"""``singleshot detect`` on video files, cameras and streams.

Each source gives ``OUT/NAME.mp4`` (the frames with the detections drawn, the source's
size and rate) and ``OUT/NAME.jsonl`` (one JSON object per processed frame, written as it
is processed, so a run stopped early keeps what it did).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..live import LatestFrames
    from ..results import Detections
    from ..video import VideoFrame, VideoSource, VideoWriter

__all__ = ["check_video_support", "detect_videos", "video_output_names"]

EXIT_INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C (SIGINT)


def check_video_support() -> None:
    """Raise ValueError naming the package when PyAV is missing (before any model is loaded)."""
    from ..video import require_av

    try:
        require_av()
    except ImportError as error:
        raise ValueError(str(error)) from None


def video_output_names(sources: Sequence[VideoSource], out: Path) -> list[str]:
    """Output stems in ``out``: the source's name, with a counter where two would clash or
    where the annotated video would overwrite an input file."""
    inputs = {Path(s.target).resolve() for s in sources if s.kind == "file"}
    names: list[str] = []
    for source in sources:
        name, n = source.name, 1
        while name in names or (out / f"{name}.mp4").resolve() in inputs:
            name, n = f"{source.name}_{n}", n + 1
        names.append(name)
    return names


@dataclass
class _Run:
    """One source's run: where it writes and what it has done so far."""

    lines: TextIO
    writer: VideoWriter | None
    live: LatestFrames[VideoFrame] | None
    frames: int = 0
    detections: int = 0


def _output(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (a name may hold dots: "my.clip" -> "my.clip.mp4")."""
    return stem.with_name(stem.name + suffix)


def _batches(frames: Iterable[VideoFrame], size: int) -> Iterator[list[VideoFrame]]:
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _frame_record(frame: VideoFrame, det: Detections, label_map: dict[int, int] | None) -> str:
    record = {"frame": frame.index, "time": round(frame.time, 6),
              "detections": det.to_json(frame.index, label_to_category_id=label_map)}  # fmt: skip
    return json.dumps(record) + "\n"


def _run_frames(
    model: Any,
    frames: Iterable[VideoFrame],
    run: _Run,
    args: argparse.Namespace,
    label_map: dict[int, int] | None,
    progress: Any,
) -> None:
    """Detect in batches (one frame at a time from a live source), write each frame's line and
    picture, and count them in ``run``."""
    from ..fileio import naming_failed_writes

    for batch in _batches(frames, 1 if run.live else args.batch_size):
        detections = model.predict([frame.image for frame in batch], score_threshold=args.threshold)
        for frame, det in zip(batch, detections):
            if run.writer is not None:  # the picture first: every line's frame is in the video
                run.writer.write(det.plot(score_threshold=0.0), frame.time)
            with naming_failed_writes(run.lines.name):
                run.lines.write(_frame_record(frame, det, label_map))
            run.detections += len(det["scores"])
            run.frames += 1
        progress.update(len(batch))
        if run.live:
            progress.set_postfix(skipped=run.live.dropped, refresh=False)


def detect_video(
    model: Any, label_map: dict[int, int] | None, source: VideoSource, stem: Path, args: argparse.Namespace
) -> int:
    """Run one source into ``stem``.mp4 and ``stem``.jsonl and print a summary.

    Returns:
        0; 1 when decoding failed part-way; 130 on Ctrl-C (the files are finished either way).
    """
    from tqdm import tqdm

    from ..live import LatestFrames
    from ..video import VideoReader, VideoWriter

    interrupted = False
    with contextlib.ExitStack() as stack:
        reader = VideoReader(source)
        live = None
        if source.live:  # read in a thread, which closes the reader when it ends
            live = stack.enter_context(LatestFrames(reader.frames(), on_finish=reader.close))
        else:
            stack.callback(reader.close)
        writer = None
        if not args.no_draw:
            video_path = _output(stem, ".mp4")
            writer = stack.enter_context(VideoWriter(video_path, reader.width, reader.height, reader.fps))
        lines = stack.enter_context(_output(stem, ".jsonl").open("w", buffering=1))
        run = _Run(lines, writer, live)
        frames = itertools.islice(live if live is not None else reader.frames(), args.max_frames)
        if live is not None:
            tqdm.write(f"{source}: reading live; Ctrl-C stops", file=sys.stderr)
        total = min(filter(None, (reader.frame_count, args.max_frames)), default=None)
        progress = stack.enter_context(tqdm(total=total, unit="frame", desc=source.name,
                                            disable=args.no_progress))  # fmt: skip
        try:
            _run_frames(model, frames, run, args, label_map, progress)
        except KeyboardInterrupt:
            interrupted = True
    return _report(source, stem, args, reader.error, run, interrupted)


def _report(
    source: VideoSource, stem: Path, args: argparse.Namespace, error: str | None, run: _Run, interrupted: bool
) -> int:
    suffixes = (".jsonl",) if args.no_draw else (".mp4", ".jsonl")
    written = ", ".join(str(_output(stem, suffix)) for suffix in suffixes)
    skipped = f", {run.live.dropped} stale frames skipped" if run.live is not None else ""
    print(f"{source}: {run.frames} frames{skipped}, {run.detections} detections "
          f"(score > {args.threshold}) -> {written}")  # fmt: skip
    if interrupted:
        print(f"{source}: stopped by Ctrl-C after {run.frames} frames; the files hold them", file=sys.stderr)
        return EXIT_INTERRUPTED
    if error is not None:
        print(f"{error} (after {run.frames} frames; the files hold them)", file=sys.stderr)
        return 1
    return 0


def detect_videos(
    model: Any,
    label_map: dict[int, int] | None,
    sources: Sequence[VideoSource],
    args: argparse.Namespace,
    out: Path,
) -> int:
    """Run every source in turn into ``out``; the worst exit code (a source that cannot be
    opened is reported and the others still run; Ctrl-C stops them all)."""
    code = 0
    for source, name in zip(sources, video_output_names(sources, out)):
        try:
            result = detect_video(model, label_map, source, out / name, args)
        except ValueError as error:
            print(f"singleshot detect: error: {error}", file=sys.stderr)
            result = 1
        code = max(code, result)
        if result == EXIT_INTERRUPTED:
            break
    return code
