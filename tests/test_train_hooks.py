"""Training hooks: a user hook's calls, early stopping, the EMA of the weights, their settings."""

import json
import math

import pytest
import torch

from singleshot.checkpoint import load_checkpoint
from singleshot.cli import build_parser
from singleshot.cli.train import build_config
from singleshot.training import train
from singleshot.training.early_stop import EarlyStopping
from singleshot.training.ema import ema_decay_at
from singleshot.training.hooks import HookBase
from train_fixtures import ShapesDataset, resize_flip, tiny_config


class ScriptedEvaluator:
    """Returns the given mAPs in turn; records each call's model and its channels_last."""

    def __init__(self, values):
        self.values = list(values)
        self.models = []

    def __call__(self, model, dataset, metric, batch_size, device, progress):
        value = self.values[len(self.models)]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        self.models.append((model, model.channels_last, state))
        return {"map": value, "ap": {1: value}}

    @property
    def calls(self):
        return len(self.models)


def run(config, hooks=(), evaluator=None, **kwargs):
    val = ShapesDataset(2, seed=1) if evaluator is not None else None
    return train(config, ShapesDataset(8), val_dataset=val, transform=resize_flip, evaluator=evaluator,
                 progress=False, hooks=hooks, **kwargs)  # fmt: skip


def log(run_dir, kind):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


class Recorder(HookBase):
    """Records each call with what the trainer shows at that moment."""

    def __init__(self, stop_at=None):
        self.calls = []
        self.stop_at = stop_at

    def before_train(self):
        self.calls.append(("before_train", self.trainer.iteration))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iteration))

    def after_step(self):
        t = self.trainer
        saved = t.last_checkpoint is not None and load_checkpoint(t.last_checkpoint)["training"]["iteration"]
        self.calls.append(("after_step", t.iteration, t.step_losses is not None, t.metrics, saved))
        if t.iteration == self.stop_at:
            t.stop("enough")

    def after_train(self):
        self.calls.append(("after_train", self.trainer.iteration))


def test_a_user_hook_is_called_in_order_after_the_built_in_ones(tmp_path):
    config = tiny_config(tmp_path, iterations=3, eval_every=2, checkpoint_every=2)
    hook = Recorder()
    run(config, [hook], ScriptedEvaluator([0.25, 0.5]))
    m1, m2 = {"map": 0.25, "ap": {1: 0.25}}, {"map": 0.5, "ap": {1: 0.5}}
    # after_step sees the step done, the evaluation and the checkpoint of that iteration
    assert hook.calls == [
        ("before_train", 0),
        ("before_step", 0), ("after_step", 1, True, None, False),
        ("before_step", 1), ("after_step", 2, True, m1, 2),
        ("before_step", 2), ("after_step", 3, True, m2, 3),
        ("after_train", 3),
    ]  # fmt: skip


def test_a_hook_stops_the_run_which_then_logs_evaluates_and_saves(tmp_path):
    config = tiny_config(tmp_path, iterations=8, eval_every=2, log_every=2)
    evaluator = ScriptedEvaluator([0.25, 0.5])
    result = run(config, [Recorder(stop_at=3)], evaluator)
    assert result.iteration == 3 and result.stop_reason == "enough" and not result.stopped_by_budget
    assert evaluator.calls == 2 and result.metrics["map"] == 0.5  # at 2, then at the stop
    assert load_checkpoint(tmp_path / "last.pt")["training"]["iteration"] == 3
    assert [r["iteration"] for r in log(tmp_path, "train")] == [2, 3]
    assert [r["iteration"] for r in result.history] == [2, 3]


def test_hooks_must_be_hook_objects(tmp_path):
    with pytest.raises(TypeError, match="HookBase"):
        run(tiny_config(tmp_path), [object()])


def test_training_leaves_the_model_memory_format_setting_alone(tmp_path):
    for channels_last in (True, False):
        hook = Recorder()
        evaluator = ScriptedEvaluator([0.1, 0.2])
        config = tiny_config(tmp_path / str(channels_last), iterations=2, eval_every=1,
                             channels_last=channels_last)  # fmt: skip
        result = run(config, [hook], evaluator)
        # evaluation runs the model as it trains: no switching back and forth
        assert [flag for _, flag, _ in evaluator.models] == [channels_last] * 2
        assert result.model.channels_last is channels_last


