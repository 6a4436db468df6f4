"""`singleshot.layout`: the memory format chosen by a timed, cached trial; forced without one.

The timings here come from fake timers (``timer(layout, step) -> seconds``), so that which
layout is faster is known; the real steps run where a test needs them to.
"""

import itertools
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import singleshot
from singleshot.layout import (
    LAYOUTS,
    LayoutDecision,
    apply_memory_format,
    busy_trial,
    choose_memory_format,
    decision_key,
    forced_layout,
    list_decisions,
    store,
    trial,
)
from singleshot.winograd.module import WinogradConv2d

SHAPE = (2, 3, 160, 160)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return singleshot.build_model("ssd160_compact", num_classes=3)


class FakeTimer:
    """Returns ``seconds[layout]`` for each call (a list: one value per call, in turn) and
    records the calls; calls ``step`` only when ``run`` is set."""

    def __init__(self, seconds, run=False):
        self.seconds = {k: list(v) if isinstance(v, list) else v for k, v in seconds.items()}
        self.calls = []
        self.run = run

    def __call__(self, layout, step):
        self.calls.append(layout)
        if self.run:
            step()
        value = self.seconds[layout]
        return value.pop(0) if isinstance(value, list) else value


def never(layout, step):
    raise AssertionError("measured, but the decision was to be taken without a trial")


@pytest.mark.parametrize("faster", LAYOUTS)
def test_the_choice_follows_the_faster_layout(cache, model, faster):
    timer = FakeTimer({name: 0.125 if name == faster else 0.25 for name in LAYOUTS})
    decision = choose_memory_format(model, SHAPE, training=True, timer=timer)
    assert decision.layout == faster and decision.channels_last == (faster == "channels_last")
    assert decision.source == "measured" and decision.mode == "train" and decision.trial_batch == 2
    assert decision.seconds == {name: 0.125 if name == faster else 0.25 for name in LAYOUTS}
    # one warm-up each, then rounds in alternating order until 1.5 s are timed: 4 rounds of 0.375 s
    assert trial.TRIAL_SECONDS == 1.5 and trial.MIN_ROUNDS == 2
    first, second = LAYOUTS
    assert timer.calls == [first, second] + [first, second, second, first] * 2
    # written to the cache: the decision and the key it holds for
    (path,) = list_decisions()
    assert decision.cache_file == str(path) and path.parent == cache
    record = json.loads(path.read_text())
    assert record["decision"]["layout"] == faster
    assert record["key"]["threads"] == torch.get_num_threads() and record["key"]["input"] == list(SHAPE)


def test_each_layout_counts_its_fastest_timed_step_and_not_its_warm_up(cache, model):
    # warm-ups 0.01 and 0.02, then two rounds (the minimum; 3.15 s timed, over the 1.5 s budget)
    timer = FakeTimer({"channels_last": [0.01, 0.9, 0.7], "contiguous": [0.02, 0.6, 0.95]})
    decision = choose_memory_format(model, SHAPE, training=False, timer=timer, use_cache=False)
    assert timer.calls == ["channels_last", "contiguous", "channels_last", "contiguous", "contiguous",
                           "channels_last"]  # fmt: skip
    assert decision.seconds == {"channels_last": 0.7, "contiguous": 0.6}
    assert not decision.channels_last and decision.mode == "inference"
    assert list_decisions() == []  # use_cache=False writes nothing


def test_rounds_stop_at_the_maximum_when_steps_take_no_time(cache, model):
    timer = FakeTimer({"channels_last": 0.0, "contiguous": 0.0})
    decision = choose_memory_format(model, SHAPE, training=True, timer=timer, use_cache=False)
    assert len(timer.calls) == 2 + 2 * trial.MAX_ROUNDS
    assert decision.channels_last  # a tie keeps channels-last


