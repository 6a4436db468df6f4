"""Training configuration, recipes, schedules, the endless sampler, parameter groups, RNG state."""

import math
import random

import numpy as np
import pytest
import torch

import singleshot
from singleshot.training import TrainConfig, apply_overrides, available_recipes, load_recipe
from singleshot.training.config import ScheduleConfig
from singleshot.training.optim import build_optimizer, parameter_groups
from singleshot.training.recipes import apply_values, parse_override
from singleshot.training.sampler import EndlessSampler, sample_generator
from singleshot.training.schedule import LRSchedule, lr_factor
from singleshot.training.state import capture_rng_state, restore_rng_state
from tolerances import EPS64, rounding

# The paper's runs, as the issue states them (batch 32, SGD lr 1e-3, momentum 0.9, decay 5e-4).
PAPER = {
    "ssd300_voc0712": ("ssd300_voc", [80000, 100000], 120000),
    "ssd512_voc0712": ("ssd512_voc", [80000, 100000], 120000),
    "ssd300_coco": ("ssd300_coco", [280000, 360000], 400000),
    "ssd512_coco": ("ssd512_coco", [280000, 360000], 400000),
}

# A schedule factor is a few float64 operations (cos within an ulp, powers, products, sums)
# on values <= 1, as is its hand-written expectation: <= 8 roundings between them.
SCHED_TOL = rounding(1.0, ops=8, eps=EPS64)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_shipped_recipes_hold_the_paper_schedules(name):
    model, milestones, iterations = PAPER[name]
    config = load_recipe(name)
    assert config.model == model and model in singleshot.available_models()
    assert config.batch_size == 32 and config.iterations == iterations
    opt = config.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 1e-3, 0.9, 5e-4)
    assert config.schedule.name == "multistep" and config.schedule.milestones == milestones
    assert config.schedule.gamma == 0.1
    assert (opt.bias_lr_factor, opt.bias_weight_decay) == (1.0, None)  # the ports' choice by default


