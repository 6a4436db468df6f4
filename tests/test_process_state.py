"""No hidden global state: library calls leave the process alone, imports load only what they need."""

import ctypes.util

import singleshot.runtime
from singleshot.cli import main
from singleshot.training import train
from train_fixtures import ShapesDataset, resize_flip, tiny_config


def record_malloc_tuning(monkeypatch) -> list[str]:
    """Record calls of `tune_malloc` and of the glibc lookup it makes on its first real call."""
    calls = []
    monkeypatch.setattr(singleshot.runtime, "tune_malloc", lambda *a, **k: calls.append("tune_malloc"))
    monkeypatch.setattr(singleshot.runtime, "_done", False)
    find_library = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or find_library(name))
    return calls


def test_train_does_not_tune_malloc(tmp_path, monkeypatch):
    calls = record_malloc_tuning(monkeypatch)
    config = tiny_config(tmp_path / "run", iterations=1, log_every=1)
    train(config, ShapesDataset(4), transform=resize_flip, progress=False)
    assert calls == []


def test_the_command_tunes_malloc_at_start(monkeypatch, capsys):
    calls = record_malloc_tuning(monkeypatch)
    assert main(["priors", "ssd300_voc"]) == 0
    assert calls == ["tune_malloc"]
