"""``singleshot benchmark`` run as users run it, and the pieces it is made of.

A compact SSD whose heads are fitted to a small synthetic VOC set (mAP around 0.4) is timed
in every format at batch 1 and 2 over two rounds. The JSON must hold every asked row, with
stage times that add up to the total, images/s that agree with it, and mAP equal to what
``singleshot eval`` gives (PyTorch and float exports within 0.1 point, the int8 file exactly
its own score). No time is asserted: only how the figures relate.
"""

import json
import math
import shutil
import subprocess
import sys
import types

import onnxruntime
import openvino
import pytest
import torch

import singleshot
from ci import openvino_runs
from singleshot.benchmark import FORMATS, STAGES, busy_machine_note, spinning_threads_note
from singleshot.cache import cpu_name
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.data import open_dataset
from singleshot.data.synthetic import write_dataset
from singleshot.evaluation import evaluate_model
from singleshot.export import OnnxDetector
from singleshot.inference import predict, prediction_stages
from singleshot.timing import StageTimes, time_in_turns, time_interleaved
from test_cli_eval import write_voc
from test_cli_exported import fit_heads

ROUNDS, IMAGES, BATCHES = 2, 4, (1, 2)
MAP_TOLERANCE = 1e-3  # 0.1 point: the bar for a float export against the checkpoint
RUNTIMES = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino", "int8": "onnxruntime"}


def cli(*args):
    """``singleshot ARGS`` in a subprocess, as a user runs it."""
    command = [sys.executable, "-m", "singleshot.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return write_dataset(root, "voc", num_train=4, num_test=8, size=96, seed=2, progress=False)


@pytest.fixture(scope="module")
def fitted(voc, tmp_path_factory):
    """(checkpoint, model): the compact SSD with its heads fitted to the test images."""
    torch.manual_seed(0)
    dataset = open_dataset(voc, split="test")
    model = fit_heads(singleshot.build_model("ssd160_compact", class_names=list(dataset.classes)), dataset)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model), model


@pytest.fixture(scope="module")
def expected_formats():
    """Every format, less openvino where its CPU plugin cannot run (oneDNN held to SSE4.1)."""
    return [name for name in FORMATS if name != "openvino" or openvino_runs()]


