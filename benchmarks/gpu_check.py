"""The GPU check: singleshot's CUDA paths tested and measured on one GPU in at most 8 minutes.

    .venv/bin/python benchmarks/gpu_check.py --out runs/gpu-check           # on a GPU (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --smoke --out DIR  # every section in miniature

Sections, in order, each with a share of the time budget (``--budget-s``, default 420 s;
what a section leaves unspent goes to the next ones):

1. correctness (35%): the tests marked ``cuda`` (``tests/test_cuda.py``: AMP steps against
   fp32, fp16 ``predict`` against fp32, channels-last against NCHW, the loss and
   post-processing against the CPU's, DDP on NCCL under torchrun, exact resume, the host
   syncs of a step), run by pytest in a subprocess, stopped when its share is spent;
2. training (28%): images/s, time split, peak memory and host syncs per step of
   ``Trainer.run_step`` against torchvision's SSD300 / SSDLite320 on the same weights
   (SSD300 batch 32 fp32, bf16, fp16; SSDLite320 batch 64 bf16), see ``gpu_train.py``;
3. pipeline (7%): the training loader's images/s with N workers and the paper's
   augmentation on VOC-sized JPEG files, against the training step's rate (``gpu_pipeline.py``);
4. inference (20%): batch-1 latency (fp32, fp16, fp16 in a CUDA graph) and batch-64
   throughput against torchvision (``gpu_infer.py``);
5. export (10%): the ONNX detector in ONNX Runtime's CUDA and TensorRT providers where
   installed, else a note saying why not.

Writes ``gpu_report.json`` and ``gpu_report.md`` into ``--out`` (after every section, so a
run cut short still leaves its report): device, driver, torch/CUDA/cuDNN versions, and each
section's rows, skips and notes (see ``gpu_report.py``). Exits 1 when a test failed or a
section raised, else 0. ``--device cpu --smoke`` runs every section with tiny batches and
few steps (about a minute on 2 cores; every item of a section runs, the budget only decides
whether a section starts): it checks the script, not the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

import torch  # noqa: E402  (the clock starts before the imports)

from gpu_report import Section, environment, write_report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARES = {"correctness": 0.35, "training": 0.28, "pipeline": 0.07, "inference": 0.20, "export": 0.10}
TITLES = {
    "correctness": "1. Correctness on CUDA (tests marked cuda)",
    "training": "2. Training throughput",
    "pipeline": "3. Input pipeline",
    "inference": "4. Inference",
    "export": "5. Exported models",
}
MIN_SECTION_S = 5.0


def correctness_section(section: Section, context: dict[str, Any]) -> None:
    """Section 1: ``pytest -m cuda tests/test_cuda.py`` in a subprocess, one row per test."""
    junit = context["out"] / "cuda_tests.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", str(REPO / "tests" / "test_cuda.py"), "-v",
               "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={junit}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    left = section.left()
    output, timed_out = run_bounded(command, env, max(left, MIN_SECTION_S) if math.isfinite(left) else None)
    if not timed_out and junit.is_file():
        section.rows += junit_rows(junit)
    else:
        section.rows += verbose_rows(output)
        section.skip("the remaining tests", f"the section's time share ({section.share_s:.0f} s) was spent")
    if not section.rows:
        section.status, section.reason = "error", f"pytest ran no test: {output[-500:]}"
        return
    outcomes = [row["outcome"] for row in section.rows]
    if any(outcome in ("failed", "error") for outcome in outcomes):
        section.status = "failed"
        section.reason = (
            f"{outcomes.count('failed') + outcomes.count('error')} of {len(outcomes)} tests failed"
        )
    elif set(outcomes) == {"skipped"}:
        section.status = "skipped"
        section.reason = f"all {len(outcomes)} tests skipped: {section.rows[0].get('detail')}"


def run_bounded(command: list[str], env: dict[str, str], seconds: float | None) -> tuple[str, bool]:
    """(stdout and stderr, whether it timed out) of ``command``; on timeout its whole process
    group (pytest and any torchrun it started) is killed."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        return process.communicate(timeout=seconds)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0], True


