"""DDP under torchrun on CPU (gloo): the ranks agree, and equal one process on the combined batch."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

from ci import require
from ddp_eval_worker import DIRECT_BATCH, VAL_IMAGES, VAL_SEED, as_json, eval_config
from ddp_worker import INPUT_SIZES, RANK0_TRIAL
from singleshot.checkpoint import load_checkpoint
from singleshot.evaluation import evaluate_model
from singleshot.evaluation.run import shard_batches
from singleshot.loss import MultiBoxLoss
from singleshot.training.data import make_train_loader
from singleshot.training.setup import freeze_batch_norm
from singleshot.training.trainer import Trainer
from train_fixtures import ShapesDataset, resize_flip, tiny_config

TESTS = Path(__file__).parent


# SSDLite: BatchNorm in the backbone, extras and heads, all frozen (freeze_bn; sync_bn needs GPUs).
@pytest.mark.parametrize("model", ["ssd160_compact", "ssdlite320_voc"])
def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path, model):
    require(dist.is_available() and dist.is_gloo_available(), "torch.distributed with gloo")
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TMPDIR=str(tmp_path))  # torchrun's folders
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(TESTS / "ddp_worker.py"), str(tmp_path), model,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert int(rank0.pop("_world_size")) == int(rank1.pop("_world_size")) == 2
    assert int(rank0.pop("_iterations")) == int(rank1.pop("_iterations")) == 3
    # both ranks train in rank 0's layout: its trial found NCHW faster; rank 1 never measured
    assert not bool(rank0.pop("_channels_last")) and not bool(rank1.pop("_channels_last"))
    assert len(list((tmp_path / "cache-rank0").glob("layout-*.json"))) == 1
    assert not (tmp_path / "cache-rank1").exists()
    for name, tensor in rank0.items():  # identical on both ranks
        assert torch.equal(tensor, rank1[name]), name
    # rank 0 alone logs and checkpoints: each logged iteration appears once
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["iteration"]) for r in records] == [("layout", 0), ("train", 2), ("train", 3)]
    state = load_checkpoint(tmp_path / "run" / "last.pt")["training"]
    assert state["world_size"] == 2
    assert state["layout"]["seconds"] == RANK0_TRIAL and state["layout"]["layout"] == "contiguous"

    # One process doing the two ranks' arithmetic in turn: the same equality, bit for bit.
    reference = two_ranks_in_one_process(tmp_path / "reference", model)
    initial = Trainer(
        ddp_config(tmp_path / "initial", model), ShapesDataset(12), progress=False
    ).model.state_dict()
    assert rank0.keys() == reference.keys()
    for name, tensor in rank0.items():
        assert torch.equal(tensor, reference[name]), name
    moved = [name for name, tensor in rank0.items() if not torch.equal(tensor, initial[name])]
    assert len(moved) > 20  # the equality is about training, not about initial values


def ddp_config(out, model):
    config = tiny_config(
        out, model=model, iterations=3, freeze_bn=True, channels_last=False
    )  # as ddp_worker.py, whose rank 0 decides on NCHW
    config.optimizer.lr = 1e-3
    return config


class CountingLoss(MultiBoxLoss):
    """MultiBoxLoss that records its positives and divides by a given count, as a DDP process
    does with the all-reduced positives of the whole batch over the 2 processes."""

    count: Tensor
    global_count: Tensor | None = None

    def _divisor(self, positive: Tensor) -> Tensor:
        self.count = positive.sum()
        if self.global_count is None:
            return super()._divisor(positive)
        return self.global_count.clamp(min=1) / 2


def two_ranks_in_one_process(out, model_name):
    """The DDP run's arithmetic without DDP: each rank's half-batch forward and backward (one
    thread, NCHW, batch 2, as in the worker), the divisor from both halves' positives, the
    gradients averaged as DDP's all-reduce does (each divided by the world size, then summed:
    exact for two addends), then the trainer's own optimizer and schedule."""
    config = ddp_config(out, model_name)
    transform = partial(resize_flip, size=INPUT_SIZES[model_name])
    trainer = Trainer(config, ShapesDataset(12), transform=transform, progress=False)
    model, criterion = trainer.model, CountingLoss(trainer.model.num_classes)
    loaders = [
        iter(make_train_loader(trainer.train_dataset, transform, 2, config.seed, rank=r, world_size=2))
        for r in (0, 1)
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        freeze_batch_norm(model)
        for iteration in range(config.iterations):
            trainer.schedule.set_iteration(iteration)
            halves = [next(loader) for loader in loaders]
            outputs = [model(x) for x, _ in halves]
            counts = []
            for (loc, conf), (_, targets) in zip(outputs, halves):
                criterion.global_count = None
                criterion(loc.detach(), conf.detach(), model.priors, targets)
                counts.append(criterion.count)
            criterion.global_count = counts[0] + counts[1]
            gradients = []
            for (loc, conf), (_, targets) in zip(outputs, halves):
                model.zero_grad(set_to_none=True)
                sum(criterion(loc, conf, model.priors, targets)).backward()
                gradients.append({n: p.grad / 2 for n, p in model.named_parameters() if p.grad is not None})
            for name, param in model.named_parameters():
                param.grad = gradients[0][name] + gradients[1][name]
            trainer.optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ddp_evaluation_shares_the_images_and_scores_as_one_process(tmp_path):
    """Both ranks evaluate (each its batches), rank 0 scores all: the same numbers as one
    process evaluating the same weights, on every rank, in the log and from a direct call."""
    require(dist.is_available() and dist.is_gloo_available(), "torch.distributed with gloo")
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TMPDIR=str(tmp_path))  # torchrun's folders
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(TESTS / "ddp_eval_worker.py"), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"eval{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every process returns rank 0's result
    state = torch.load(tmp_path / "eval0.pt", weights_only=True)
    model = Trainer(eval_config(tmp_path / "one"), ShapesDataset(12), progress=False).model
    model.load_state_dict(state)
    val = ShapesDataset(VAL_IMAGES, seed=VAL_SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = {
            batch: json.loads(as_json(evaluate_model(model, val, "voc07", batch, progress=False)))
            for batch in (2, DIRECT_BATCH)
        }
    finally:
        torch.set_num_threads(threads)
    assert ranks[0]["trained"] == alone[2] and ranks[0]["direct"] == alone[DIRECT_BATCH]
    assert alone[2]["num_images"] == VAL_IMAGES and alone[2]["map"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in evaluations] == [2, 4]  # logged once each, by rank 0
    assert evaluations[-1]["map"] == alone[2]["map"]


@pytest.mark.parametrize(
    ("count", "batch", "world"), [(7, 2, 2), (7, 3, 2), (10, 2, 3), (1, 4, 2), (0, 2, 2)]
)
def test_evaluation_shards_deal_whole_batches_in_turn(count, batch, world):
    shards = [shard_batches(count, batch, rank, world) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(count))  # each image once
    batches = [list(range(s, min(s + batch, count))) for s in range(0, count, batch)]
    for rank, shard in enumerate(shards):  # batch k of one process is on rank k mod world
        assert shard == [i for k, b in enumerate(batches) if k % world == rank for i in b]