def test_the_second_call_reads_the_cache_and_measures_nothing(cache, model):
    timer = FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
    first = choose_memory_format(model, SHAPE, training=True, timer=timer)
    second = choose_memory_format(model, SHAPE, training=True, timer=never)
    assert second.source == "cached" and first.source == "measured"
    assert second.layout == first.layout == "contiguous" and second.seconds == first.seconds
    assert second.cache_file == first.cache_file
    assert "decided earlier, cached in" in second.describe() and "measured now" in first.describe()
    # another workload is another decision: inference, or another batch
    for kwargs, shape in (({"training": False}, SHAPE), ({"training": True}, (1, 3, 160, 160))):
        timer = FakeTimer({"channels_last": 0.25, "contiguous": 0.5})
        assert choose_memory_format(model, shape, timer=timer, **kwargs).source == "measured"
        assert timer.calls
    assert len(list_decisions()) == 3


def key_of(model, shape=SHAPE, **changes):
    arguments = {"training": True, "dtype": torch.float32, "device": torch.device("cpu"), **changes}
    return decision_key(model, shape, **arguments)


def test_the_key_changes_with_threads_cpu_kernels_model_and_workload(model, monkeypatch):
    base = key_of(model)
    assert key_of(model) == base  # the same facts, the same key
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert key_of(model)["threads"] == threads + 1
        assert store.decision_path(key_of(model)) != store.decision_path(base)
    finally:
        torch.set_num_threads(threads)
    other = singleshot.build_model("ssd160_compact", num_classes=4)  # another head
    changed = {
        "model": key_of(other),
        "shape": key_of(model, shape=(4, 3, 160, 160)),
        "mode": key_of(model, training=False),
        "dtype": key_of(model, dtype=torch.float64),
        "autocast": key_of(model, autocast_dtype=torch.bfloat16),
    }
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN limited to AVX2 kernels
    changed["onednn isa"] = key_of(model)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    monkeypatch.setattr(store, "cpu_identity", lambda: "model name\t: Another CPU\nflags\t\t: fpu sse2")
    changed["cpu"] = key_of(model)
    paths = {store.decision_path(key) for key in changed.values()}
    assert store.decision_path(base) not in paths and len(paths) == len(changed)
    # the weights are not part of it: the same structure with other values shares the decision
    twin = singleshot.build_model("ssd160_compact", num_classes=3)
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    monkeypatch.undo()
    assert key_of(twin) == base


@pytest.mark.parametrize(
    "corrupt",
    [
        "{not json",
        '["a list"]',
        '{"key": {"version": 1}, "decision": {"layout": "channels_last", "source": "measured"}}',
        "THE KEY",  # the right key, a bad decision: replaced below
    ],
)
def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(cache, model, corrupt):
    timer = FakeTimer({"channels_last": 0.25, "contiguous": 0.5})
    path = store.decision_path(key_of(model))
    assert choose_memory_format(model, SHAPE, training=True, timer=timer).cache_file == str(path)
    if corrupt == "THE KEY":
        record = json.loads(path.read_text())
        corrupt = json.dumps({"key": record["key"], "decision": {**record["decision"], "layout": "NHWC"}})
    path.write_text(corrupt)
    timer = FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
    with pytest.warns(UserWarning, match=f"{path}: ignoring a corrupt cached layout decision"):
        decision = choose_memory_format(model, SHAPE, training=True, timer=timer)
    assert decision.source == "measured" and decision.layout == "contiguous" and timer.calls
    assert json.loads(path.read_text())["decision"]["layout"] == "contiguous"  # rewritten
    assert choose_memory_format(model, SHAPE, training=True, timer=never).source == "cached"


def test_an_unwritable_cache_warns_and_still_decides(monkeypatch, tmp_path, model):
    blocker = tmp_path / "a file"
    blocker.write_text("the cache folder cannot be made inside a file")
    monkeypatch.setenv("SINGLESHOT_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot cache the layout decision"):
        timer = FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
        decision = choose_memory_format(model, SHAPE, training=True, timer=timer)
    assert decision.layout == "contiguous" and decision.cache_file is None


