"""DDP under torchrun on CPU (gloo): the ranks agree, and equal one process on the combined batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from singleshot.checkpoint import load_checkpoint
from singleshot.training import train
from train_fixtures import ShapesDataset, resize_flip, tiny_config

TESTS = Path(__file__).parent


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path):
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(TESTS / "ddp_worker.py"), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert int(rank0.pop("_world_size")) == int(rank1.pop("_world_size")) == 2
    assert int(rank0.pop("_iterations")) == int(rank1.pop("_iterations")) == 3
    for name, tensor in rank0.items():  # identical on both ranks
        assert torch.equal(tensor, rank1[name]), name
    # rank 0 alone logs and checkpoints: each logged iteration appears once
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 3]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["world_size"] == 2

    # One process, batch 4 = the two ranks' batches of 2 concatenated, same seed and schedule.
    def single_process(name, **kwargs):
        config = tiny_config(tmp_path / name, iterations=3, freeze_bn=True, channels_last=False)
        config.optimizer.lr = 1e-3
        return train(config, ShapesDataset(12), transform=resize_flip, progress=False, **kwargs).model

    reference = single_process("single").state_dict()
    initial = single_process("initial", stop_at=0).state_dict()
    compared = 0
    for name, tensor in rank0.items():
        if not tensor.is_floating_point():
            assert torch.equal(tensor, reference[name]), name
            continue
        # compare the updates, so that weights that barely moved cannot hide a difference
        update, expected = tensor - initial[name], reference[name] - initial[name]
        scale = float(expected.abs().max())
        rounding = 4 * torch.finfo(torch.float32).eps * float(tensor.abs().max())  # a few ulps of the weights
        torch.testing.assert_close(
            update, expected, rtol=1e-4, atol=1e-5 * scale + rounding, msg=lambda m, name=name: f"{name}: {m}"
        )
        compared += scale > 1e-3
    assert compared > 20  # most tensors moved: the equality is about training, not initial values
