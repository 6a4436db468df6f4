"""Training on data that turns bad during the run: ``on_bad_sample`` stop | skip."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
import torch

from singleshot.checkpoint import load_checkpoint
from singleshot.cli import main
from singleshot.data.synthetic import write_dataset
from singleshot.training import BadSampleError, TrainConfig, Trainer


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("voc"), "voc", num_train=8, num_test=2, size=64, seed=0)


@pytest.fixture
def voc_copy(voc, tmp_path):
    import shutil

    return shutil.copytree(voc, tmp_path / "voc")


def config(data, out, **changes) -> TrainConfig:
    values = dict(model="ssd160_compact", data=str(data), train_split="train", val_split=None,
                  out=str(out), batch_size=4, iterations=4, workers=0, device="cpu", log_every=1,
                  checkpoint_every=100)  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def damaged_png(height: int, width: int) -> bytes:
    """A PNG whose header and end are intact (a quick check passes) but whose pixels do not decode."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stream = zlib.compress(b"\0" * (height * (3 * width + 1)))
    stream = stream[:-4] + bytes(b ^ 0x55 for b in stream[-4:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def test_skip_replaces_counts_and_logs_reproducibly(voc_copy, tmp_path):
    finals = []
    for attempt in range(2):  # the same bad files give the same run
        run = tmp_path / f"run{attempt}"
        trainer = Trainer(config(voc_copy, run, on_bad_sample="skip"), progress=False)
        bad = [trainer.train_dataset.image_path(k) for k in (2, 5)]  # after the up-front validation
        kept = [path.read_bytes() for path in bad]
        bad[0].unlink()
        bad[1].write_bytes(b"not an image any more")
        result = trainer.run()
        for path, content in zip(bad, kept):
            path.write_bytes(content)
        # 16 positions = two passes over 8 images: each bad image was met twice
        assert result.bad_samples == 4
        assert load_checkpoint(run / "last.pt")["training"]["bad_samples"] == 4
        assert records(run, "train")[-1]["bad_samples"] == 4
        assert sorted({r["image"] for r in records(run, "bad_sample")}) == sorted(map(str, bad))
        finals.append(result.model.state_dict())
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name


def test_stop_names_the_file_and_keeps_the_last_checkpoint(voc_copy, tmp_path):
    run = tmp_path / "run"
    Trainer(config(voc_copy, run, iterations=6), progress=False).run(stop_at=2)
    digest = hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    trainer = Trainer(config(voc_copy, run, iterations=6), resume=run / "last.pt", progress=False)
    victim = trainer.train_dataset.image_path(3)
    victim.unlink()
    with pytest.raises(BadSampleError, match=str(victim)):
        trainer.run()
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest() == digest
    assert load_checkpoint(run / "last.pt")["training"]["iteration"] == 2


def test_skip_with_every_image_gone_stops_naming_the_first_reason(voc_copy, tmp_path):
    trainer = Trainer(config(voc_copy, tmp_path / "run", on_bad_sample="skip"), progress=False)
    paths = [trainer.train_dataset.image_path(k) for k in range(len(trainer.train_dataset))]
    for path in paths:
        path.write_bytes(b"not an image any more")
    with pytest.raises(BadSampleError, match=r"none of the 8 training images can be read; first: .*\.jpg"):
        trainer.run()
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_cli_image_that_passes_the_quick_check_but_does_not_decode(voc_copy, tmp_path, capsys, policy):
    # The quick check reads the header and the end marker only; the pixels are damaged.
    jpeg = voc_copy / "JPEGImages" / "train_000004.jpg"
    assert jpeg.is_file()
    jpeg.unlink()
    png = jpeg.with_suffix(".png")
    png.write_bytes(damaged_png(64, 64))
    run = tmp_path / "run"
    args = ["train", "--model", "ssd160_compact", "--data", str(voc_copy), "--train-split", "train",
            "--val-split", "none", "--out", str(run), "--batch-size", "4", "--iterations", "2",
            "--workers", "0", "--device", "cpu", "--no-progress", "--on-bad-sample", policy]  # fmt: skip
    code = main(args)
    captured = capsys.readouterr()
    if policy == "stop":
        assert code == 1 and str(png) in captured.err and "--on-bad-sample skip" in captured.err
        assert not (run / "last.pt").exists()
    else:
        assert code == 0 and "1 unreadable images skipped" in captured.out
        assert str(png) in captured.out
        assert load_checkpoint(run / "last.pt")["training"]["bad_samples"] == 1


def test_on_bad_sample_is_validated():
    with pytest.raises(ValueError, match="on_bad_sample"):
        TrainConfig(on_bad_sample="ignore").validate()
