"""Writing where the disk is full: exports and checkpoints fail with an error naming the file,
without a traceback or a crash, and leave the file that was there before as it was.

The commands run in subprocesses under a file-size limit (RLIMIT_FSIZE). The kernel refuses a
write past it with EFBIG ("File too large") as it refuses one on a full disk with ENOSPC;
Python ignores SIGXFSZ, so the write fails instead of killing the process.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import resource
import stat
import subprocess
import sys

import pytest
import torch

import singleshot
from ci import openvino_runs, require
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.data import open_dataset
from singleshot.data.synthetic import SYNTH_CLASSES, write_dataset
from singleshot.export import export_onnx, load_detector
from singleshot.fileio import atomic_write, torch_save_to
from singleshot.training.logging import read_log
from singleshot.visualize import save_image

LIMIT = 1 << 20  # bytes; an ssd160_compact checkpoint or export is about 5 MB
PREVIOUS = b"the previous file"
CLASSES = ["__background__", "cat", "dog"]


def python(*args, room=None):
    """``python ARGS`` in a subprocess; with ``room`` (bytes), no file it writes can grow past it."""

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    return subprocess.run(
        [sys.executable, *map(str, args)], preexec_fn=cap_file_size if room else None,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def singleshot_command(*args, room=None):
    """``singleshot ARGS``, as a user runs it (see `python`)."""
    return python("-m", "singleshot.cli", *args, room=room)


def assert_failed_naming(done, path, command="export"):
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"singleshot {command}: error: ") and str(path) in last, last
    assert "File too large" in last, last


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = singleshot.build_model("ssd160_compact", class_names=CLASSES)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model)


@pytest.mark.parametrize(
    ("fmt", "name", "flags"), [("torchscript", "model.pt", ()), ("onnx", "nms.onnx", ("--with-postprocess",))]
)
def test_export_onto_a_full_disk_names_the_file_and_keeps_the_previous_one(
    checkpoint, tmp_path, fmt, name, flags
):
    out = tmp_path / name
    out.write_bytes(PREVIOUS)
    done = singleshot_command("export", "--checkpoint", checkpoint, "--format", fmt, *flags, out, room=LIMIT)
    assert_failed_naming(done, out)
    assert out.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no partial or temporary file

    # the control: with room to write, the same command replaces the file with the export
    done = singleshot_command("export", "--checkpoint", checkpoint, "--format", fmt, *flags, out)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > LIMIT
    assert load_detector(out).class_names == CLASSES


def test_openvino_ir_onto_a_full_disk_names_the_file_and_keeps_the_previous_one(checkpoint, tmp_path):
    require(importlib.util.find_spec("openvino") is not None, "openvino")
    onnx_file = export_onnx(singleshot.load(checkpoint), tmp_path / "model.onnx")
    xml, weights = tmp_path / "ir.xml", tmp_path / "ir.bin"
    xml.write_bytes(PREVIOUS)
    weights.write_bytes(PREVIOUS + b" (weights)")
    convert = (
        f"from singleshot.export import onnx_to_openvino; onnx_to_openvino({str(onnx_file)!r}, {str(xml)!r})"
    )
    done = python("-c", convert, room=LIMIT)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"OSError: {xml}: OpenVINO could not write the IR"), last
    assert xml.read_bytes() == PREVIOUS and weights.read_bytes() == PREVIOUS + b" (weights)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.bin", "ir.xml", "model.onnx"]

    done = python("-c", convert)
    assert done.returncode == 0, done.stderr
    assert weights.stat().st_size > LIMIT
    if openvino_runs():  # not with oneDNN forced below SSE4.2
        assert load_detector(xml).class_names == CLASSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.bin", "ir.xml", "model.onnx"]


def test_training_onto_a_full_disk_stops_naming_the_checkpoint_and_keeps_the_last_one(tmp_path):
    voc = write_dataset(tmp_path / "voc", "voc", num_train=8, num_test=4, size=64, seed=0, progress=False)
    run = tmp_path / "run"
    first = singleshot_command(
        "train", "--model", "ssd160_compact", "--data", voc, "--out", run, "--batch-size", "4",
        "--train-split", "train", "--val-split", "none", "--workers", "0", "--device", "cpu",
        "--iterations", "2", "--log-every", "1", "--no-progress",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    saved = (run / "last.pt").read_bytes()

    resume = ("train", "--out", run, "--resume", "--iterations", "4", "--no-progress")
    done = singleshot_command(*resume, room=LIMIT)
    assert_failed_naming(done, run / "last.pt", command="train")
    assert (run / "last.pt").read_bytes() == saved
    assert load_checkpoint(run / "last.pt")["training"]["iteration"] == 2  # resumable from there
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "log.jsonl"]

    log = (run / "log.jsonl").read_bytes()  # room for no more log lines: the log is named
    done = singleshot_command(*resume, room=len(log) + 10)
    assert_failed_naming(done, run / "log.jsonl", command="train")
    assert (run / "last.pt").read_bytes() == saved
    assert not (run / "log.jsonl").read_bytes().endswith(b"\n")  # the cut-off record

    done = singleshot_command(*resume)  # with room again, the run resumes from iteration 2
    assert done.returncode == 0, done.stderr
    # the failed runs' records of iterations 3 and 4, and the cut-off one, are gone
    assert [r["iteration"] for r in read_log(run / "log.jsonl", kind="train")] == [1, 2, 3, 4]


def test_detect_onto_a_full_disk_names_the_drawn_image(checkpoint, tmp_path):
    noise = torch.randint(0, 256, (3, 700, 900), generator=torch.Generator().manual_seed(0)).byte()
    image = save_image(noise, tmp_path / "noise.png")  # drawn again as a PNG, noise cannot fit
    assert image.stat().st_size > LIMIT
    out = tmp_path / "detections"
    done = singleshot_command(
        "detect", "--model", checkpoint, "--out", out, "--no-progress", image, room=LIMIT
    )
    assert_failed_naming(done, out / "noise.png", command="detect")
    assert list(out.iterdir()) == []


def test_eval_onto_a_full_disk_keeps_the_metrics_and_names_the_plot(tmp_path):
    voc = write_dataset(tmp_path / "voc", "voc", num_train=1, num_test=4, size=64, seed=0, progress=False)
    model = singleshot.build_model("ssd160_compact", class_names=["__background__", *SYNTH_CLASSES])
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    out = tmp_path / "eval"
    evaluate = ("eval", "--checkpoint", checkpoint, "--data", voc, "--out", out, "--workers", 0,
                "--no-progress")  # fmt: skip
    done = singleshot_command(*evaluate, room=8000)
    assert_failed_naming(done, out / "pr_curves.png", command="eval")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())  # whole, written before the plot
    assert metrics["num_images"] == 4 and set(metrics["ap"]) <= set(SYNTH_CLASSES)


def test_dataset_writing_onto_a_full_disk_names_the_file_and_leaves_no_partial_one(tmp_path):
    out = tmp_path / "synth"
    synth = ("data", "synth", "--format", "coco", "--num-train", 300, "--num-test", 1, "--size", 32, out)
    done = singleshot_command(*synth, room=20_000)  # each image fits; the train split's annotations do not
    annotations = out / "annotations" / "instances_train.json"
    assert_failed_naming(done, annotations, command="data")
    assert len(list((out / "images" / "train").iterdir())) == 300
    assert list(annotations.parent.iterdir()) == []

    done = singleshot_command(*synth, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert annotations.stat().st_size > 20_000
    assert len(open_dataset(out, split="train")) == 300


class FillingFile(io.RawIOBase):
    """A writable file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_torch_save_to_raises_the_files_own_error():
    state = {"weights": torch.zeros(1000, 100)}
    with pytest.raises(OSError) as caught:
        torch_save_to(state, FillingFile(room=10_000))
    assert caught.value.errno == errno.ENOSPC

    with pytest.raises(RuntimeError, match="unexpected pos"):  # what torch.save alone reports
        torch.save(state, FillingFile(room=10_000))
    torch_save_to(state, FillingFile(room=1 << 30))  # with room, it writes