def test_ssdlite_recipe_holds_torchvisions_schedule_and_augmentation():
    from singleshot.training.setup import default_transform

    config = load_recipe("ssdlite320_coco")
    assert config.model == "ssdlite320_coco" and config.model in singleshot.available_models()
    assert (config.format, config.train_split, config.val_split, config.eval_metric) == (
        "coco", "train2017", "val2017", "coco",
    )  # fmt: skip
    assert config.batch_size == 8 * 24 and config.iterations == 600 * (-(-117_266 // 8) // 24) == 366_000
    opt, schedule = config.optimizer, config.schedule
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == ("sgd", 0.15, 0.9, 4e-5, False)
    assert (opt.bias_lr_factor, opt.bias_weight_decay, opt.norm_weight_decay) == (1.0, None, None)
    assert (schedule.name, schedule.min_factor) == ("cosine", 0.0)
    assert (schedule.warmup_iterations, schedule.warmup_factor) == (609, 0.001)
    assert config.augment == {"photometric": False, "expand": False}
    model = singleshot.build_model("ssdlite320_coco")
    aug = default_transform(model, config.augment)
    assert (aug.size, aug.photometric, aug.expand) == (320, False, False)
    assert aug.mean == model.image_mean and aug.std == model.image_std
    with pytest.raises(
        ValueError, match="augment: unknown option.s. photometirc; known: photometric, expand"
    ):
        default_transform(model, {"photometirc": False})


def test_every_shipped_recipe_loads_and_validates():
    names = available_recipes()
    assert set(PAPER) | {"demo_compact", "ssdlite320_coco"} <= set(names)
    for name in names:
        load_recipe(name).validate()


def test_overrides_are_typed_and_checked(tmp_path):
    config = apply_overrides(
        TrainConfig(), ["optimizer.lr=0.05", "schedule.milestones=[10, 20]", "amp=bf16", "iterations=1.2e3"]
    )
    assert config.optimizer.lr == 0.05 and config.schedule.milestones == [10, 20]
    assert config.amp == "bf16" and config.iterations == 1200 and isinstance(config.iterations, int)
    assert parse_override("data=/some/path") == (("data",), "/some/path")
    assert apply_values(TrainConfig(), {"data": ["a", "b"]}).data == ["a", "b"]
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(TrainConfig(), ["optimizer.learning_rate=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(TrainConfig(), ["lr"])
    with pytest.raises(ValueError, match="iterations"):
        apply_overrides(TrainConfig(), ["iterations=many"])
    with pytest.raises(ValueError, match="amp"):
        apply_overrides(TrainConfig(), ["amp=fp8"]).validate()
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: ssd300_voc\nbatch: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown key\(s\) batch"):
        load_recipe(recipe)
    with pytest.raises(ValueError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_config_round_trips_through_a_plain_dict():
    config = apply_overrides(load_recipe("ssd300_voc0712"), ["schedule.name=cosine", "clip_grad_norm=10"])
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config


def test_multistep_and_warmup_factors_by_hand():
    config = ScheduleConfig(
        name="multistep", milestones=[3, 5], gamma=0.1, warmup_iterations=2, warmup_factor=0.5
    )
    factors = [lr_factor(config, t, 8) for t in range(7)]
    # t=0: warmup 0.5; t=1: 0.5 + 0.5 * 1/2 = 0.75; t=2: 1; drops for the updates AT 3 and 5
    assert factors == pytest.approx([0.5, 0.75, 1.0, 0.1, 0.1, 0.01, 0.01], abs=SCHED_TOL)


def test_cosine_factors_by_hand():
    config = ScheduleConfig(name="cosine", min_factor=0.2)
    assert lr_factor(config, 0, 100) == pytest.approx(1.0, abs=SCHED_TOL)
    assert lr_factor(config, 50, 100) == pytest.approx(0.6, abs=SCHED_TOL)  # 0.2 + 0.8 * (1 + cos(pi/2)) / 2
    assert lr_factor(config, 25, 100) == pytest.approx(
        0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, abs=SCHED_TOL
    )
    assert lr_factor(config, 100, 100) == pytest.approx(0.2, abs=SCHED_TOL)


def test_cosine_following_a_time_budget_takes_the_further_progress():
    config = ScheduleConfig(name="cosine", min_factor=0.2, follow_time_budget=True)
    # iterations 10% done, budget 50% spent: the cosine stands at 50%
    assert lr_factor(config, 10, 100, time_progress=0.5) == pytest.approx(0.6, abs=SCHED_TOL)
    # iterations ahead of the clock: the iteration term leads, as without the option
    assert lr_factor(config, 50, 100, time_progress=0.1) == pytest.approx(0.6, abs=SCHED_TOL)
    assert lr_factor(config, 10, 100, time_progress=1.0) == pytest.approx(0.2, abs=SCHED_TOL)
    plain = ScheduleConfig(name="cosine", min_factor=0.2)
    assert lr_factor(plain, 10, 100, time_progress=0.5) == lr_factor(plain, 10, 100)  # the same arithmetic
    with pytest.raises(ValueError, match="follow_time_budget needs the cosine schedule"):
        ScheduleConfig(name="multistep", follow_time_budget=True).validate()


def test_a_schedule_following_the_budget_consults_the_clock_only_once_behind_its_pace():
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    config = ScheduleConfig(name="cosine", min_factor=0.2, follow_time_budget=True)
    schedule = LRSchedule(build_optimizer(model, TrainConfig().optimizer), config, total_iterations=100)
    cosine = lambda p: 0.2 + 0.8 * (1 + math.cos(math.pi * p)) / 2  # noqa: E731
    # the first update: start-up time far behind an iteration share of 0, but under PACE_SHARE
    assert not schedule.set_iteration(0, time_progress=0.04) and schedule.factor() == 1.0
    # ahead of the pace (budget 30% spent, iterations 40% done): iterations alone
    assert not schedule.set_iteration(40, time_progress=0.3)
    assert schedule.factor() == pytest.approx(cosine(0.4), abs=SCHED_TOL)
    assert schedule.follows_clock_from is None
    # behind it (60% spent at 50% done): from here on the clock counts, and stays counted
    assert schedule.set_iteration(50, time_progress=0.6)
    assert schedule.follows_clock_from == 50 and schedule.factor() == pytest.approx(
        cosine(0.6), abs=SCHED_TOL
    )
    assert not schedule.set_iteration(80, time_progress=0.7)  # turned once, the iterations lead again
    assert schedule.factor() == pytest.approx(cosine(0.8), abs=SCHED_TOL)
    assert schedule.set_iteration(81, time_progress=0.9) is False
    assert schedule.factor() == pytest.approx(cosine(0.9), abs=SCHED_TOL)
    restored = LRSchedule(build_optimizer(model, TrainConfig().optimizer), config, total_iterations=100)
    restored.load_state_dict(schedule.state_dict())
    assert restored.follows_clock_from == 50
    # without the option the clock never counts
    plain = LRSchedule(build_optimizer(model, TrainConfig().optimizer), ScheduleConfig(name="cosine"), 100)
    assert not plain.set_iteration(10, time_progress=0.9) and plain.follows_clock_from is None
    assert plain.factor() == pytest.approx((1 + math.cos(math.pi * 0.1)) / 2, abs=SCHED_TOL)


def test_schedule_sets_each_group_from_its_own_base_rate():
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    config = TrainConfig().optimizer
    config.lr, config.bias_lr_factor = 0.1, 2.0
    optimizer = build_optimizer(model, config)
    schedule = LRSchedule(optimizer, ScheduleConfig(name="multistep", milestones=[2]), total_iterations=4)
    schedule.set_iteration(2)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({"weights": 0.01, "biases": 0.02, "norm": 0.01}, abs=SCHED_TOL)
    restored = LRSchedule(build_optimizer(model, config), schedule.config, 4)
    restored.load_state_dict(schedule.state_dict())
    assert [g["lr"] for g in restored.optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_parameter_groups_apply_the_paper_bias_rules():
    model = singleshot.build_model("ssd300_voc")
    config = TrainConfig().optimizer
    config.bias_lr_factor, config.bias_weight_decay = 2.0, 0.0
    groups = {g["name"]: g for g in parameter_groups(model, config)}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(groups["weights"]["params"]) == len(convs)  # VGG (15 with conv6/7), extras (8), heads (12)
    assert len(groups["biases"]["params"]) == len(convs)  # every conv has a bias in the VGG presets
    assert [p.shape for p in groups["norm"]["params"]] == [torch.Size([512])]  # the conv4_3 L2Norm scale
    assert groups["biases"]["lr"] == 2 * 1e-3 and groups["biases"]["weight_decay"] == 0.0
    assert groups["weights"]["weight_decay"] == groups["norm"]["weight_decay"] == 5e-4
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_endless_sampler_covers_each_pass_and_crosses_passes_without_stopping():
    sampler = EndlessSampler(5, batch_size=2, seed=3)
    stream = iter(sampler)
    items = [next(stream) for _ in range(15)]  # three passes over 5 images
    assert [position for _, position in items] == list(range(15))
    for p in range(3):
        assert sorted(index for index, _ in items[5 * p : 5 * p + 5]) == [0, 1, 2, 3, 4]
    passes = {tuple(index for index, _ in items[5 * p : 5 * p + 5]) for p in range(3)}
    assert len(passes) > 1  # each pass is shuffled anew
    resumed = iter(EndlessSampler(5, batch_size=2, seed=3, start_position=6))
    assert [next(resumed) for _ in range(9)] == items[6:]


def test_sharded_batches_concatenate_to_the_single_process_batch():
    single = iter(EndlessSampler(7, batch_size=6, seed=1, start_position=4))
    ranks = [
        iter(EndlessSampler(7, batch_size=2, seed=1, rank=r, world_size=3, start_position=4))
        for r in range(3)
    ]
    for _ in range(4):  # four iterations
        combined = [item for stream in ranks for item in [next(stream), next(stream)]]
        assert combined == [next(single) for _ in range(6)]


def test_sample_generators_depend_only_on_seed_and_position():
    a = torch.rand(3, generator=sample_generator(7, 123))
    assert torch.equal(a, torch.rand(3, generator=sample_generator(7, 123)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(7, 124)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(8, 123)))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    torch.save({"rng": state}, tmp_path / "state.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    restore_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_default_loader_workers(monkeypatch):
    from singleshot.training.data import default_workers

    assert default_workers("cpu") == 0  # the loader's work runs between steps: no core taken
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers("cuda") == 3  # 16 cores / 4 processes, one kept for each process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers("cuda") == 8


BAD_SETTINGS = [
    ("optimizer.name=adam", "optimizer.name must be 'sgd' or 'adamw', got 'adam'"),
    ("optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0"),
    ("schedule.name=step", "schedule.name must be multistep, cosine or constant, got 'step'"),
    ("schedule.milestones=[20, 10]", "schedule.milestones must be increasing, got [20, 10]"),
    ("schedule.warmup_factor=2", "warmup_factor in (0, 1]"),
    ("schedule.follow_time_budget=true", "schedule.follow_time_budget needs the cosine schedule"),
    ("batch_size=0", "batch_size and iterations must be >= 1"),
    ("on_nonfinite=ignore", "on_nonfinite must be one of"),
    ("dist_timeout_minutes=0", "dist_timeout_minutes must be > 0, got 0"),
    ("on_bad_sample=drop", "on_bad_sample must be one of"),
    ("channels_last=maybe", "channels_last must be true, false or auto, got 'maybe'"),
    ("workers=-1", "workers must be >= 0, got -1"),
    ("log_every=0", "log_every and checkpoint_every must be >= 1, eval_every >= 0"),
    ("eval_metric=map50", "eval_metric must be voc07, voc12 or coco, got 'map50'"),
    ("clip_grad_norm=0", "clip_grad_norm must be > 0, got 0"),
    ("max_minutes=0", "max_minutes must be > 0, got 0"),
    ("ema_decay=1", "ema_decay must be in (0, 1) (e.g. 0.9998), got 1"),
    ("ema_tau=-1", "ema_tau must be >= 0"),
    ("images=/data/train2017", "images and annotations go together"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_SETTINGS)
def test_each_inconsistent_setting_is_named(setting, message):
    config = apply_overrides(TrainConfig(schedule=ScheduleConfig(name="multistep")), [setting])
    with pytest.raises(ValueError) as error:
        config.validate()
    assert message in str(error.value)
