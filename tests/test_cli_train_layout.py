"""``singleshot train``'s memory format through the command line: a real trial on the first run,
the cached decision afterwards, the checkpoint's on ``--resume``, and the flags that force it.

The cache file is edited between runs into a "forced choice" (the other layout), so that
which source a run took its layout from shows in the layout it trained in.
"""

import json
import os
import subprocess
import sys

import pytest

from singleshot.checkpoint import load_checkpoint
from singleshot.data.synthetic import write_dataset

OTHER = {"channels_last": "contiguous", "contiguous": "channels_last"}
SHOWN = {"channels_last": "channels-last", "contiguous": "NCHW"}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("voc"), "voc", num_train=6, num_test=2, size=64, seed=0)


def train(cache, *args):
    command = [sys.executable, "-m", "singleshot.cli", "train", "--no-progress", *args]
    environment = {**os.environ, "SINGLESHOT_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return next(line for line in done.stdout.splitlines() if line.startswith("layout: "))


def new_run(voc, out, *extra):
    return [
        "--model", "ssd160_compact", "--data", str(voc), "--train-split", "train", "--val-split", "none",
        "--batch-size", "2", "--iterations", "2", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def set_cached_layout(path, layout):
    """Make the cache file say ``layout``, its timings swapped to agree."""
    record = json.loads(path.read_text())
    decision = record["decision"]
    if decision["layout"] != layout:
        seconds = decision["seconds"]
        decision["seconds"] = {"channels_last": seconds["contiguous"], "contiguous": seconds["channels_last"]}
        decision["layout"] = layout
    path.write_text(json.dumps(record))


def recorded(run):
    return load_checkpoint(run / "last.pt")["training"]["layout"]


def test_measured_then_cached_then_kept_on_resume_and_forced_by_the_flags(voc, tmp_path):
    cache = tmp_path / "cache"
    line = train(cache, *new_run(voc, tmp_path / "first"))  # a real trial
    (path,) = cache.glob("layout-*.json")
    measured = recorded(tmp_path / "first")
    assert measured["source"] == "measured" and measured["trial_batch"] == 2
    assert line.endswith(f"measured now, cached in {path})") and "(trial: " in line

    # the cache now holds the other layout: a new run takes it without measuring
    chosen = OTHER[measured["layout"]]
    set_cached_layout(path, chosen)
    line = train(cache, *new_run(voc, tmp_path / "second"))
    assert line.startswith(f"layout: {SHOWN[chosen]} (trial: ") and line.endswith(f"cached in {path})")
    assert recorded(tmp_path / "second")["layout"] == chosen

    # the cache turns back; the resumed run keeps its checkpoint's layout and reads no cache
    set_cached_layout(path, measured["layout"])
    cached_text = path.read_text()
    line = train(cache, "--resume", str(tmp_path / "second" / "last.pt"), "--iterations", "3")
    assert line.startswith(f"layout: {SHOWN[chosen]} (") and line.endswith("as the checkpointed run decided)")
    state = load_checkpoint(tmp_path / "second" / "last.pt")["training"]
    assert state["iteration"] == 3 and state["layout"]["layout"] == chosen
    log = [json.loads(line) for line in (tmp_path / "second" / "log.jsonl").read_text().splitlines()]
    sources = [(r["iteration"], r["decision"]["source"]) for r in log if r["kind"] == "layout"]
    assert sources == [(0, "cached"), (2, "checkpoint")]

    # --channels-last / --no-channels-last win over the cache (which says the other), with no trial
    layout = OTHER[measured["layout"]]
    flag = "--channels-last" if layout == "channels_last" else "--no-channels-last"
    line = train(cache, *new_run(voc, tmp_path / "forced", flag, "--iterations", "1"))
    reason = f"channels_last: {str(layout == 'channels_last').lower()} in the run's configuration"
    assert line == f"layout: {SHOWN[layout]} (forced by {reason}, no trial)"
    assert recorded(tmp_path / "forced")["layout"] == layout
    assert path.read_text() == cached_text and len(list(cache.glob("layout-*.json"))) == 1
