"""Winograd tile schedules: every one gives the same bits, and tuning keeps the fastest."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ci import require
from singleshot import build_model
from singleshot.winograd import WinogradConv2d, transform_weight
from singleshot.winograd import build as kernel_build
from singleshot.winograd import ops as winograd_ops
from singleshot.winograd import schedule as winograd_schedule
from singleshot.winograd.conv import conv_packed, pack_filters
from singleshot.winograd.schedule import CANDIDATES, ROUNDS, tune_winograd


@pytest.fixture
def openmp_kernels():
    require(kernel_build.find_compiler() is not None, "a C compiler for the Winograd kernels")
    kernel_build.load_kernels()
    require(kernel_build.kernels_use_openmp(), "Winograd kernels built with PyTorch's OpenMP")


@pytest.fixture
def own_cache(monkeypatch, tmp_path, openmp_kernels):
    """An empty singleshot cache for the schedules (the kernels stay loaded from the session's)."""
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("threads", [1, 3])
def test_every_schedule_gives_the_same_bits(openmp_kernels, threads):
    # 2 images of 13 x 10 tiles: blocks of 6 to 48 tiles and the shared chunks all cut the
    # 260 tiles differently, across the image border and unevenly between the threads
    torch.manual_seed(4)
    x = torch.randn(2, 40, 50, 37).contiguous(memory_format=torch.channels_last)
    filters = pack_filters(transform_weight(torch.randn(48, 40, 3, 3)))
    bias = torch.randn(48)
    reference = conv_packed(x, filters, bias, True, winograd_ops.BY_RULE)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for tiles in (*CANDIDATES, 1, 7, 10**12):  # more than there are: one block of them all
            assert torch.equal(conv_packed(x, filters, bias, True, tiles), reference), tiles
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("tiles", [-2, 1.5, True, "6", None])
def test_a_bad_schedule_is_refused(openmp_kernels, tiles):
    x = torch.randn(1, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    filters = pack_filters(transform_weight(torch.randn(8, 8, 3, 3)))
    with pytest.raises(ValueError, match=r"block_tiles must be tiles per block \(> 0\), 0 \(shared"):
        conv_packed(x, filters, None, False, tiles)


def two_layers() -> nn.Sequential:
    torch.manual_seed(5)
    first = WinogradConv2d(nn.Conv2d(8, 16, 3, padding=1), relu=True)
    second = WinogradConv2d(nn.Conv2d(16, 24, 3, padding=1))
    return nn.Sequential(first, second).eval()


# fake seconds per output width (which layer) and schedule; the untimed first round of the
# 24-channel layer makes blocks of 6 look fastest, which must not count
SECONDS = {16: {0: 3.0, 6: 2.0, 12: 1.5, 24: 1.0, 48: 4.0}, 24: {0: 0.5, 6: 2.0, 12: 1.5, 24: 1.0, 48: 4.0}}


def fake_timer(calls: list[tuple[int, int]]):
    def timer(tiles, call):
        width = call().shape[1]  # runs the candidate, which must work
        calls.append((width, tiles))
        first_round = sum(1 for w, _ in calls if w == width) <= len(CANDIDATES)
        return 0.01 if (width, tiles, first_round) == (24, 6, True) else SECONDS[width][tiles]

    return timer


def test_tuning_keeps_each_layers_fastest_schedule_and_caches_it(own_cache, capsys):
    model = two_layers()
    calls: list[tuple[int, int]] = []
    chosen = tune_winograd(model, (2, 8, 20, 18), timer=fake_timer(calls))
    assert chosen == {"0": 24, "1": 0}
    note = "singleshot: timing the Winograd tile schedules once for this CPU at 2 image(s) per batch"
    assert capsys.readouterr().err.count(note) == 1
    assert (model[0].schedules, model[1].schedules) == ({2: 24}, {2: 0})
    for width in (16, 24):  # each candidate in every round, the untimed one included
        assert sorted(tiles for w, tiles in calls if w == width) == sorted(CANDIDATES * (ROUNDS + 1))
    files = sorted(own_cache.glob("winograd-schedule-*.json"))
    assert len(files) == 2
    inputs = sorted(json.loads(path.read_text())["key"]["input"] for path in files)
    assert inputs == [[2, 8, 20, 18], [2, 16, 20, 18]]  # each layer's own input

    def no_timing(tiles, call):
        raise AssertionError("a cached choice was timed again")

    fresh = two_layers()
    assert tune_winograd(fresh, (2, 8, 20, 18), timer=no_timing) == chosen
    assert capsys.readouterr().err == ""  # a cached choice is not news
    calls.clear()
    assert tune_winograd(fresh, (2, 8, 20, 18), timer=fake_timer(calls), use_cache=False) == chosen
    assert len(calls) == 2 * len(CANDIDATES) * (ROUNDS + 1)
    calls.clear()  # another batch is another layer shape: timed, not read, and kept beside
    tune_winograd(fresh, (1, 8, 20, 18), timer=fake_timer(calls))
    assert len(calls) == 2 * len(CANDIDATES) * (ROUNDS + 1)
    assert fresh[0].schedules == {1: 24, 2: 24}


def test_a_batch_runs_with_the_schedule_timed_at_the_nearest_batch_size(openmp_kernels):
    module = WinogradConv2d(nn.Conv2d(8, 8, 3, padding=1))
    assert module.block_tiles(4) == winograd_ops.BY_RULE  # nothing timed
    module.schedules = {1: 6, 8: 48}
    # nearest by ratio: 2 is 2x from 1 and 4x from 8; 3 is 3x from 1 and 2.7x from 8
    assert [module.block_tiles(b) for b in (1, 2, 3, 4, 8, 32)] == [6, 6, 48, 48, 48, 48]
    module.schedules = {2: 6, 8: 48}
    assert module.block_tiles(4) == 48  # 2x either way: the larger
    assert "schedules={2: 6, 8: 48}" in repr(module)


def test_a_corrupt_cached_schedule_is_measured_again(own_cache):
    model = two_layers()
    tune_winograd(model, (1, 8, 12, 12), timer=fake_timer([]))
    for path in own_cache.glob("winograd-schedule-*.json"):
        path.write_text("{not json")
    calls: list[tuple[int, int]] = []
    with pytest.warns(UserWarning, match="ignoring a corrupt cached Winograd schedule"):
        assert tune_winograd(model, (1, 8, 12, 12), timer=fake_timer(calls)) == {"0": 24, "1": 0}
    assert calls


def test_without_openmp_kernels_nothing_is_tuned(own_cache, monkeypatch):
    monkeypatch.setattr(winograd_schedule, "kernels_use_openmp", lambda: False)
    model = two_layers()
    assert tune_winograd(model, (1, 8, 12, 12), timer=fake_timer([])) == {}
    assert model[0].schedules == model[1].schedules == {}


def test_optimize_for_inference_tunes_every_winograd_convolution(own_cache):
    model = build_model("ssd160_compact", num_classes=4).eval()
    fast = model.optimize_for_inference(batch_size=2)
    report = fast.optimizations
    modules = dict(fast.named_modules())
    assert len(report.winograd_convs) == 3
    timed = {name: modules[name].schedules for name in report.winograd_convs}
    assert all(set(schedules) == {1, 2} for schedules in timed.values())  # batch_size, and one image
    assert sorted(report.winograd_schedules) == sorted(
        (name, batch, tiles) for name, schedules in timed.items() for batch, tiles in schedules.items()
    )
    assert all(tiles in CANDIDATES for _, _, tiles in report.winograd_schedules)
    x = torch.randn(2, 3, 160, 160) * 60
    with torch.inference_mode():
        tuned = fast(x)
        for name in timed:
            modules[name].schedules = {}
        by_rule = fast(x)
    assert all(torch.equal(a, b) for a, b in zip(tuned, by_rule))


def test_build_kernels_lists_and_clears_the_cached_schedules(own_cache, capsys):
    from singleshot.cli import main

    tune_winograd(two_layers(), (2, 8, 20, 18), timer=fake_timer([]))
    (own_cache / "winograd-schedule-0000000000000000.json").write_text("{broken")
    (own_cache / "download.pt").write_bytes(b"not a schedule")
    assert main(["build-kernels", "--list"]) == 0
    out = capsys.readouterr().out
    threads = torch.get_num_threads()
    assert "schedules: 3 cached Winograd tile schedule(s)" in out
    assert f"input (2, 8, 20, 18) -> 16 channels, {threads} threads: blocks of 24 tiles" in out
    assert f"input (2, 16, 20, 18) -> 24 channels, {threads} threads: shared chunks" in out
    assert "  winograd-schedule-0000000000000000.json  unreadable (" in out
    assert main(["build-kernels", "--clear"]) == 0
    assert "3 cached Winograd tile schedule(s) removed" in capsys.readouterr().out
    assert sorted(p.name for p in own_cache.iterdir()) == ["download.pt"]


def test_detect_times_the_schedules_on_first_use_and_reads_them_after(own_cache, tmp_path):
    # what a user sees: the first `singleshot detect` on a machine times each batch size's
    # schedules once (a note on stderr), the next reads them, and the detections are the same
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from singleshot.checkpoint import save_checkpoint
    from singleshot.winograd.schedule import list_schedules

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "model.pt", build_model("ssd160_compact", num_classes=4).eval())
    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(generator.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(images / f"{index}.png")

    def detect(out: str) -> tuple[str, str]:
        command = [sys.executable, "-m", "singleshot.cli", "detect", "--checkpoint", str(checkpoint),
                   str(images), "--out", str(tmp_path / out), "--batch-size", "2", "--threshold", "0.01",
                   "--no-progress"]  # fmt: skip
        done = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stderr, (tmp_path / out / "detections.json").read_text()

    stderr, first = detect("first")
    for batch in (1, 2):
        assert stderr.count(f"timing the Winograd tile schedules once for this CPU at {batch} image(s)") == 1
    assert len(list_schedules()) == 2 * 3  # the compact model's 3 layer shapes, at both batch sizes
    stderr, second = detect("second")
    assert "timing the Winograd" not in stderr
    assert json.loads(first) == json.loads(second) and json.loads(first)
