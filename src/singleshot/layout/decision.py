"""A memory-format decision as data: which layout, why, and the trial's timings.

Two layouts exist for 4-D activations and convolution weights: ``channels_last``
(NHWC in memory, ``torch.channels_last``) and ``contiguous`` (NCHW,
``torch.contiguous_format``). Which one is faster depends on the machine (oneDNN's
kernels differ per instruction set), the model, the thread count and the batch, so it is
chosen by a short timed trial (`singleshot.layout.choose_memory_format`) or forced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ..models.ssd import SSD

__all__ = ["LAYOUTS", "SOURCES", "LayoutDecision", "apply_memory_format", "forced_layout"]

LAYOUTS = ("channels_last", "contiguous")
# measured: timed now; cached: a trial's result read from the cache; forced: set by the
# caller, no trial; checkpoint: the decision a resumed run's checkpoint recorded.
SOURCES = ("measured", "cached", "forced", "checkpoint")
_SHOWN = {"channels_last": "channels-last", "contiguous": "NCHW"}

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class LayoutDecision:
    """Which memory format to run a model in, and why.

    Attributes:
        channels_last: True for ``torch.channels_last``, False for NCHW (contiguous).
        source: one of `SOURCES`.
        seconds: the trial's time per step of each layout, ``{"channels_last": s,
            "contiguous": s}`` (the fastest of its timed steps); None when no trial ran.
        trial_batch: images per trial step (None without a trial).
        measured_on: where the trial ran, e.g. "Intel Xeon ..., 2 threads" (None without one).
        mode: what the trial timed: "train" (forward + backward) or "inference" (forward).
        reason: for a forced decision, who forced it (e.g. "channels_last: false"); for a
            measured one that was not cached, why (`singleshot.layout.busy_trial`).
        cache_file: the cache file the decision was written to or read from.
    """

    channels_last: bool
    source: str
    seconds: Mapping[str, float] | None = None
    trial_batch: int | None = None
    measured_on: str | None = None
    mode: str | None = None
    reason: str | None = None
    cache_file: str | None = None

    @property
    def layout(self) -> str:
        """``"channels_last"`` or ``"contiguous"``."""
        return LAYOUTS[0] if self.channels_last else LAYOUTS[1]

    @property
    def display_name(self) -> str:
        """``"channels-last"`` or ``"NCHW"``, for messages."""
        return _SHOWN[self.layout]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        """One line for logs, e.g. ``channels-last (trial: 0.081 s channels-last, 0.097 s NCHW
        per forward+backward of 7 images on ..., 2 threads; measured now, cached in ...)``."""
        text = f"{self.display_name} ("
        if self.seconds is not None:
            text += f"trial: {self.describe_trial()}; "
        if self.source == "forced":
            return text + f"forced by {self.reason or 'the caller'}, no trial)"
        measured = "measured now"
        if self.cache_file:
            measured += f", cached in {self.cache_file}"
        elif self.reason:  # why it was not cached
            measured += f", {self.reason}"
        where = {
            "measured": measured,
            "cached": f"decided earlier, cached in {self.cache_file}",
            "checkpoint": "as the checkpointed run decided",
        }[self.source]
        return text + where + ")"

    def describe_trial(self) -> str:
        """The trial's timings, e.g. ``0.081 s channels-last, 0.097 s NCHW per forward+backward of
        7 images on Intel Xeon ..., 2 threads``; ``no trial`` when none ran."""
        if self.seconds is None:
            return "no trial"
        what = "forward+backward" if self.mode == "train" else "forward"
        timings = ", ".join(f"{self.seconds[name]:.3f} s {_SHOWN[name]}" for name in LAYOUTS)
        images = f"{self.trial_batch} image{'s' if self.trial_batch != 1 else ''}"
        return f"{timings} per {what} of {images} on {self.measured_on}"

    def with_source(self, source: str) -> LayoutDecision:
        """The same decision, reached another way (e.g. "checkpoint" when a resumed run reuses it)."""
        return dataclasses.replace(self, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON, checkpoints loaded with ``weights_only=True``)."""
        return {
            "layout": self.layout,
            "source": self.source,
            "seconds": dict(self.seconds) if self.seconds is not None else None,
            "trial_batch": self.trial_batch,
            "measured_on": self.measured_on,
            "mode": self.mode,
            "reason": self.reason,
            "cache_file": self.cache_file,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LayoutDecision:
        """Inverse of `to_dict`; ValueError names the first malformed field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a layout decision is a mapping, not {type(data).__name__}")
        layout, source = data.get("layout"), data.get("source")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        seconds = _seconds(data.get("seconds"))
        trial_batch = data.get("trial_batch")
        if trial_batch is not None and (type(trial_batch) is not int or trial_batch < 1):
            raise ValueError(f"trial_batch must be a positive integer, got {trial_batch!r}")
        texts = {name: data.get(name) for name in ("measured_on", "mode", "reason", "cache_file")}
        for name, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
        return cls(layout == LAYOUTS[0], source, seconds, trial_batch, **texts)


def _seconds(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != set(LAYOUTS):
        raise ValueError(f"seconds must give both layouts {LAYOUTS}, got {value!r}")
    out = {}
    for name in LAYOUTS:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"seconds[{name!r}] must be a finite number, got {number!r}")
        if number < 0:
            raise ValueError(f"seconds[{name!r}] must be >= 0, got {number!r}")
        out[name] = float(number)
    return out


def forced_layout(channels_last: bool, reason: str) -> LayoutDecision:
    """A decision made by the caller (a flag, a config key, a path that needs one layout)."""
    return LayoutDecision(channels_last=bool(channels_last), source="forced", reason=reason)


def apply_memory_format(model: ModuleT, decision: LayoutDecision) -> ModuleT:
    """Put ``model``'s 4-D parameters and buffers in the decision's layout, in place (returns it).

    An `SSD` also gets its ``channels_last`` attribute set, so that its forward hands the
    convolutions its input in the same layout.
    """
    model = model.to(memory_format=decision.memory_format)
    if isinstance(model, SSD):
        model.channels_last = decision.channels_last
    return model
