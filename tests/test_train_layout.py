"""The trainer's memory format: forced by the config, else a trial's (faster) layout; logged,
recorded in the checkpoint and kept on resume. Fake timers say which layout is faster."""

import json

import pytest
import torch

from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.layout import LAYOUTS, list_decisions, trial
from singleshot.training import TrainConfig, train
from singleshot.training.recipes import load_recipe
from train_fixtures import ShapesDataset, resize_flip, tiny_config


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def never(layout, step):
    raise AssertionError("measured, but the decision was to be taken without a trial")


def faster_timer(faster):
    return lambda layout, step: 0.125 if layout == faster else 0.25


def run(out, **changes):
    stop_at = changes.pop("stop_at", None)
    resume = changes.pop("resume", None)
    config = tiny_config(out, **{"iterations": 1, **changes})
    dataset = ShapesDataset(4)
    return train(config, dataset, transform=resize_flip, progress=False, stop_at=stop_at, resume=resume)


def layout_records(out):
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r["decision"] for r in map(json.loads, lines) if r["kind"] == "layout"]


def assert_trained_in(model, channels_last):
    assert model.channels_last is channels_last
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]  # 1x1: both at once
    assert weights
    assert all(p.is_contiguous(memory_format=torch.channels_last) is channels_last for p in weights)


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_forced_layout_trains_without_a_trial(cache, monkeypatch, tmp_path, channels_last):
    monkeypatch.setattr(trial, "time_step", never)
    result = run(tmp_path / "run", channels_last=channels_last)
    assert_trained_in(result.model, channels_last)
    (record,) = layout_records(tmp_path / "run")
    flag = str(channels_last).lower()
    assert record["source"] == "forced" and record["seconds"] is None
    assert record["reason"] == f"channels_last: {flag} in the run's configuration"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["layout"] == record
    assert list_decisions() == []


@pytest.mark.parametrize("faster", LAYOUTS)
def test_auto_trains_in_the_faster_layout_and_says_so(cache, monkeypatch, tmp_path, capsys, faster):
    monkeypatch.setattr(trial, "time_step", faster_timer(faster))
    result = run(tmp_path / "run")  # channels_last: auto, the default
    assert_trained_in(result.model, faster == "channels_last")
    (record,) = layout_records(tmp_path / "run")
    assert record["layout"] == faster and record["source"] == "measured" and record["mode"] == "train"
    assert record["seconds"] == {name: 0.125 if name == faster else 0.25 for name in LAYOUTS}
    assert record["trial_batch"] == 4  # the run's batch of 160-pixel images
    (path,) = list_decisions()
    assert record["cache_file"] == str(path)
    shown = "channels-last" if faster == "channels_last" else "NCHW"
    assert f"layout: {shown} (trial: " in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["layout"] == record


def test_a_resumed_run_keeps_its_layout_and_a_forced_change_says_what_it_costs(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(trial, "time_step", faster_timer("contiguous"))
    run(tmp_path / "run", iterations=2, stop_at=1)
    monkeypatch.setattr(trial, "time_step", never)  # the cache would now say channels-last: unread
    (path,) = list_decisions()
    record = json.loads(path.read_text())
    record["decision"]["layout"] = "channels_last"
    path.write_text(json.dumps(record))
    resumed = run(tmp_path / "run", iterations=2, resume=tmp_path / "run" / "last.pt")
    assert_trained_in(resumed.model, False)
    first, second = layout_records(tmp_path / "run")
    assert (first["source"], second["source"]) == ("measured", "checkpoint")
    assert second["layout"] == "contiguous" and second["seconds"] == first["seconds"]

    forced = run(tmp_path / "run", resume=tmp_path / "run" / "last.pt", channels_last=True, iterations=3)
    assert_trained_in(forced.model, True)
    reason = layout_records(tmp_path / "run")[-1]["reason"]
    assert reason == (
        "channels_last: true in the run's configuration; the checkpointed run trained in NCHW, "
        "so this resume is not bit-identical to an uninterrupted run"
    )


def test_a_malformed_layout_record_names_the_checkpoint(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(trial, "time_step", faster_timer("channels_last"))
    result = run(tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    training = {**checkpoint["training"], "layout": {"layout": "diagonal", "source": "measured"}}
    bad = save_checkpoint(tmp_path / "bad.pt", result.model, training)
    with pytest.raises(ValueError, match=f"{bad}: its training state's layout record is malformed: layout"):
        run(tmp_path / "run", resume=bad, iterations=3)


def test_the_config_says_auto_unless_told_otherwise(tmp_path):
    assert TrainConfig().channels_last == "auto"
    assert load_recipe("demo_compact").channels_last == "auto"
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        recipe = tmp_path / f"{text}.yaml"
        recipe.write_text(f"model: ssd160_compact\nchannels_last: {text}\n")
        assert load_recipe(recipe).channels_last == value
    recipe = tmp_path / "fast.yaml"
    recipe.write_text("channels_last: fastest\n")
    with pytest.raises(ValueError, match="channels_last must be true, false or auto, got 'fastest'"):
        load_recipe(recipe).validate()


def test_the_trial_times_the_runs_whole_batch(cache, monkeypatch):
    """The layouts' gap changes with the batch (SSD300 on a Zen 4: a tie at 2 images, 17% at
    8), so the trial steps hold the run's per-process batch, however large, at its image size."""
    import singleshot
    from singleshot.training.distributed import DistInfo
    from singleshot.training.memory_format import run_layout

    shapes = []

    def timer(layout, step):
        return 0.125 if layout == "contiguous" else 0.25

    real_steps = trial.layout_steps

    def layout_steps(model, input_shape, **kwargs):
        shapes.append(tuple(input_shape))
        return real_steps(model, input_shape, **kwargs)

    monkeypatch.setattr(trial, "time_step", timer)
    monkeypatch.setattr(trial, "layout_steps", layout_steps)
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    config = TrainConfig(model="ssd160_compact", data="unused", out="unused")
    decision = run_layout(config, model, None, 24, None, DistInfo(rank=0, local_rank=0, world_size=1))
    assert shapes == [(24, 3, 160, 160)]
    assert decision.trial_batch == 24 and not decision.channels_last and decision.source == "measured"
