"""Launched by test_ddp.py under ``torchrun --nproc_per_node=2``: DDP training with evaluation
(gloo, CPU), and `evaluate_model(..., distributed=True)` called directly.

Each rank writes ``OUT/eval<r>.json`` (the run's last metrics and the direct call's) and
``OUT/eval<r>.pt`` (its final weights). One thread, NCHW: the test repeats the evaluation
in one process and expects the same numbers bit for bit.
"""

import json
import sys
from pathlib import Path

import torch

from singleshot.evaluation import evaluate_model
from singleshot.training import distributed, train
from train_fixtures import ShapesDataset, resize_flip, tiny_config

VAL_IMAGES, VAL_SEED, DIRECT_BATCH = 7, 5, 3


def eval_config(out):
    """Evaluation after iterations 2 and 4, in batches of 2 (7 images: ranks get 4 and 3)."""
    config = tiny_config(
        out, iterations=4, eval_every=2, eval_batch_size=2, freeze_bn=True, channels_last=False
    )
    config.optimizer.lr = 1e-3  # BatchNorm frozen at its initial statistics: keep the steps small
    return config


def as_json(metrics) -> str:
    """Metrics as JSON (arrays as lists; floats keep every bit)."""
    return json.dumps(metrics, default=lambda value: value.tolist())


def main(out: str) -> None:
    torch.set_num_threads(1)
    val = ShapesDataset(VAL_IMAGES, seed=VAL_SEED)
    result = train(
        eval_config(Path(out) / "run"), ShapesDataset(12), val, transform=resize_flip, progress=False
    )
    # batches of 3: rank 0 takes images 0-2 and 6, rank 1 images 3-5
    direct = evaluate_model(
        result.model, val, "voc07", batch_size=DIRECT_BATCH, progress=False, distributed=True
    )
    rank = torch.distributed.get_rank()
    record = {"trained": result.metrics, "direct": direct}
    (Path(out) / f"eval{rank}.json").write_text(as_json(record))
    torch.save(result.model.state_dict(), Path(out) / f"eval{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