def test_the_trial_runs_real_steps_and_leaves_the_model_and_random_state_alone(cache):
    torch.manual_seed(0)
    # in train mode BatchNorm updates its statistics and dropout draws random numbers
    layers = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 4, 1)]
    model = nn.Sequential(*layers)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    ran = []

    def timer(layout, step):
        step()  # forward + backward of the layout's copy
        ran.append(layout)
        return 1.0

    decision = choose_memory_format(model, (2, 3, 16, 16), training=True, timer=timer, use_cache=False)
    assert len(ran) == 2 + 2 * trial.MIN_ROUNDS and decision.channels_last  # a tie: channels-last
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # running stats too
    assert all(p.grad is None for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # the layout was not changed either


def test_a_model_without_tensor_outputs_is_an_error(cache):
    class NoOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            self.conv(x)
            return None

    with pytest.raises(ValueError, match="returned no tensor"):
        choose_memory_format(NoOutput(), (1, 3, 8, 8), training=True, timer=lambda name, step: step() or 1.0)


def test_apply_memory_format_moves_weights_and_sets_the_models_flag(model):
    copy = singleshot.build_model("ssd160_compact", num_classes=3)
    for channels_last in (True, False):
        decision = forced_layout(channels_last, "the test")
        assert apply_memory_format(copy, decision) is copy and copy.channels_last is channels_last
        weights = [p for p in copy.parameters() if p.ndim == 4]
        assert weights and all(p.is_contiguous(memory_format=decision.memory_format) for p in weights)
        assert all(p.is_contiguous() for p in weights) is not channels_last


def test_decisions_round_trip_as_plain_data_and_bad_records_are_named():
    decision = LayoutDecision(False, "measured", {"channels_last": 0.5, "contiguous": 0.25}, 7,
                              "Some CPU, 2 threads", "train", None, "/cache/layout-0.json")  # fmt: skip
    assert LayoutDecision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision
    assert decision.describe() == (
        "NCHW (trial: 0.500 s channels-last, 0.250 s NCHW per forward+backward of 7 images on "
        "Some CPU, 2 threads; measured now, cached in /cache/layout-0.json)"
    )
    forced = forced_layout(True, "--channels-last")
    assert forced.describe() == "channels-last (forced by --channels-last, no trial)"
    good = decision.to_dict()
    for field, value, message in [
        ("layout", "NHWC", "layout must be one of"),
        ("source", "guessed", "source must be one of"),
        ("seconds", {"channels_last": 0.5}, "seconds must give both layouts"),
        ("seconds", {"channels_last": math.nan, "contiguous": 0.1}, "must be a finite number"),
        ("seconds", {"channels_last": -1.0, "contiguous": 0.1}, "must be >= 0"),
        ("trial_batch", 0, "trial_batch must be a positive integer"),
        ("measured_on", 3, "measured_on must be a string"),
    ]:
        with pytest.raises(ValueError, match=message):
            LayoutDecision.from_dict({**good, field: value})
    with pytest.raises(ValueError, match="is a mapping"):
        LayoutDecision.from_dict(["channels_last"])


def test_a_winograd_model_runs_channels_last_without_a_trial(cache, monkeypatch):
    from singleshot.optimize import inference_layout

    monkeypatch.setattr(trial, "time_step", never)
    model = singleshot.build_model("ssd160_compact", num_classes=3).eval()
    model.extra_winograd = WinogradConv2d(nn.Conv2d(8, 8, 3, padding=1))  # as use_winograd leaves one
    decision = inference_layout(model, batch_size=8)
    assert decision.source == "forced" and decision.channels_last
    assert list_decisions() == []
    with pytest.raises(ValueError, match="Winograd convolutions run channels-last"):
        inference_layout(model, channels_last=False)


@pytest.mark.parametrize("faster", LAYOUTS)
def test_inference_takes_the_faster_layout_and_tells_what_it_measured(cache, monkeypatch, capsys, faster):
    from singleshot.cli.modelfile import optimized

    timer = FakeTimer({name: 0.125 if name == faster else 0.25 for name in LAYOUTS})
    monkeypatch.setattr(trial, "time_step", timer)
    model = singleshot.build_model("ssd160_compact", num_classes=3).eval()
    run = optimized(model, fast=None, winograd=False, half=False, batch_size=8)  # as detect and eval
    decision = run.optimizations.layout
    assert decision.layout == faster and decision.trial_batch == 8 and decision.mode == "inference"
    assert run.channels_last is (faster == "channels_last") and model.channels_last
    weight = run.head.loc[0].weight  # a 4-D parameter, in the chosen layout
    assert weight.is_contiguous(memory_format=torch.channels_last) is (faster == "channels_last")
    assert f"note: memory format {decision.describe()}" in capsys.readouterr().err
    monkeypatch.setattr(trial, "time_step", never)
    again = optimized(model, fast=None, winograd=False, half=False, batch_size=8)
    assert again.optimizations.layout.source == "cached"
    assert capsys.readouterr().err == ""  # a cached decision is not news


def test_build_kernels_lists_and_clears_the_cached_decisions(cache, model, capsys):
    from singleshot.cli import main

    timer = FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
    decision = choose_memory_format(model, SHAPE, training=True, timer=timer)
    (cache / "layout-0000000000000000.json").write_text("{broken")
    (cache / "download.pt").write_bytes(b"not a decision")
    assert main(["build-kernels", "--list"]) == 0
    out = capsys.readouterr().out
    assert "layouts:  2 cached decision(s)" in out
    assert f"  {Path(decision.cache_file).name}  NCHW (train: {decision.describe_trial()})" in out
    assert "  layout-0000000000000000.json  unreadable (" in out
    assert main(["build-kernels", "--clear"]) == 0
    assert "2 cached layout decision(s) removed" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["download.pt"]


def test_a_trial_on_a_busy_machine_is_judged_by_its_share_of_the_cpu():
    # 2 threads for 1 s could run 2 CPU-seconds: 1.9 is an idle machine, 0.6 a busy one
    assert busy_trial(1.0, 1.9, 2) is None
    assert busy_trial(1.0, 1.0, 2) is None  # exactly BUSY_CPU_SHARE
    reason = busy_trial(1.0, 0.6, 2)
    assert reason is not None and "30% of the time its 2 threads could have" in reason
    assert busy_trial(0.1, 0.0, 2) is None  # too short to judge (a fake timer's trial)


@pytest.mark.parametrize("cpu_seconds, cached", [(1.9, True), (0.6, False)])
def test_a_busy_trial_decides_but_is_not_cached(cache, model, monkeypatch, cpu_seconds, cached):
    # each trial's elapsed and CPU time as the clock around it reads them: 1 s, and cpu_seconds
    clock = types.SimpleNamespace(perf_counter=itertools.cycle([0.0, 1.0]).__next__,
                                  process_time=itertools.cycle([0.0, cpu_seconds]).__next__)  # fmt: skip
    monkeypatch.setattr("singleshot.layout.choose.time", clock)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    timer = FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
    decision = choose_memory_format(model, SHAPE, training=True, timer=timer)
    assert decision.layout == "contiguous" and decision.source == "measured"
    assert (decision.cache_file is not None) == cached and bool(list_decisions()) == cached
    if not cached:
        assert decision.describe().endswith("measured now, not cached: other work kept the machine busy "
                                            "during the trial (this process ran 30% of the time its 2 "
                                            "threads could have))")  # fmt: skip
        # the next call measures again
        again = choose_memory_format(
            model, SHAPE, training=True, timer=FakeTimer({"channels_last": 0.5, "contiguous": 0.25})
        )
        assert again.source == "measured"


BUSY_TRIAL = """
import os, subprocess, sys, torch, singleshot
from singleshot.layout import choose_memory_format
cpus = sorted(os.sched_getaffinity(0))[:2]
os.sched_setaffinity(0, cpus)
torch.set_num_threads(len(cpus))
# two busy processes per CPU, on the same CPUs: the trial's threads get about a third of them
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * len(cpus))]
try:
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    decision = choose_memory_format(model, (2, 3, 160, 160), training=False)
finally:
    for process in busy:
        process.kill()
print(decision.describe())
print("cached" if decision.cache_file else "not cached")
"""


def test_a_real_trial_among_busy_processes_is_not_cached(cache, tmp_path):
    """Real signals: the trial shares its CPUs with busy-looping processes (inherits the
    affinity), so its process runs about a third of its threads' time."""
    script = tmp_path / "busy_trial.py"
    script.write_text(BUSY_TRIAL)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "not cached", done.stdout
    assert "other work kept the machine busy during the trial" in done.stdout
    assert not list_decisions()
