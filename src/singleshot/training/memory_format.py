"""The memory format a run trains in: forced by its configuration, the checkpoint's on resume,
else the faster of channels-last and NCHW in a short trial on rank 0 (`singleshot.layout`).

Every process of a DDP run must compute in the same layout (the layouts sum products in
different orders, so their gradients differ in the last bits): rank 0 decides and the
others take its decision by a broadcast. A resumed run never measures again: it continues
in the layout its checkpoint records, so that it repeats an uninterrupted run bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from ..layout import LayoutDecision, choose_memory_format, forced_layout
from ..models.ssd import SSD
from . import distributed
from .config import TrainConfig
from .setup import freeze_batch_norm

__all__ = ["run_layout"]


def run_layout(
    config: TrainConfig,
    model: SSD,
    recorded: Any,
    local_batch: int,
    amp_dtype: torch.dtype | None,
    dist: distributed.DistInfo,
    where: Any = "the checkpoint",
) -> LayoutDecision:
    """The run's `LayoutDecision`; the same on every process.

    Args:
        config: ``channels_last`` true / false forces the layout; "auto" lets the checkpoint
            or a trial decide.
        model: the run's model, on its device (rank 0 times copies of it in train mode,
            BatchNorm frozen as ``config.freeze_bn`` says; the model's own flags are set so).
        recorded: the ``layout`` entry of the resumed checkpoint's training state, or None.
        local_batch: images per step on this process (each trial step holds as many).
        amp_dtype: the run's autocast dtype, or None.
        dist: this process's place in the run.
        where: the checkpoint's path, for errors.
    """
    previous = None
    if recorded is not None:
        try:
            previous = LayoutDecision.from_dict(recorded).with_source("checkpoint")
        except ValueError as error:
            raise ValueError(f"{where}: its training state's layout record is malformed: {error}") from None
    if isinstance(config.channels_last, bool):
        reason = f"channels_last: {str(config.channels_last).lower()} in the run's configuration"
        if previous is not None and previous.channels_last != config.channels_last:
            reason += (
                f"; the checkpointed run trained in {previous.display_name}, so this resume "
                "is not bit-identical to an uninterrupted run"
            )
        return forced_layout(config.channels_last, reason)
    if previous is not None:
        return previous
    decision = None
    if dist.is_main:
        model.train()
        if config.freeze_bn:
            freeze_batch_norm(model)
        size = model.image_size
        shape = (local_batch, 3, size, size)  # the run's own batch: the layouts' gap depends on it
        decision = choose_memory_format(model, shape, training=True, autocast_dtype=amp_dtype).to_dict()
    return LayoutDecision.from_dict(distributed.broadcast_from_main(decision))
