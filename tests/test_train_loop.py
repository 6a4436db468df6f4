"""The training loop on tiny in-memory data: learning, resume, NaN handling, best checkpoint, budget."""

import json
import math

import pytest
import torch

import singleshot
from singleshot.checkpoint import load_checkpoint, save_checkpoint
from singleshot.training import NonFiniteLossError, train
from singleshot.training.sampler import epoch_permutation
from tolerances import EPS64, rounding
from train_fixtures import ShapesDataset, resize_flip, tiny_config


def run(config, dataset, **kwargs):
    return train(config, dataset, transform=resize_flip, progress=False, **kwargs)


def test_training_reduces_the_loss(tmp_path):
    config = tiny_config(tmp_path, iterations=24, log_every=4)
    result = run(config, ShapesDataset(16))
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]
    # the log on disk holds the same records, one JSON object per line
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines[:1]] == ["layout"]  # the run's memory format comes first
    lines = [r for r in lines if r["kind"] == "train"]
    assert [r["iteration"] for r in lines] == [4, 8, 12, 16, 20, 24]
    assert [r["loss"] for r in lines] == losses  # JSON writes float64s so that they read back exactly
    for r in lines:
        # float64: (loc + conf) / n against loc / n + conf / n, 4 roundings at <= the loss
        assert r["loss"] == pytest.approx(r["loss_loc"] + r["loss_conf"], abs=rounding(r["loss"], 4, EPS64))
    # the checkpoint is a loadable detector that knows its classes
    model = singleshot.load(tmp_path / "last.pt")
    assert model.class_names == ShapesDataset.classes
    assert load_checkpoint(tmp_path / "last.pt")["training"]["iteration"] == 24


def noisy_resize_flip(image, target, generator=None):
    """`resize_flip` plus noise from the GLOBAL generator: resume must restore that state too."""
    x, target = resize_flip(image, target, generator)
    return x + torch.rand(x.shape), target


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    dataset = ShapesDataset(10)  # 10 images, batch 4: batches straddle the passes over the data
    torch.manual_seed(1)
    whole = train(tiny_config(tmp_path / "whole"), dataset, transform=noisy_resize_flip, progress=False)
    torch.manual_seed(1)
    first = train(
        tiny_config(tmp_path / "split"), dataset, transform=noisy_resize_flip, progress=False, stop_at=5
    )
    assert first.iteration == 5 and whole.iteration == 8
    state = load_checkpoint(tmp_path / "split" / "last.pt")["training"]
    assert state["iteration"] == 5 and state["sampler"]["position"] == 20
    torch.manual_seed(123)  # the global generator's state comes from the checkpoint, not from here
    resumed = train(
        tiny_config(tmp_path / "split"),
        dataset,
        transform=noisy_resize_flip,
        progress=False,
        resume=tmp_path / "split" / "last.pt",
    )
    assert resumed.iteration == 8

    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():  # weights and BatchNorm running statistics
        assert torch.equal(b["state_dict"][name], tensor), name  # bit for bit: the same arithmetic
    momentum_a = a["training"]["optimizer"]["state"]
    momentum_b = b["training"]["optimizer"]["state"]
    for key in momentum_a:
        assert torch.equal(momentum_b[key]["momentum_buffer"], momentum_a[key]["momentum_buffer"]), key
    expected = {"iteration": 7, "follows_clock_from": None}
    assert a["training"]["scheduler"] == b["training"]["scheduler"] == expected
    # the resumed run appended to the same log: iterations 2, 4 (+5 at the stop), then 6, 8
    records = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [2, 4, 5, 6, 8]
    # each process logged its memory format; the resumed one took the checkpoint's, untimed
    layouts = [(r["iteration"], r["decision"]) for r in records if r["kind"] == "layout"]
    assert [(iteration, d["source"]) for iteration, d in layouts][1:] == [(5, "checkpoint")]
    assert layouts[0][1]["layout"] == layouts[1][1]["layout"]
    assert layouts[0][1]["seconds"] == layouts[1][1]["seconds"]


def test_nonfinite_loss_stops_with_the_batch_and_keeps_the_last_checkpoint(tmp_path):
    # 16 images, batch 2: the image at place 12 of the first pass is in iteration 12 // 2 = 6.
    poisoned = int(epoch_permutation(16, 0, 0)[12])
    dataset = ShapesDataset(16, poison=(poisoned,))
    config = tiny_config(tmp_path, batch_size=2, iterations=10, checkpoint_every=4)
    with pytest.raises(NonFiniteLossError) as caught:
        run(config, dataset)
    error = caught.value
    assert error.iteration == 6
    assert f"poison{poisoned}" in error.image_ids and len(error.image_ids) == 2
    assert set(error.losses) == {"loss_loc", "loss_conf"}
    assert not all(torch.isfinite(torch.tensor(list(error.losses.values()))))
    assert "iteration 6" in str(error) and f"poison{poisoned}" in str(error)
    # the checkpoint of iteration 4 is in place, intact and finite; no temporary file is left
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["training"]["iteration"] == 4
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["last.pt"]