# -- early stopping -----------------------------------------------------------------------------


def test_early_stopping_stops_after_patience_evaluations_without_gain(tmp_path):
    config = tiny_config(tmp_path, iterations=10, eval_every=1, early_stop_patience=2)
    evaluator = ScriptedEvaluator([0.1, 0.3, 0.3, 0.29, 0.31])
    result = run(config, evaluator=evaluator)
    # 0.1 and 0.3 improve; 0.3 (equal) and 0.29 do not: patience 2 is used up at the 4th
    assert evaluator.calls == 4
    assert result.iteration == 4 and result.stop_reason == "early_stopping"
    assert load_checkpoint(tmp_path / "last.pt")["training"]["iteration"] == 4
    assert load_checkpoint(tmp_path / "best.pt")["training"]["iteration"] == 2
    assert log(tmp_path, "early_stop") == [
        {"kind": "early_stop", "iteration": 4, "best_map": 0.3, "best_iteration": 2, "patience": 2}
    ]
    assert result.history[-1]["iteration"] == 4  # the window since the last log line is logged


def test_early_stopping_resumes_its_count(tmp_path):
    config = tiny_config(tmp_path, iterations=10, eval_every=1, early_stop_patience=2)
    first = run(config, evaluator=ScriptedEvaluator([0.1, 0.3, 0.3]), stop_at=3)
    assert first.iteration == 3 and first.stop_reason is None
    state = load_checkpoint(tmp_path / "last.pt")["training"]["hooks"]["early_stopping"]
    assert state == {"best": 0.3, "best_iteration": 2, "bad_evaluations": 1}
    resumed = run(config, evaluator=ScriptedEvaluator([0.29, 0.31]), resume=tmp_path / "last.pt")
    assert resumed.iteration == 4 and resumed.stop_reason == "early_stopping"


def test_early_stopping_counts_gains_above_min_delta_only():
    rule = EarlyStopping(patience=2, min_delta=0.05)
    # 0.2 gains 0.1; 0.24 gains 0.04 (no); 0.26 gains 0.06 (yes, resets); 0.3 and 0.31: no, no
    assert [rule.observe(v, i) for i, v in enumerate([0.1, 0.2, 0.24, 0.26, 0.3, 0.31])] == [
        False, False, False, False, False, True,
    ]  # fmt: skip
    assert (rule.best, rule.best_iteration) == (0.26, 3)


# -- exponential moving average -----------------------------------------------------------------


def test_ema_decay_warms_up_as_documented():
    assert ema_decay_at(1, 0.9, 2.0) == 0.9 * (1 - math.exp(-0.5))
    assert ema_decay_at(4, 0.9998, 2000.0) == 0.9998 * (1 - math.exp(-4 / 2000))
    assert ema_decay_at(7, 0.9, 0.0) == 0.9  # tau 0: constant


class RawWeights(HookBase):
    """Records the trained (raw) model's state before training and after each step."""

    def __init__(self):
        self.states = []

    def before_train(self):
        self.record()

    def after_step(self):
        self.record()

    def record(self):
        self.states.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})


def test_ema_equals_a_hand_loop_over_the_raw_weights_and_is_evaluated_and_saved(tmp_path):
    config = tiny_config(tmp_path, iterations=4, ema_decay=0.9, ema_tau=2.0)
    raw = RawWeights()
    evaluator = ScriptedEvaluator([0.5])
    result = run(config, [raw], evaluator)
    parameters = {name for name, _ in result.model.named_parameters()}
    ema = dict(raw.states[0])
    for updates, state in enumerate(raw.states[1:], 1):
        d = 0.9 * (1 - math.exp(-updates / 2.0))
        # parameters averaged; buffers (BatchNorm statistics and counters) copied
        ema = {k: ema[k] * d + v * (1 - d) if k in parameters else v for k, v in state.items()}
    saved = load_checkpoint(tmp_path / "last.pt")
    evaluated_model, _, evaluated = evaluator.models[0]
    assert evaluated_model is result.model
    for name, tensor in ema.items():
        assert torch.equal(result.model.state_dict()[name], tensor), name
        assert torch.equal(saved["state_dict"][name], tensor), name
        assert torch.equal(evaluated[name], tensor), name
        assert torch.equal(saved["training"]["hooks"]["ema"]["raw_state_dict"][name], raw.states[-1][name])
    assert saved["training"]["hooks"]["ema"]["updates"] == 4
    moved = [k for k in parameters if not torch.equal(ema[k], raw.states[-1][k])]
    assert len(moved) > 40  # the average is not the trained weights (of 62 tensors, those that moved)
    assert any("running_mean" in k and not torch.equal(ema[k], raw.states[0][k]) for k in ema)


