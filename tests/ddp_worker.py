"""Launched by test_ddp.py under ``torchrun --nproc_per_node=2``: a few DDP iterations on CPU (gloo).

Each rank writes its final parameters and buffers to ``OUT/rank<r>.pt``. BatchNorm layers
are frozen (eval mode, ``freeze_bn``): SyncBatchNorm needs GPUs, and per-rank batch
statistics would make DDP differ by design from one process on the combined batch. The
NCHW layout: with channels-last, oneDNN sums the first layer's ~1e5 weight-gradient products
in another order for a batch of 2 than for a batch of 4 (relative differences ~2e-5), which
would blur the float-tolerance comparison this test makes.

The layout is left to the run ("auto") with timers that disagree: rank 0's trial finds NCHW
faster, rank 1's timer fails if called, and each rank has its own empty cache. The run
only equals the NCHW reference when rank 1 takes rank 0's decision without measuring.
"""

import os
import sys
from functools import partial
from pathlib import Path

import torch

from singleshot.layout import trial
from singleshot.training import distributed, train
from train_fixtures import ShapesDataset, resize_flip, tiny_config

# The preset and its input side (argument 2; default the compact preset).
INPUT_SIZES = {"ssd160_compact": 160, "ssdlite320_voc": 320}
# rank 0's trial: seconds per step of each layout (NCHW faster; nothing runs)
RANK0_TRIAL = {"channels_last": 0.2, "contiguous": 0.1}


def rank_timer(rank: int):
    def timer(layout, step):
        if rank != 0:
            raise AssertionError(f"rank {rank} timed a layout trial: only rank 0 decides")
        return RANK0_TRIAL[layout]

    return timer


def main(out: str, model: str = "ssd160_compact") -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    os.environ["SINGLESHOT_CACHE"] = str(Path(out) / f"cache-rank{rank}")
    trial.time_step = rank_timer(rank)  # the trial's default timer, in this worker process only
    config = tiny_config(Path(out) / "run", model=model, iterations=3, freeze_bn=True, channels_last="auto")
    config.optimizer.lr = 1e-3  # BatchNorm frozen at its initial statistics: keep the steps small
    transform = partial(resize_flip, size=INPUT_SIZES[model])
    result = train(config, ShapesDataset(12), transform=transform, progress=False)
    rank = torch.distributed.get_rank()
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    state["_world_size"] = torch.tensor(torch.distributed.get_world_size())
    state["_iterations"] = torch.tensor(result.iteration)
    state["_channels_last"] = torch.tensor(result.model.channels_last)
    torch.save(state, Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:3])
