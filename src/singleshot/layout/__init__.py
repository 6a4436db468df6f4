"""The memory format a model runs in, chosen per machine by a short timed trial.

channels-last or NCHW: which is faster depends on the CPU (oneDNN's kernels per
instruction set: channels-last won an SSD300 training step on an AVX-512 Xeon and lost it
on an AVX2 EPYC), the model, the threads and the batch. So, the way cuDNN's benchmark mode
picks convolution algorithms, `choose_memory_format` times both on the model's own shapes
and keeps the faster, cached per machine; callers with a reason force one instead::

    from singleshot.layout import apply_memory_format, choose_memory_format

    shape = (8, 3, model.image_size, model.image_size)  # the run's own batch
    decision = choose_memory_format(model, shape, training=False)
    print(decision.describe())   # channels-last (trial: 0.081 s channels-last, 0.097 s NCHW ...)
    model = apply_memory_format(model, decision)

`singleshot train` does this at the start of a run (``channels_last: auto``, the default;
``--channels-last/--no-channels-last`` force it) and records the decision in the
checkpoint, so that ``--resume`` continues in the same layout; ``detect`` and ``eval`` do it
for the CPU paths that have a choice (the Winograd path runs channels-last). A trial
taken while other work kept the CPU busy is used but not cached (`busy_trial`).
"""

from .choose import BUSY_CPU_SHARE, busy_trial, choose_memory_format
from .decision import LAYOUTS, LayoutDecision, apply_memory_format, forced_layout
from .store import cached_decision, clear_decisions, decision_key, list_decisions, store_decision
from .trial import measure_layouts, time_step

__all__ = [
    "BUSY_CPU_SHARE",
    "LAYOUTS",
    "LayoutDecision",
    "apply_memory_format",
    "busy_trial",
    "cached_decision",
    "choose_memory_format",
    "clear_decisions",
    "decision_key",
    "forced_layout",
    "list_decisions",
    "measure_layouts",
    "store_decision",
    "time_step",
]