@pytest.fixture(scope="module")
def benchmark(fitted, voc, tmp_path_factory):
    """(the command's stdout, its JSON, the folder it kept the exported files in)."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "results" / "bench.json"
    done = cli("benchmark", "--checkpoint", fitted[0], "--data", voc, "--batch", *BATCHES, "--rounds", ROUNDS,
               "--images", IMAGES, "--threads", 1, "--work-dir", folder / "work", "--out", out,
               "--no-progress")  # fmt: skip
    return done.stdout, json.loads(out.read_text()), folder / "work"


def test_every_row_has_stage_times_that_add_up_to_the_total(benchmark, expected_formats):
    _, document, _ = benchmark
    rows = document["rows"]
    expected = [(name, batch) for batch in BATCHES for name in expected_formats]
    assert [(row["format"], row["batch"]) for row in rows] == expected
    for row in rows:
        stages = [row[f"{stage}_ms"] for stage in STAGES]
        assert all(ms > 0 for ms in stages) and row["cpu_ms_per_image"] > 0
        assert row["ms_per_image"] == pytest.approx(sum(stages), rel=1e-12)
        assert row["images_per_s"] == pytest.approx(1000.0 / row["ms_per_image"], rel=1e-12)
        assert row["samples"] == ROUNDS * math.ceil(IMAGES / row["batch"])
        assert row["network_includes_postprocess"] == (row["format"] != "torch")  # NMS inside the exports
        for stage in STAGES:
            spread = row["spread"][stage]
            assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
            assert spread["median"] == row[f"{stage}_ms"]


def test_the_json_names_the_machine_the_runtimes_and_the_files(benchmark, expected_formats, voc):
    _, document, work = benchmark
    assert document["cpu"] == cpu_name() and document["threads"] == 1
    versions = document["versions"]
    assert versions["torch"] == torch.__version__ and versions["onnxruntime"] == onnxruntime.__version__
    assert openvino.__version__.startswith(versions["openvino"])
    assert document["data"] == {"root": str(voc), "split": "test", "metric": "voc07"}
    assert document["timing"]["rounds"] == ROUNDS and document["timing"]["batches"] == list(BATCHES)
    assert list(document["formats"]) == expected_formats
    assert set(document["left_out"]) == set(FORMATS) - set(expected_formats)
    for name, entry in document["formats"].items():
        assert entry["runtime"] == RUNTIMES[name]
    files = {"onnx": "model.onnx", "openvino": "model.xml", "int8": "model.int8.onnx"}
    for name in expected_formats[1:]:
        assert document["formats"][name]["file"] == str(work / files[name]) and (work / files[name]).is_file()
    assert "calibrated on 4 images of" in document["formats"]["int8"]["made"]  # the 4 train images
    assert document["formats"]["int8"]["made"].endswith("(train)")


def test_the_printed_table_has_a_line_per_row(benchmark):
    printed, document, _ = benchmark
    lines = printed.splitlines()
    for row in document["rows"]:
        star = "*" if row["network_includes_postprocess"] else ""
        times = [f"{row[f'{stage}_ms']:.2f}" for stage in STAGES] + [f"{row['ms_per_image']:.2f}"]
        times[1] += star
        cells = [row["format"], str(row["batch"]), *times, f"{row['images_per_s']:.1f}"]
        cells.append(f"{100 * row['map']:.2f}")
        assert cells in [line.split() for line in lines], cells
    assert any(line.startswith("* decoding and NMS run inside the exported graph") for line in lines)


def test_map_is_what_singleshot_eval_gives(benchmark, fitted, voc, tmp_path):
    _, document, work = benchmark
    cli("eval", "--checkpoint", fitted[0], "--data", voc, "--out", tmp_path, "--workers", 0, "--no-progress")
    checkpoint_map = json.loads((tmp_path / "metrics.json").read_text())["map"]
    assert checkpoint_map > 0.15  # detections worth comparing
    maps = {(row["format"], row["batch"]): row["map"] for row in document["rows"]}
    for (name, _), value in maps.items():
        if name != "int8":  # float: the checkpoint's mAP
            assert value == pytest.approx(checkpoint_map, abs=MAP_TOLERANCE)
    # the int8 file's own score, with the benchmark's one thread: the preprocessing's float32
    # rounding depends on how the threads split the work, and int8 inputs amplify a last-bit change
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        int8 = OnnxDetector(work / "model.int8.onnx", threads=1)
        int8_map = evaluate_model(int8, open_dataset(voc, split="test"), progress=False)["map"]
    finally:
        torch.set_num_threads(threads)
    assert maps["int8", 1] == maps["int8", 2] == pytest.approx(int8_map, abs=1e-12)


def test_an_exported_file_gives_the_formats_it_can_become(benchmark, tmp_path):
    _, _, work = benchmark
    out = tmp_path / "exported.json"
    done = cli("benchmark", "--checkpoint", work / "model.onnx", "--formats", "torch,onnx,int8", "--batch", 2,
               "--rounds", 1, "--images", 2, "--threads", 1, "--work-dir", tmp_path / "work", "--out", out,
               "--no-progress")  # fmt: skip
    document = json.loads(out.read_text())
    assert "note: torch left out: an exported file holds no PyTorch model" in done.stderr
    assert "int8 calibrates on the synthetic timing images" in done.stderr
    assert list(document["left_out"]) == ["torch"] and document["data"] is None
    assert [(row["format"], row["batch"], row["map"]) for row in document["rows"]] == [
        ("onnx", 2, None),
        ("int8", 2, None),
    ]
    assert document["formats"]["onnx"]["file"] == str(work / "model.onnx")
    made = tmp_path / "work"
    assert (made / "model.int8.onnx").is_file() and not (made / "model.onnx").exists()  # the given file ran


def test_bad_input_is_a_clear_error_and_writes_nothing(fitted, voc, tmp_path, capsys):
    checkpoint = fitted[0]
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not a model")
    other_classes = write_voc(tmp_path / "catsdogs")
    no_train = tmp_path / "no_train"
    shutil.copytree(voc, no_train)
    (no_train / "ImageSets" / "Main" / "train.txt").unlink()
    out = tmp_path / "out.json"
    cases = [
        (["--checkpoint", checkpoint, "--formats", "torch,tensorrt"], "among torch, onnx, openvino, int8"),
        (["--checkpoint", checkpoint, "--batch", "1", "0"], "--batch must be >= 1, got 0"),
        (["--checkpoint", tmp_path / "missing.pt"], f"{tmp_path / 'missing.pt'}: no such checkpoint file"),
        (["--checkpoint", garbage], f"{garbage}: not a loadable ONNX model"),
        (["--checkpoint", checkpoint, "--data", other_classes], f"{checkpoint} on {other_classes}: "),
        (
            ["--checkpoint", checkpoint, "--formats", "int8", "--data", no_train],
            "int8 calibrates on --data's train split",
        ),
        (["--checkpoint", checkpoint, "--formats", "torch", "--calibration", voc], "--calibration applies"),
        (["--checkpoint", checkpoint, "--out", tmp_path], "a folder; give the JSON file to write"),
    ]
    for args, message in cases:
        given_out = [] if "--out" in args else ["--out", str(out)]
        code = main(["benchmark", *map(str, args), "--no-progress", *given_out])
        error = capsys.readouterr().err
        assert code == 1 and message in error, (args, error)
        assert error.count("error:") == 1 and "Traceback" not in error
    assert not out.exists()


def test_prediction_stages_compose_to_predict(fitted, benchmark, voc):
    model, work = fitted[1], benchmark[2]
    images = [open_dataset(voc, split="test")[i][0] for i in range(3)]
    sizes = [tuple(image.shape[-2:]) for image in images]
    for detector in (model, OnnxDetector(work / "model.onnx", threads=1)):
        stages = prediction_stages(detector, score_threshold=0.2)
        staged = stages.postprocess(stages.network(stages.preprocess(images)), sizes)
        expected = predict(detector, images, score_threshold=0.2)
        assert stages.network_includes_postprocess == (detector is not model)
        assert sum(len(det["scores"]) for det in expected) > 0
        for got, want in zip(staged, expected, strict=True):
            assert all(torch.equal(got[key], want[key]) for key in ("boxes", "scores", "labels"))
    with pytest.raises(ValueError, match="object: cannot run predict's steps apart"):
        prediction_stages(object())


def test_time_interleaved_alternates_the_order_and_times_per_item(monkeypatch):
    clock = types.SimpleNamespace(now=0.0)
    clock.perf_counter = lambda: clock.now
    clock.process_time = lambda: clock.now / 2  # half the elapsed time on this process's CPU
    monkeypatch.setattr("singleshot.timing.time", clock)
    calls = []

    def run_costing(name, seconds):  # stage "a" costs seconds per item, "b" twice that
        def run(items, laps):
            calls.append(name)
            clock.now += seconds * len(items)
            laps.lap("a")
            clock.now += 2 * seconds * len(items)
            laps.lap("b")

        return run

    runs = [run_costing("p", 0.001), run_costing("q", 0.003)]
    times = time_interleaved(runs, [[0] * 2, [0] * 4], repeats=3)
    assert calls == ["p", "q"] + ["p", "q", "p", "q"] + ["q", "p", "q", "p"] + ["p", "q", "p", "q"]
    assert times[0].stages == ["a", "b"] and len(times[0].wall["a"]) == 6
    assert times[0].wall["a"] == pytest.approx([1.0] * 6) and times[0].cpu["b"] == pytest.approx([1.0] * 6)
    assert times[1].median("b") == pytest.approx(6.0) and times[1].median("a", cpu=True) == pytest.approx(1.5)
    spread = StageTimes(wall={"a": [5.0, 1.0, 4.0, 2.0, 3.0]}).spread("a")
    assert spread == {"min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "max": 5.0}
    with pytest.raises(ValueError, match="at least one input and one round"):
        time_interleaved([run_costing("p", 0.001)], [[0]], repeats=0)


def test_time_in_turns_runs_each_candidate_warm_after_a_pause(monkeypatch):
    clock = types.SimpleNamespace(now=0.0, paused_at=-1.0, pauses=[])
    clock.perf_counter = lambda: clock.now
    clock.process_time = lambda: clock.now
    monkeypatch.setattr("singleshot.timing.time", clock)
    calls = []

    def run_costing(name, seconds):  # a run starting within 20 ms of a pause costs 3x (cores idle)
        def run(items, laps):
            cold = clock.now - clock.paused_at < 0.02
            calls.append(f"{name}{len(items)}")
            clock.now += seconds * len(items) * (3 if cold else 1)
            laps.lap("run")

        return run

    def pause(seconds):
        calls.append("pause")
        clock.pauses.append(seconds)
        clock.paused_at = clock.now

    clock.sleep = pause
    runs = [run_costing("p", 0.001), run_costing("q", 0.003)]
    times = time_in_turns(runs, [[0] * 2, [0] * 4], repeats=2, warmup=1, pause=0.25, warm=0.025)
    # warm-up on the first input until 25 ms have passed: p's runs start at 0, 6, 12, 18 (cold,
    # 6 ms each) and 24 ms (warm, 2 ms); q's at 0 and 18 ms (cold, 18 ms each)
    turn = {"p": ["pause"] + ["p2"] * 5 + ["p2", "p4"], "q": ["pause"] + ["q2"] * 2 + ["q2", "q4"]}
    assert calls == ["p2", "q2"] + turn["p"] + turn["q"] + turn["q"] + turn["p"]
    assert clock.pauses == [0.25] * 4
    assert times[0].wall["run"] == pytest.approx([1.0] * 4) and times[1].median("run") == pytest.approx(3.0)
    # a single untimed run (no warm-up time) leaves p's timed runs in the cold 20 ms
    calls.clear()
    times = time_in_turns(runs[:1], [[0] * 2, [0] * 4], repeats=1, warmup=0, pause=0.25, warm=0.0)
    assert calls == ["pause", "p2", "p2", "p4"] and times[0].wall["run"] == pytest.approx([3.0, 3.0])
    with pytest.raises(ValueError, match="at least one input and one round"):
        time_in_turns(runs, [], repeats=1)


def test_exported_formats_note_pytorchs_spinning_threads():
    machine = {"threads": 2, "environment": {}}
    note = spinning_threads_note(machine, ["torch", "onnx", "int8"])
    assert note is not None and "runtimes of onnx, int8" in note and "OMP_WAIT_POLICY=PASSIVE" in note
    assert spinning_threads_note(machine, ["torch"]) is None  # no exported format timed
    assert spinning_threads_note({**machine, "threads": 1}, ["onnx"]) is None  # no idle thread spins
    assert spinning_threads_note({**machine, "environment": {"OMP_WAIT_POLICY": "PASSIVE"}}, ["onnx"]) is None


def test_a_busy_machine_is_noted_where_pytorchs_threads_spin():
    busy = {"load_average": [4.2, 3.0, 2.0], "cpu_count": 2, "threads": 2, "environment": {}}
    note = busy_machine_note(busy)
    assert note is not None and "load average (4.20)" in note and "OMP_WAIT_POLICY=PASSIVE" in note
    assert busy_machine_note({**busy, "environment": {"OMP_WAIT_POLICY": "PASSIVE"}}) is None
    assert busy_machine_note({**busy, "threads": 1}) is None  # one thread waits for no other
    assert busy_machine_note({**busy, "load_average": [1.5, 1.0, 1.0]}) is None
    assert busy_machine_note({**busy, "load_average": None}) is None  # unknown (no getloadavg)
