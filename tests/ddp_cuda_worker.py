"""Launched by test_cuda.py under ``torchrun --nproc_per_node=1``: a training run whose process
group is NCCL's (one GPU: one process), then one DDP-wrapped step.

With one process torchrun's run needs no process group; this worker starts one on NCCL
before training, so that the run's collectives (the step's all-reduce, the evaluation's
gather and broadcast) go through NCCL. Writes ``OUT/nccl.pt``: the final weights, the
last mAP (``_map``) and whether the DDP step's gradients equal the bare model's
(``_ddp_step_equal``).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from singleshot.loss import MultiBoxLoss
from singleshot.training import train
from singleshot.training.data import make_train_loader
from singleshot.training.determinism import deterministic_algorithms
from train_fixtures import ShapesDataset, resize_flip, tiny_config


def cuda_config(out):
    """4 deterministic CUDA iterations, evaluated after 2 and 4."""
    return tiny_config(out, device="cuda", iterations=4, eval_every=2, eval_batch_size=2, deterministic=True)


def gradients(network, model, x, targets):
    """The parameters' gradients of one forward of ``network`` (``model`` or a wrapper of it)."""
    model.zero_grad(set_to_none=True)
    loc, conf = network(x)
    sum(MultiBoxLoss(model.num_classes)(loc, conf, model.priors, targets)).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def main(out: str) -> None:
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    result = train(cuda_config(Path(out) / "run"), ShapesDataset(12), ShapesDataset(5, seed=3),
                   transform=resize_flip, progress=False)  # fmt: skip
    model = result.model.train()
    x, targets = next(iter(make_train_loader(ShapesDataset(4), resize_flip, 4, seed=1)))
    x = x.to(device)
    with deterministic_algorithms():
        bare = gradients(model, model, x, targets)
        wrapped = gradients(DistributedDataParallel(model, device_ids=[0]), model, x, targets)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["_map"] = torch.tensor(float(result.metrics["map"]), dtype=torch.float64)
    equal = len(bare) == len(wrapped) > 0 and all(torch.equal(a, b) for a, b in zip(bare, wrapped))
    state["_ddp_step_equal"] = torch.tensor(equal)
    torch.save(state, Path(out) / "nccl.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