def test_atomic_write_names_the_file_the_system_did_not(tmp_path):
    target = tmp_path / "out.bin"

    def fill(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_write(target, fill)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert str(caught.value) == f"[Errno 28] No space left on device: '{target}'"
    assert list(tmp_path.iterdir()) == []

    missing = tmp_path / "missing"

    def open_missing(handle):
        missing.open()

    with pytest.raises(FileNotFoundError) as caught:  # an error naming its own file is kept
        atomic_write(target, open_missing)
    assert caught.value.filename == str(missing)


def test_a_folder_where_the_file_should_go_is_named(checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    out.mkdir()
    with pytest.raises(IsADirectoryError, match="a folder is there, not a file") as caught:
        atomic_write(out, lambda handle: handle.write(b"x"))
    assert caught.value.filename == str(out) and list(tmp_path.iterdir()) == [out]

    done = singleshot_command("export", "--checkpoint", checkpoint, "--format", "torchscript", out)
    assert done.returncode == 1
    assert done.stderr == f"singleshot export: error: [Errno 21] a folder is there, not a file: '{out}'\n"


def test_atomic_write_gives_a_new_files_permissions_or_keeps_the_previous_ones(tmp_path):
    umask = os.umask(0o027)
    try:
        fresh = atomic_write(tmp_path / "fresh.json", lambda handle: handle.write(b"{}"))
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    finally:
        os.umask(umask)
    kept = tmp_path / "kept.json"
    kept.write_bytes(b"[]")
    kept.chmod(0o604)
    atomic_write(kept, lambda handle: handle.write(b"{}"))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_bytes() == b"{}"