def test_nonfinite_loss_skips_the_step_when_asked_and_counts_it(tmp_path):
    dataset = ShapesDataset(8, poison=(5,))
    config = tiny_config(tmp_path, iterations=6, on_nonfinite="skip")
    result = run(config, dataset)
    assert result.iteration == 6
    assert result.skipped_steps == 3  # 6 iterations = 3 passes over 8 images: the poisoned one in each
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["training"]["skipped_steps"] == 3
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    assert result.history[-1]["skipped"] == 3


class ScriptedEvaluator:
    """Returns the given mAPs in turn and records the iterations it was called at."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, model, dataset, metric, batch_size, device, progress):
        value = self.values[self.calls]
        self.calls += 1
        return {"map": value, "ap": {1: value, 2: value}}


def test_best_checkpoint_follows_the_evaluation_map(tmp_path):
    evaluator = ScriptedEvaluator([0.3, 0.5, 0.4])
    config = tiny_config(tmp_path, iterations=6, eval_every=2)
    result = run(config, ShapesDataset(8), val_dataset=ShapesDataset(4, seed=1), evaluator=evaluator)
    assert evaluator.calls == 3
    assert result.best_map == 0.5
    best = load_checkpoint(tmp_path / "best.pt")["training"]
    assert best["iteration"] == 4 and best["best_map"] == 0.5
    last = load_checkpoint(tmp_path / "last.pt")["training"]
    assert last["iteration"] == 6 and last["best_map"] == 0.5 and last["best_iteration"] == 4
    evals = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [(r["iteration"], r["map"]) for r in evals] == [(2, 0.3), (4, 0.5), (6, 0.4)]


def test_time_budget_stops_cleanly_and_still_evaluates(tmp_path):
    evaluator = ScriptedEvaluator([0.7])
    config = tiny_config(tmp_path, iterations=50, max_minutes=1e-6)
    result = run(config, ShapesDataset(8), val_dataset=ShapesDataset(4, seed=1), evaluator=evaluator)
    assert result.stopped_by_budget
    assert result.iteration == 1
    assert evaluator.calls == 1 and result.metrics["map"] == 0.7
    assert load_checkpoint(tmp_path / "last.pt")["training"]["iteration"] == 1


@pytest.mark.parametrize("follow", [False, True])
def test_a_schedule_following_the_budget_ends_annealed_when_the_budget_stops_the_run(tmp_path, follow):
    config = tiny_config(tmp_path, iterations=50, max_minutes=1e-6)  # cosine, warmup 2, lr 0.02
    config.schedule.warmup_iterations = 0
    config.schedule.min_factor = 0.1
    config.schedule.follow_time_budget = follow
    result = run(config, ShapesDataset(8))
    assert result.stopped_by_budget and result.iteration == 1
    # the one update ran at the start of the cosine, or at its end when it follows the budget
    expected = 0.02 * (0.1 if follow else 1.0)
    # float64: the cosine factor (<= 8 roundings at <= 1) times the base rate
    assert result.history[-1]["lr"] == pytest.approx(expected, abs=rounding(0.02, ops=9, eps=EPS64))
    # a run whose budget bound its rates says so, in its result and its log
    notes = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    notes = [r for r in notes if r["kind"] == "schedule"]
    assert result.follows_clock_from == (0 if follow else None)
    assert [(r["iteration"], r["follows_clock"]) for r in notes] == ([(0, True)] if follow else [])


def test_init_from_keeps_everything_but_the_new_classes_predictors(tmp_path):
    source = singleshot.build_model("ssd160_compact", class_names=ShapesDataset.classes)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    save_checkpoint(tmp_path / "source.pt", source)

    class FourClasses(ShapesDataset):
        classes = ["__background__", "green", "blue", "red"]  # red and green shared, in another order

    config = tiny_config(tmp_path / "run", iterations=1, init_from=str(tmp_path / "source.pt"))
    # One step of rate 1e-30: lr * |gradient| is below half an ulp of every weight (all
    # >= 0.17 in magnitude after the shift by 0.5) unless the gradient exceeds 1e22, so the
    # weights come back bit for bit.
    config.optimizer.lr = 1e-30
    run(config, FourClasses(4))
    tuned = load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    reference = source.state_dict()
    # the fresh initialisation of the run: the preset built for 4 classes under the run's seed
    torch.manual_seed(config.seed)
    fresh = singleshot.build_model("ssd160_compact", class_names=FourClasses.classes).state_dict()
    conf = [name for name in tuned if name.startswith("head.conf.")]
    assert len(conf) == 2 * len(source.head.conf)
    for name, tensor in tuned.items():
        if name in conf:
            assert tensor.shape[0] == reference[name].shape[0] // 3 * 4  # 4 classes per box now
            per_class = tensor.reshape(-1, 4, *tensor.shape[1:])  # (box, class, ...)
            # background, green and red: the source's channels for those names (0, 2, 1)
            assert torch.equal(
                per_class[:, [0, 1, 3]], reference[name].reshape(-1, 3, *tensor.shape[1:])[:, [0, 2, 1]]
            )
            # blue: fresh (zero biases, weights of any size), moved by lr * |gradient| < 1e-20
            blue = fresh[name].reshape(per_class.shape)[:, 2]
            torch.testing.assert_close(per_class[:, 2], blue, rtol=0, atol=1e-20, msg=name)
        elif tensor.is_floating_point() and "running" not in name:  # backbone, extras, loc heads
            assert not torch.equal(reference[name], fresh[name]), name  # so keeping them shows
            assert torch.equal(tensor, reference[name]), name
    assert any(name.startswith("head.loc.") for name in tuned)
    # blue's channels follow init_ssd_weights: Xavier-uniform weights, bound sqrt(6 / (fan_in +
    # fan_out)) with fan = channels x 3 x 3 (their maximum reaches it within 3 %), zero biases
    for name in conf:
        blue = tuned[name].reshape(-1, 4, *tuned[name].shape[1:])[:, 2]
        if name.endswith(".bias"):
            assert blue.abs().max() < 1e-20, name
            continue
        out_channels, in_channels, kh, kw = tuned[name].shape
        bound = math.sqrt(6 / ((in_channels + out_channels) * kh * kw))
        assert 0.97 * bound < float(blue.abs().max()) <= bound, name


def test_init_from_another_preset_is_refused(tmp_path):
    save_checkpoint(tmp_path / "source.pt", singleshot.build_model("ssd160_compact", num_classes=3))
    config = tiny_config(tmp_path / "run", model="ssd300_voc", init_from=str(tmp_path / "source.pt"))
    with pytest.raises(ValueError, match="cannot initialise"):
        run(config, ShapesDataset(4))


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path):
    save_checkpoint(tmp_path / "bare.pt", singleshot.build_model("ssd160_compact", num_classes=3))
    with pytest.raises(ValueError, match="no training state"):
        run(tiny_config(tmp_path), ShapesDataset(4), resume=tmp_path / "bare.pt")


def test_backbone_weights_in_ssd_pytorch_layout_replace_the_vgg_base_only(tmp_path):
    from singleshot.training.setup import build_training_model
    from singleshot.weights.vgg16 import VGG_INDEX_TO_NAME, our_vgg_module

    torch.manual_seed(5)
    donor = singleshot.build_model("ssd300_voc").state_dict()
    reduced = {
        f"{index}.{param}": donor[f"{our_vgg_module(name)}.{param}"]
        for index, name in VGG_INDEX_TO_NAME.items()
        for param in ("weight", "bias")
    }
    assert len(reduced) == 30  # conv1_1 ... conv5_3, conv6, conv7
    torch.save(reduced, tmp_path / "vgg16_reducedfc.pth")
    config = tiny_config(
        tmp_path, model="ssd300_voc", seed=0, backbone_weights=str(tmp_path / "vgg16_reducedfc.pth")
    )
    classes = ["__background__"] + [f"class{i}" for i in range(20)]
    model = build_training_model(config, classes).state_dict()
    torch.manual_seed(0)
    plain = singleshot.build_model("ssd300_voc").state_dict()
    from_file = 0
    for name, tensor in model.items():
        if name.startswith("backbone.") and "l2norm" not in name:
            assert torch.equal(tensor, donor[name]), name
            from_file += 1
        else:  # L2Norm scale, extras and heads keep the seeded initialisation
            assert torch.equal(tensor, plain[name]), name
    assert from_file == 30


def test_difficult_objects_are_dropped_before_augmentation_when_asked():
    from singleshot.training.data import TrainSamples

    seen = []

    def record(image, target, generator=None):
        seen.append(target)
        return resize_flip(image, target, generator)

    dataset = ShapesDataset(1)
    dataset.items[0][1]["difficult"] = torch.tensor([True, False])
    labels = dataset.items[0][1]["labels"].tolist()
    x, target = TrainSamples(dataset, record, seed=0, use_difficult=False)[(0, 0)]
    assert target["labels"].tolist() == labels[1:] and target["boxes"].shape == (1, 4)
    assert seen[-1]["difficult"].tolist() == [False]
    x, target = TrainSamples(dataset, record, seed=0, use_difficult=True)[(0, 0)]
    assert target["labels"].tolist() == labels and target["image_id"] == "img0"


def test_cached_images_are_read_once_and_give_the_same_samples():
    from singleshot.training.data import TrainSamples

    class Counting(ShapesDataset):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return super().__getitem__(i)

    def scribble(image, target, generator=None):  # a transform that works in place
        x, out = resize_flip(image, target, generator)
        image.zero_()
        target["boxes"].zero_()
        return x, out

    cached = TrainSamples(Counting(3), scribble, seed=4, cache_images=True)
    plain = TrainSamples(ShapesDataset(3), resize_flip, seed=4)
    for position in range(9):  # three passes over three images
        index = position % 3
        a, target_a = cached[(index, position)]
        b, target_b = plain[(index, position)]
        assert torch.equal(a, b) and torch.equal(target_a["boxes"], target_b["boxes"])
    assert Counting.reads == 3
