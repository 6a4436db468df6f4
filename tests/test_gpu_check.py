"""The GPU check (benchmarks/gpu_check.py) keeps working where no GPU is: its smoke run.

``--device cpu --smoke`` runs every section in miniature; the report must have every
section, each with numbers or an explicit reason for having none.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["correctness", "training", "pipeline", "inference", "export"]
STATUSES = {"ok", "partial", "skipped", "failed", "error"}


def run_check(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def numbers(row):
    return [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # 240 s rather than the smoke default of 110: under the portable kernels on a busy 2-core
    # host the miniature training section alone took 76 s, and the sections after it found
    # their share spent and were skipped (the budget's skipping has its own test below)
    done = run_check("--device", "cpu", "--smoke", "--budget-s", "240", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "gpu_report.json").read_text()), done.stdout


def test_the_smoke_run_reports_every_section_with_numbers_or_a_reason(smoke):
    out, report, _ = smoke
    assert report["schema"] == 1 and report["smoke"] is True
    assert report["elapsed_s"] <= report["budget_s"] + 30  # the budget binds the sections, not the start-up
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["torch"] and "cuda" in env and "driver" in env
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] in STATUSES - {"failed", "error"}, (
            name,
            section["reason"],
            section["notes"],
        )
        measured = [row for row in section["rows"] if numbers(row)]
        assert measured or (section["status"] == "skipped" and section["reason"]), name
        for skipped in section["skipped"]:
            assert skipped["item"] and skipped["reason"], name
    markdown = (out / "gpu_report.md").read_text()
    assert markdown.startswith("# GPU check: CPU")
    assert markdown.count("\n## ") == len(SECTIONS)


def test_the_smoke_run_measures_each_section_in_miniature(smoke):
    _, report, _ = smoke
    sections = report["sections"]
    # correctness: the cuda tests were collected and each skipped for want of a GPU
    tests = sections["correctness"]["rows"]
    assert len(tests) >= 8 and {row["outcome"] for row in tests} == {"skipped"}
    assert sections["correctness"]["status"] == "skipped" and "CUDA" in sections["correctness"]["reason"]
    # training: singleshot's step beside torchvision's, with the time split adding up to the step
    training = {row["impl"]: row for row in sections["training"]["rows"]}
    assert set(training) == {"singleshot", "torchvision"}
    for row in training.values():
        assert row["images_per_s"] > 0 and row["steps"] >= 1
        split = sum(row[f"{phase}_ms"] for phase in ("data", "forward_loss", "backward", "update"))
        assert split <= row["step_ms"] * 1.01 and split > 0.5 * row["step_ms"]
    assert math.isclose(
        training["singleshot"]["vs_torchvision"],
        training["singleshot"]["images_per_s"] / training["torchvision"]["images_per_s"],
    )
    # the pipeline against the step rate the training section measured
    pipeline = sections["pipeline"]["rows"]
    assert [row["workers"] for row in pipeline] == [0, 1] and all(row["images_per_s"] > 0 for row in pipeline)
    assert all(0 < row["ssd300_busy"] <= 1 for row in pipeline) and sections["pipeline"]["notes"]
    # inference: both implementations at batch 1 and at the larger batch; the CUDA-only paths named
    paths = {(row["batch"], row["path"]) for row in sections["inference"]["rows"]}
    assert {
        (1, "torchvision fp32"),
        (1, "predict fp32"),
        (2, "torchvision fp32"),
        (2, "predict fp32"),
    } <= paths
    assert any("CUDA" in s["reason"] for s in sections["inference"]["skipped"])
    # export: ONNX Runtime's CPU provider measured, the GPU providers skipped with a reason
    runtimes = [row["runtime"] for row in sections["export"]["rows"]]
    assert "onnxruntime CPUExecutionProvider" in runtimes
    skipped = {s["item"] for s in sections["export"]["skipped"]}
    assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} <= skipped


def test_a_spent_budget_skips_sections_and_says_so(tmp_path):
    done = run_check("--device", "cpu", "--smoke", "--budget-s", "1", "--sections", "training", "export",
                     "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert list(report["sections"]) == ["training", "export"]
    for section in report["sections"].values():
        assert section["status"] == "skipped" and section["reason"] == "the check's time budget was spent"


def test_the_full_check_refuses_to_run_on_the_cpu(tmp_path):
    done = run_check("--device", "cpu", "--out", str(tmp_path), timeout=120)
    assert done.returncode != 0 and "--smoke" in done.stderr
    assert not (tmp_path / "gpu_report.json").exists()


def test_an_interrupted_test_run_is_read_from_pytests_verbose_lines():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_check import verbose_rows
    finally:
        sys.path.remove(str(SCRIPT.parent))
    output = (
        "tests/test_cuda.py::test_loss_on_cuda_equals_the_cpus PASSED [ 10%]\n"
        "tests/test_cuda.py::test_amp[fp16] FAILED [ 20%]\n"
        "collected 10 items\n"
    )
    assert [(row["test"], row["outcome"]) for row in verbose_rows(output)] == [
        ("test_loss_on_cuda_equals_the_cpus", "passed"),
        ("test_amp[fp16]", "failed"),
    ]


def test_a_section_whose_share_is_spent_lists_what_it_left_out():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_report import Section, markdown
    finally:
        sys.path.remove(str(SCRIPT.parent))
    spent = Section("training", "2. Training throughput", share_s=0.0)
    assert spent.out_of_time("ssd300 batch 32 fp16") and spent.out_of_time("ssdlite320 batch 64 bf16")
    spent.finish()
    assert (
        spent.status == "skipped" and "ssd300 batch 32 fp16: the section's time share (0 s)" in spent.reason
    )
    partial = Section("inference", "4. Inference", share_s=0.0)
    partial.rows.append({"path": "predict fp32", "ms": 3.5})
    partial.out_of_time("ssdlite320")
    partial.finish()
    assert partial.status == "partial" and partial.skipped[0]["item"] == "ssdlite320"
    untimed = Section("export", "5. Exported models", share_s=0.0, timed=False)  # the smoke run's
    assert not untimed.out_of_time("anything") and untimed.skipped == []
    report = {"environment": {"device": "GPU X", "torch": "2", "cuda": "13", "cudnn": 9, "torchvision": "0"},
              "smoke": False, "elapsed_s": 1.0, "budget_s": 420.0, "created": "now",
              "sections": {s.name: s.to_dict() for s in (spent, partial)}}  # fmt: skip
    text = markdown(report)
    assert "## 2. Training throughput: skipped" in text and "| predict fp32 | 3.5 |" in text
    assert "- skipped ssdlite320: the section's time share (0 s) was spent" in text
