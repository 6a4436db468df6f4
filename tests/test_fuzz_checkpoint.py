"""Property-based tests of checkpoint loading over bad files: byte mutations of a saved
checkpoint (zip and legacy pickle) and checkpoints whose fields hold the wrong things.

`singleshot.load` and `load_checkpoint` must raise a ValueError naming the file, or give
a model whose weights are exactly the file's.
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import singleshot
from fuzzing import GARBAGE_JSON, expect_named_error, mutated
from singleshot.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.fuzz

NAMES = ["__background__", "cat", "dog"]
_MODEL = singleshot.build_model("ssd160_compact", num_classes=3, class_names=NAMES)


def _saved_checkpoint() -> tuple[bytes, bytes, dict]:
    """The zip file's bytes, the same checkpoint as a legacy pickle's bytes, and what it holds;
    the file itself is written to a scratch folder that is removed again."""
    with tempfile.TemporaryDirectory(prefix="singleshot-fuzz-") as scratch:
        saved = save_checkpoint(Path(scratch) / "valid.pt", _MODEL, {"iteration": 3})
        state = load_checkpoint(saved)
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=False)
        return saved.read_bytes(), buffer.getvalue(), state


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


ZIP, LEGACY, STATE = _saved_checkpoint()


def same_weights(model, state: dict) -> bool:
    for name, value in model.state_dict().items():
        saved = state[name]
        if not torch.equal(value.isnan(), saved.isnan()):
            return False
        if not torch.equal(value.nan_to_num(), saved.to(value.dtype).nan_to_num()):
            return False
    return True


@given(data=st.one_of(mutated(ZIP, focus=4096), mutated(LEGACY, focus=4096)))
@example(data=ZIP[: len(ZIP) // 2] + bytes([ZIP[len(ZIP) // 2] ^ 1]) + ZIP[len(ZIP) // 2 + 1 :]).via(
    "weights"
)
def test_mutated_checkpoint_files_fail_cleanly(folder, data):
    path = folder / "mutated.pt"
    path.write_bytes(data)
    model = expect_named_error(lambda: singleshot.load(path), path, seconds=60)
    if model is not None and data.startswith(b"PK"):  # legacy pickles carry no checksum of the weights
        assert same_weights(model, STATE["state_dict"])


garbage = st.sampled_from(
    [
        *GARBAGE_JSON,
        10**12,
        -3,
        1,
        2,
        "ssd160_compact",
        "nope",
        ["a", "b"],
        (1, 2),
        torch.ones(2),
        [0.0, 1e9, 0],
    ]
)
FIELDS = [
    "format", "version", "model", "state_dict", "model.preset", "model.num_classes", "model.class_names",
    "model.prior_config", "model.image_mean", "model.prior_config.feature_maps", "model.prior_config.steps",
    "model.prior_config.image_size", "model.prior_config.aspect_ratios",
]  # fmt: skip
tensor_change = st.sampled_from(
    ["nan", "int", "shape", "scalar", "text", "missing", "extra", "half", "empty"]
)


def change_tensor(state: dict, key: str, change: str) -> None:
    value = state[key]
    replacements = {
        "nan": lambda: torch.full_like(value, math.nan) if value.is_floating_point() else value,
        "int": lambda: value.round().to(torch.int64),
        "shape": lambda: value.reshape(-1)[:-1] if value.numel() > 1 else value.repeat(2),
        "scalar": lambda: torch.tensor(1.0),
        "text": lambda: "weights",
        "half": lambda: value.half(),
        "empty": lambda: torch.empty(0),
    }
    if change == "missing":
        del state[key]
    elif change == "extra":
        state[key + "_extra"] = value.clone()
    else:
        state[key] = replacements[change]()


@given(
    edits=st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(st.just("<delete>"), garbage)), max_size=2),
    tensor=st.one_of(st.none(), st.tuples(st.sampled_from(sorted(STATE["state_dict"])), tensor_change)),
)
def test_checkpoints_with_wrong_fields_fail_cleanly(folder, edits, tensor):
    checkpoint = copy.deepcopy(STATE)
    for field, value in edits:
        *parents, last = field.split(".")
        node = checkpoint
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if value == "<delete>":
                node.pop(last, None)
            else:
                node[last] = value
    if (
        tensor is not None
        and isinstance(checkpoint.get("state_dict"), dict)
        and tensor[0] in checkpoint["state_dict"]
    ):
        change_tensor(checkpoint["state_dict"], *tensor)
    path = folder / "edited.pt"
    torch.save(checkpoint, path)
    model = expect_named_error(lambda: singleshot.load(path), path, seconds=60)
    if model is not None:
        assert same_weights(model, checkpoint["state_dict"])
        assert model.num_classes == len(model.class_names or NAMES)