def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path):
    dataset = ShapesDataset(10)
    whole = tiny_config(tmp_path / "whole", ema_decay=0.8, ema_tau=3.0)
    split = tiny_config(tmp_path / "split", ema_decay=0.8, ema_tau=3.0)
    train(whole, dataset, transform=resize_flip, progress=False)
    train(split, dataset, transform=resize_flip, progress=False, stop_at=5)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["training"]["hooks"]["ema"]["updates"] == 5
    train(split, dataset, transform=resize_flip, progress=False, resume=tmp_path / "split" / "last.pt")
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    ema_a, ema_b = a["training"]["hooks"]["ema"], b["training"]["hooks"]["ema"]
    assert ema_a["updates"] == ema_b["updates"] == 8
    for name, tensor in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], tensor), name  # the average
        assert torch.equal(ema_b["raw_state_dict"][name], ema_a["raw_state_dict"][name]), name  # the weights
    assert not torch.equal(a["state_dict"]["head.loc.0.weight"], ema_a["raw_state_dict"]["head.loc.0.weight"])


def test_resuming_an_ema_run_without_ema_is_refused(tmp_path):
    run(tiny_config(tmp_path, iterations=1, ema_decay=0.9))
    with pytest.raises(ValueError, match="resume it with ema_decay set"):
        run(tiny_config(tmp_path, iterations=2), resume=tmp_path / "last.pt")


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"ema_decay": 0.0}, "ema_decay must be in"),
        ({"ema_decay": 0.9, "ema_tau": -1.0}, "ema_tau must be >= 0"),
        ({"early_stop_patience": 0, "eval_every": 1}, "early_stop_patience must be >= 1"),
        ({"early_stop_patience": 2}, "set eval_every > 0"),
        ({"early_stop_min_delta": -0.1}, "early_stop_min_delta must be >= 0"),
    ],
)
def test_bad_hook_settings_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **changes).validate()


def test_early_stopping_without_a_validation_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="early stopping needs evaluations"):
        run(tiny_config(tmp_path, eval_every=1, early_stop_patience=2))


def test_the_command_line_sets_ema_and_early_stopping():
    args = build_parser().parse_args(["train", "--ema-decay", "0.9998", "--early-stop-patience", "5",
                                      "--early-stop-min-delta", "0.001", "--eval-every", "500"])  # fmt: skip
    config, _ = build_config(args)
    assert (config.ema_decay, config.ema_tau) == (0.9998, 2000.0)
    assert (config.early_stop_patience, config.early_stop_min_delta) == (5, 0.001)
    default, _ = build_config(build_parser().parse_args(["train"]))
    assert default.ema_decay is None and default.early_stop_patience is None
    with pytest.raises(ValueError, match="ema_decay must be in"):
        build_config(build_parser().parse_args(["train", "--ema-decay", "1.5"]))
    with pytest.raises(ValueError, match="set eval_every > 0"):
        build_config(build_parser().parse_args(["train", "--early-stop-patience", "3"]))


@pytest.mark.parametrize("workers", [None, 1])
def test_evaluation_reads_images_with_the_runs_loader_workers(tmp_path, monkeypatch, workers):
    """config.workers sets the evaluation's loader too; None = the default (none on the CPU)."""
    from torch.utils.data import DataLoader

    import singleshot.evaluation.run as evaluation_run

    seen = []

    class Recording(DataLoader):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("num_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(evaluation_run, "DataLoader", Recording)
    config = tiny_config(tmp_path, iterations=1, workers=workers)
    result = train(config, ShapesDataset(4), ShapesDataset(3, seed=2), transform=resize_flip, progress=False)
    assert seen == [0 if workers is None else workers]
    assert result.metrics["num_images"] == 3
