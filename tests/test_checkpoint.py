"""Checkpoints: self-describing round trips, and clear refusals of anything else."""

import copy
import importlib.util
import json
import os
import struct
import sys

import pytest
import torch

import singleshot
from ci import require
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.priors import PriorConfig

HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None


@pytest.fixture(scope="module")
def compact():
    torch.manual_seed(0)
    names = ["__background__", "cat", "dog"]
    config = singleshot.build_model("ssd160_compact").prior_config
    custom = PriorConfig.from_dict({**config.to_dict(), "min_sizes": [12, 30, 60, 90, 120], "clip": "none"})
    model = singleshot.build_model("ssd160_compact", class_names=names, prior_config=custom).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, which are saved as buffers
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model


def test_round_trip_restores_model_and_description(compact, tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "model.pt", compact, training={"iteration": 7})
    loaded = singleshot.load(path)
    assert not loaded.training
    assert loaded.class_names == ["__background__", "cat", "dog"] and loaded.num_classes == 3
    assert (
        loaded.prior_config.min_sizes == (12.0, 30.0, 60.0, 90.0, 120.0)
        and loaded.prior_config.clip == "none"
    )
    assert torch.equal(loaded.priors, compact.priors)
    # the loaded weights are channels-last, the layout forward gives the input: the same
    # arithmetic as the saved model in that layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.parameters() if p.ndim == 4)
    reference = copy.deepcopy(compact).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        for a, b in zip(loaded(x), reference(x)):
            assert torch.equal(a, b)
    assert load_checkpoint(path)["training"] == {"iteration": 7}
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def interrupted_save(monkeypatch, tmp_path, compact, name, where):
    """Save over an existing checkpoint ``name`` with the write failing at ``where``: after the
    serializer wrote part of the file ("serialize"), or when the finished file is fsynced
    ("fsync"). Returns the path, the bytes it held before, and the fsync calls seen."""
    path = tmp_path / name
    save_checkpoint(path, compact)
    before = path.read_bytes()
    other = singleshot.build_model("ssd160_compact", class_names=compact.class_names)  # other weights
    fsynced = []
    if where == "serialize" and name.endswith(".pt"):

        def partial_save(obj, handle, *args, **kwargs):
            handle.write(b"PK\x03\x04 half a zip archive")
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", partial_save)
    elif where == "serialize":
        import safetensors.torch

        def failing(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(safetensors.torch, "save", failing)
    else:

        def failing_fsync(fd):
            fsynced.append(os.fstat(fd).st_size)
            raise OSError("disk full")

        monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, other)
    monkeypatch.undo()
    return path, before, fsynced


@pytest.mark.parametrize("where", ["serialize", "fsync"])
@pytest.mark.parametrize("name", ["last.pt", "last.safetensors"])
def test_a_failed_save_leaves_the_previous_checkpoint_intact(compact, tmp_path, monkeypatch, name, where):
    if name.endswith(".safetensors"):
        require(HAS_SAFETENSORS, "the safetensors package (a dev extra)")
    path, before, fsynced = interrupted_save(monkeypatch, tmp_path, compact, name, where)
    assert path.read_bytes() == before  # the old file, byte for byte
    loaded = singleshot.load(path)
    for key, value in compact.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind
    if where == "fsync":  # the new file was complete in its temporary file when it was fsynced
        assert len(fsynced) == 1 and fsynced[0] > 0


