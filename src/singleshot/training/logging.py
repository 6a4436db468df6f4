"""What a run reports: a JSONL log of every logged step, TensorBoard when installed, a progress bar.

``log.jsonl`` holds one JSON object per line, mostly of three kinds::

    {"kind": "train", "iteration": 200, "loss": 3.1, "loss_loc": 1.0, "loss_conf": 2.1,
     "lr": 0.001, "images_per_s": 41.0, "elapsed_s": 39.0, "eta_s": 1210.0, "skipped": 0,
     "bad_samples": 0}
    {"kind": "eval", "iteration": 1000, "metric": "voc07", "map": 0.71, "ap": {"cat": 0.8, ...}}
    {"kind": "bad_sample", "iteration": 310, "image": "JPEGImages/0042.jpg", "reason": "..."}

(``bad_sample``: an image skipped as unreadable with ``on_bad_sample="skip"``.) Each
process of a run (a fresh start, each resume) first writes a ``layout`` record:
``{"kind": "layout", "iteration", "decision": {...}}``, the memory format it trains in
(`singleshot.layout.LayoutDecision.to_dict`: layout, source, the trial's seconds per
layout...). Two rarer kinds: ``schedule`` (the time budget binds the learning rate from
that iteration) and ``early_stop`` (``{"iteration", "best_map", "best_iteration",
"patience"}``: early stopping ended the run).

``iteration`` counts completed updates. Losses are means over the steps since the
previous line (and over all processes under DDP).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..fileio import atomic_write, naming_failed_writes

__all__ = ["RunLogger", "read_log", "plot_losses", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``, ``65`` -> ``"1:05"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunLogger:
    """Writes the JSONL log (appending, so a resumed run continues it), TensorBoard events and
    the progress bar. Inactive (writes nothing) on processes other than rank 0.

    A run resumed at iteration ``start`` first cuts from the log what its interrupted run
    wrote after that checkpoint (it writes those iterations again), and a last line left
    without its newline (a kill or a full disk in the middle of a record).

    Args:
        out: run folder.
        total: the run's last iteration; start: the iteration it starts (or resumes) at.
        active: False on non-main ranks.
        progress: show a tqdm bar.
    """

    def __init__(self, out: str | os.PathLike, total: int, start: int = 0, active: bool = True,
                 progress: bool = True) -> None:  # fmt: skip
        self.active = active
        self.path = Path(out) / "log.jsonl"
        self._file = None
        self._tensorboard = None
        self._bar = None
        if not active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _trim_log(self.path, start)
        self._file = self.path.open("a", encoding="utf-8")
        try:  # optional dependency
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        except ImportError:
            self._tensorboard = None
        if progress:
            self._bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record to the log and TensorBoard (numbers only there)."""
        if not self.active:
            return
        assert self._file is not None
        with naming_failed_writes(self.path):
            self._file.write(json.dumps(record, sort_keys=False) + "\n")
            self._file.flush()
        if self._tensorboard is not None:
            step = int(record.get("iteration", 0))
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{prefix}/{key}", value, step)

    def advance(self, steps: int = 1, postfix: dict[str, str] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar (rank 0 only)."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._file is not None:
            file, self._file = self._file, None
            with naming_failed_writes(self.path):  # a write that failed is tried again here
                file.close()


def _trim_log(path: Path, start: int) -> None:
    """Cut the log's last line if it lacks its newline, and, resuming at ``start`` > 0, the
    records of later iterations (see `RunLogger`)."""
    if not path.is_file():
        return
    text = path.read_bytes()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    if start > 0:
        lines = [line for line in lines if _iteration(line) <= start]
    kept = b"".join(lines)
    if kept != text:
        atomic_write(path, lambda handle: handle.write(kept))


def _iteration(line: bytes) -> int:
    """A log line's iteration; 0 for a line that names none (kept by `_trim_log`)."""
    try:
        iteration = json.loads(line).get("iteration", 0)
    except (ValueError, AttributeError):
        return 0
    return iteration if isinstance(iteration, int) else 0


def read_log(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (only those of ``kind`` when given)."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line: {error}") from None
            if kind is None or record.get("kind") == kind:
                records.append(record)
    return records


def plot_losses(log_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Draw the training losses (total, localisation, confidence) and learning rate of a log to a PNG.

    Draws on matplotlib's Agg canvas directly (no pyplot), so it opens no window and leaves
    matplotlib's global backend alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_log(log_path, kind="train")
    if not records:
        raise ValueError(f"{log_path}: no training records to plot")
    steps = [r["iteration"] for r in records]
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for key, label in (("loss", "total"), ("loss_loc", "localisation (smooth L1)"),
                       ("loss_conf", "confidence (cross-entropy)")):  # fmt: skip
        ax_loss.plot(steps, [r[key] for r in records], label=label)
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in records], color="tab:gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(True, alpha=0.3)
    fig.tight_layout()
    return atomic_write(out_path, lambda handle: fig.savefig(handle, dpi=100, format="png"))
