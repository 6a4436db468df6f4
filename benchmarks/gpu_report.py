"""The GPU check's report: its sections, the machine it ran on, and the two files it writes.

``gpu_report.json`` (schema below) and ``gpu_report.md`` (the same as tables) in the
output folder. Every section either measured something (``rows``) or says why not
(``status: skipped`` with a ``reason``); what a section left out for lack of time or
hardware is listed in its ``skipped`` entries, each with a reason.

    {"schema": 1, "created": ISO time, "command": [...], "smoke": bool, "budget_s": float,
     "elapsed_s": float, "environment": {"device": name, "driver": ..., "torch": ...},
     "sections": {name: {"title", "status": ok | partial | skipped | failed | error,
                         "reason", "share_s", "seconds", "rows": [{...}], "skipped":
                         [{"item", "reason"}], "notes": [...]}}}
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SCHEMA = 1
STATUSES = ("ok", "partial", "skipped", "failed", "error")


@dataclass
class Section:
    """One part of the check: its time share, what it measured and what it left out.

    ``rows`` are measurements (flat dicts of numbers and names); ``skip(item, reason)``
    records something not measured; ``left()`` is the time remaining of ``share_s``.
    ``timed=False`` (the smoke run): every item runs, whatever the time.
    """

    name: str
    title: str
    share_s: float
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    reason: str | None = None
    seconds: float = 0.0
    timed: bool = True

    def left(self) -> float:
        """Seconds left of the share (infinite when not ``timed``)."""
        if not self.timed:
            return math.inf
        return self.share_s - (time.perf_counter() - self.started)

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append({"item": item, "reason": reason})

    def out_of_time(self, item: str) -> bool:
        """True (and ``item`` recorded as skipped) once the section's share is spent."""
        if self.left() > 0:
            return False
        self.skip(item, f"the section's time share ({self.share_s:.0f} s) was spent")
        return True

    def finish(self) -> None:
        """Settle the status: skipped when nothing was measured, partial when items were left out."""
        self.seconds = time.perf_counter() - self.started
        if self.status != "ok":  # set by the section itself
            return
        if not self.rows:
            self.status = "skipped"
            self.reason = self.reason or "; ".join(f"{s['item']}: {s['reason']}" for s in self.skipped)
        elif self.skipped:
            self.status = "partial"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "status": self.status, "reason": self.reason,
            "share_s": round(self.share_s, 1), "seconds": round(self.seconds, 1),
            "rows": self.rows, "skipped": self.skipped, "notes": self.notes,
        }  # fmt: skip


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software: device name, driver, torch/CUDA/cuDNN versions."""
    import torchvision

    info: dict[str, Any] = {
        "device_type": device.type, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }  # fmt: skip
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if device.type != "cuda":
        info["device"] = f"CPU ({info['cpu']}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        info["driver"] = None
        return info
    properties = torch.cuda.get_device_properties(device)
    info["device"] = properties.name
    info["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
    info["compute_capability"] = f"{properties.major}.{properties.minor}"
    info["driver"] = nvidia_driver()
    return info


def nvidia_driver() -> str:
    """The NVIDIA driver's version from nvidia-smi, else a note saying it could not be read."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (nvidia-smi not found)"
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def write_report(out: Path, header: dict[str, Any], sections: list[Section]) -> tuple[Path, Path]:
    """Write ``gpu_report.json`` and ``gpu_report.md`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        **header,
        "sections": {section.name: section.to_dict() for section in sections},
    }
    json_path, md_path = out / "gpu_report.json", out / "gpu_report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the environment, then one table per section."""
    env = report["environment"]
    lines = [
        f"# GPU check: {env['device']}",
        "",
        f"driver {env.get('driver')}, torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"torchvision {env['torchvision']}, onnxruntime {env.get('onnxruntime')}; "
        f"{'smoke run (miniature sizes: not figures)' if report['smoke'] else 'full run'}, "
        f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; {report['created']}",
    ]
    for section in report["sections"].values():
        lines += ["", f"## {section['title']}: {section['status']} ({section['seconds']:.0f} s)", ""]
        if section["reason"]:
            lines += [f"{section['reason']}", ""]
        lines += table(section["rows"])
        lines += [f"- skipped {s['item']}: {s['reason']}" for s in section["skipped"]]
        lines += [f"- {note}" for note in section["notes"]]
    return "\n".join(lines) + "\n"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of ``rows`` (columns: every key, in first-seen order)."""
    if not rows:
        return []
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(column)) for column in columns) + " |")
    return lines + [""]


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    return str(value)
