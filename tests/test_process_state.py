"""No hidden global state: library calls leave the process alone, imports load only what they need."""

import ctypes.util
import os
import subprocess
import sys

import pytest

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


PLOT_BOTH = """
import json, sys
import matplotlib
from singleshot.evaluation import plot_pr_curves
from singleshot.training.logging import plot_losses

out = sys.argv[1]
before = matplotlib.get_backend()
with open(out + "/log.jsonl", "w") as log:
    for i in (1, 2):
        log.write(json.dumps({"kind": "train", "iteration": i, "loss": 3.0 / i, "loss_loc": 1.0,
                              "loss_conf": 2.0 / i, "lr": 0.01}) + "\\n")
plot_losses(out + "/log.jsonl", out + "/loss.png")
plot_pr_curves({1: {"recall": [0.5, 1.0], "precision": [1.0, 0.5]}}, None, out + "/pr.png")
print(before, matplotlib.get_backend())
"""


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    environment = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", PLOT_BOTH, str(tmp_path)], env=environment,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.split() == ["svg", "svg"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"


def modules_loaded_by(statement: str) -> set[str]:
    """The ``singleshot`` modules a fresh interpreter has loaded after ``statement``."""
    code = f"{statement}\nimport sys\nprint(*(m for m in sys.modules if m.startswith('singleshot')))"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                            check=True)  # fmt: skip
    return set(result.stdout.split())


def test_the_data_package_does_not_import_inference():
    loaded = modules_loaded_by("import singleshot.data")
    assert "singleshot.data.augment" in loaded
    assert "singleshot.inference" not in loaded


def test_importing_boxes_does_not_load_the_models():
    loaded = modules_loaded_by("import singleshot.boxes")
    assert "singleshot.boxes" in loaded
    assert not {"singleshot.models", "singleshot.checkpoint", "singleshot.presets"} & loaded


def test_the_package_names_load_on_first_use():
    import singleshot
    from singleshot import SSD, build_model, load

    assert {"SSD", "available_models", "build_model", "load"} <= set(dir(singleshot))
    assert singleshot.build_model is build_model and singleshot.load is load
    assert isinstance(build_model("ssd160_compact", num_classes=3), SSD)
    assert "ssd300_voc" in singleshot.available_models()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        singleshot.nope  # noqa: B018