def junit_rows(path: Path) -> list[dict[str, Any]]:
    """One row per test case of a pytest JUnit XML file: outcome, seconds, message."""
    rows = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = "failed" if tag == "failure" else tag
                detail = (element.get("message") or element.text or "")[:300]
        rows.append({"test": case.get("name"), "outcome": outcome,
                     "seconds": float(case.get("time") or 0.0), "detail": detail})  # fmt: skip
    return rows


def verbose_rows(output: str) -> list[dict[str, Any]]:
    """Rows from ``pytest -v`` lines (``path::test PASSED``) of a run stopped before its end."""
    rows = []
    for line in output.splitlines():
        for outcome in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if "::" in line and f" {outcome}" in line:
                name = line.split("::", 1)[1].split(" ", 1)[0]
                rows.append({"test": name, "outcome": outcome.lower(), "seconds": None, "detail": None})
    return rows


def runners() -> dict[str, Callable[[Section, dict[str, Any]], None]]:
    from gpu_infer import export_section, inference_section
    from gpu_pipeline import pipeline_section
    from gpu_train import training_section

    return {"correctness": correctness_section, "training": training_section, "pipeline": pipeline_section,
            "inference": inference_section, "export": export_section}  # fmt: skip


def run_section(name: str, share: float, context: dict[str, Any]) -> Section:
    """Run one section within ``share`` seconds (as far as its items allow); never raises."""
    section = Section(name, TITLES[name], share, timed=not context["smoke"])
    print(f"[gpu-check] {TITLES[name]}: up to {share:.0f} s", flush=True)
    if share < MIN_SECTION_S:
        section.status, section.reason = "skipped", "the check's time budget was spent"
    else:
        try:
            runners()[name](section, context)
        except Exception as error:  # a section's failure is reported; the others still run
            section.status, section.reason = "error", f"{type(error).__name__}: {error}"
            section.notes.append(traceback.format_exc()[-2000:])
    section.finish()
    print(f"[gpu-check]   {section.status} in {section.seconds:.0f} s" + (f": {section.reason}" if
          section.reason else ""), flush=True)  # fmt: skip
    return section


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="folder for the report")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--smoke", action="store_true", help="every section in miniature (checks the script)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time budget in seconds (default 420; 110 with --smoke)")  # fmt: skip
    parser.add_argument("--sections", nargs="+", choices=list(SHARES), default=list(SHARES),
                        help="sections to run (default: all, in order)")  # fmt: skip
    return parser.parse_args(argv)


def resolve_device(name: str, smoke: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but CUDA is not available")
    if device.type == "cpu" and not smoke:
        raise SystemExit("gpu_check: the full check needs a GPU; --device cpu --smoke runs it in miniature")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, args.smoke)
    budget = args.budget_s or (110.0 if args.smoke else 420.0)
    args.out.mkdir(parents=True, exist_ok=True)
    context: dict[str, Any] = {"device": device, "smoke": args.smoke, "out": args.out}
    header: dict[str, Any] = {"smoke": args.smoke, "budget_s": budget, "environment": environment(device)}
    print(f"[gpu-check] {header['environment']['device']}, budget {budget:.0f} s", flush=True)
    sections: list[Section] = []
    for index, name in enumerate(args.sections):
        remaining = budget - (time.perf_counter() - STARTED)
        share = remaining * SHARES[name] / sum(SHARES[n] for n in args.sections[index:])
        sections.append(run_section(name, share, context))
        header["elapsed_s"] = time.perf_counter() - STARTED
        json_path, md_path = write_report(args.out, header, sections)
    print(f"[gpu-check] wrote {json_path} and {md_path} in {header['elapsed_s']:.0f} s", flush=True)
    return 1 if any(s.status in ("failed", "error") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