class RunsCode:
    """Unpickling this object calls open(marker, "w"): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused(compact, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = torch.load(save_checkpoint(tmp_path / "ok.pt", compact), weights_only=True)
    checkpoint["training"] = {"payload": RunsCode(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(checkpoint, evil)
    with pytest.raises(ValueError, match=r"evil\.pt: refused to load"):
        singleshot.load(evil)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_named(compact, tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", compact).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        ValueError, match=r"truncated\.pt: not a readable PyTorch file \(truncated or corrupt"
    ):
        singleshot.load(truncated)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt: not a PyTorch file"):
        singleshot.load(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt: empty file"):
        singleshot.load(empty)
    with pytest.raises(ValueError, match=r"missing\.pt: no such checkpoint file"):
        singleshot.load(tmp_path / "missing.pt")

    bare = tmp_path / "bare.pt"
    torch.save(compact.state_dict(), bare)
    with pytest.raises(ValueError, match=r"bare\.pt: not a singleshot checkpoint .*singleshot convert"):
        singleshot.load(bare)


def test_incompatible_preset_is_explained(compact, tmp_path):
    checkpoint = torch.load(save_checkpoint(tmp_path / "c.pt", compact), weights_only=True)
    checkpoint["model"]["preset"] = "ssd300_voc"
    checkpoint["model"]["prior_config"] = singleshot.build_model("ssd300_voc").prior_config.to_dict()
    wrong = tmp_path / "wrong.pt"
    torch.save(checkpoint, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pt: weights do not fit preset 'ssd300_voc' with 3 classes"):
        singleshot.load(wrong)
    checkpoint["model"]["preset"] = "ssd999"
    torch.save(checkpoint, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pt: cannot rebuild the model.*unknown model 'ssd999'"):
        singleshot.load(wrong)
    checkpoint["version"] = 2
    torch.save(checkpoint, wrong)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        singleshot.load(wrong)


def test_category_ids_must_be_integers(compact, tmp_path):
    checkpoint = torch.load(save_checkpoint(tmp_path / "c.pt", compact), weights_only=True)
    checkpoint["model"]["category_ids"] = [0, 17, 18]
    torch.save(checkpoint, tmp_path / "ids.pt")
    assert singleshot.load(tmp_path / "ids.pt").category_ids == [0, 17, 18]
    checkpoint["model"]["category_ids"] = [0, None, "18"]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: cannot rebuild.*category_ids must be a list of integers"):
        singleshot.load(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("postprocess", [1, 2], "postprocess must be a mapping, got [1, 2]"),
        ("postprocess", {"top_k": 5}, "postprocess has unknown settings: top_k"),
        (
            "postprocess",
            {"score_threshold": float("nan")},
            "postprocess score_threshold must be a number, got nan",
        ),
        ("postprocess", {"nms_threshold": "high"}, "postprocess nms_threshold must be a number, got 'high'"),
        ("postprocess", {"pre_nms_top_k": 0}, "postprocess pre_nms_top_k must be a positive integer, got 0"),
        ("postprocess", {"clip": "yes"}, "postprocess clip must be true or false, got 'yes'"),
        ("image_mean", [float("nan"), 1.0, 1.0], "image_mean must be three numbers, got [nan, 1.0, 1.0]"),
    ],
)
def test_edited_settings_in_a_checkpoint_are_named(compact, tmp_path, field, value, message):
    checkpoint = torch.load(save_checkpoint(tmp_path / "c.pt", compact), weights_only=True)
    recorded = checkpoint["model"][field]
    checkpoint["model"][field] = {**recorded, **value} if isinstance(value, dict) else value
    torch.save(checkpoint, tmp_path / "edited.pt")
    with pytest.raises(ValueError) as error:
        singleshot.load(tmp_path / "edited.pt")
    assert str(error.value) == f"{tmp_path / 'edited.pt'}: cannot rebuild the model it describes: {message}"


def write_safetensors_by_hand(path, tensors, metadata):
    """The safetensors layout (u64 header size, JSON header, raw little-endian data), written out."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_safetensors_without_the_package_says_what_to_install(compact, tmp_path, monkeypatch):
    for module in ("safetensors", "safetensors.torch"):  # None in sys.modules: import raises
        monkeypatch.setitem(sys.modules, module, None)
    path = tmp_path / "model.safetensors"
    meta = {"format": "singleshot", "version": "1", "model": "{}"}
    write_safetensors_by_hand(path, {"w": torch.zeros(2)}, meta)
    with pytest.raises(
        ValueError, match=r"model\.safetensors: reading safetensors files needs the `safetensors`"
    ):
        singleshot.load(path)
    with pytest.raises(ValueError, match="writing safetensors files needs"):
        save_checkpoint(tmp_path / "out.safetensors", compact)


def test_safetensors_round_trip(compact, tmp_path):
    require(HAS_SAFETENSORS, "the safetensors package (a dev extra)")
    path = save_checkpoint(tmp_path / "model.safetensors", compact)
    loaded = singleshot.load(path)
    assert loaded.class_names == compact.class_names
    for key, value in compact.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="no training state"):
        save_checkpoint(tmp_path / "t.safetensors", compact, training={"iteration": 1})
    foreign = tmp_path / "foreign.safetensors"
    write_safetensors_by_hand(foreign, {"w": torch.zeros(2)}, {"producer": "elsewhere"})
    with pytest.raises(ValueError, match=r"foreign\.safetensors: not a singleshot checkpoint"):
        singleshot.load(foreign)
