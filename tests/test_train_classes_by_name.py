"""Training relates the classes of its data to the model's by name, as users run it.

A training root that lists the same classes in another order, or under other names with
``--class-map``, must train exactly as the root in the model's order: the same labels reach
the loss, so the runs are equal bit for bit. ``singleshot train`` runs in a subprocess on
COCO folders that differ only in their category lists (the same images and boxes).
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import singleshot
from singleshot.checkpoint import load_checkpoint
from singleshot.data.synthetic import SYNTH_CLASSES, write_dataset
from test_cli_reproducible import assert_same_run, run_to_end

# A 6-cycle: its inverse is another order, so a mapping applied the wrong way round shows.
ROTATED = [*SYNTH_CLASSES[1:], SYNTH_CLASSES[0]]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("coco"), "coco", num_train=8, num_test=1, size=64, seed=7)


def recategorised(coco, target, order, rename=None):
    """A copy of ``coco`` whose train file lists its categories as ``order`` (ids 1, 2, ...
    in that order, so the labels follow it), each box keeping its class name; ``rename``
    {old: new} renames classes."""
    shutil.copytree(coco, target)
    path = target / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    name_of = {c["id"]: c["name"] for c in data["categories"]}
    rename = rename or {}
    ids = {rename.get(name, name): k + 1 for k, name in enumerate(order)}
    for annotation in data["annotations"]:
        name = name_of[annotation["category_id"]]
        annotation["category_id"] = ids[rename.get(name, name)]
    data["categories"] = [{"id": k, "name": name} for name, k in ids.items()]
    path.write_text(json.dumps(data))
    return target


def train_command(out, *data, extra=()):
    return [
        sys.executable, "-m", "singleshot.cli", "train", "--model", "ssd160_compact",
        "--data", *map(str, data), "--out", str(out), "--batch-size", "4", "--iterations", "3",
        "--train-split", "train", "--val-split", "none", "--workers", "0", "--device", "cpu", "--seed", "3",
        "--no-progress", "--set", "optimizer.lr=0.01", *extra,
    ]  # fmt: skip


def train(out, *data, extra=()):
    return subprocess.run(train_command(out, *data, extra=extra), capture_output=True, text=True, timeout=600)


def trained(out, *data, extra=()):
    done = run_to_end(train_command(out, *data, extra=extra))
    return done.stdout + done.stderr


def test_a_root_in_another_order_trains_as_the_first_roots_order(coco, tmp_path):
    rotated = recategorised(coco, tmp_path / "rotated", ROTATED)
    categories = json.loads((rotated / "annotations" / "instances_train.json").read_text())["categories"]
    assert [c["name"] for c in sorted(categories, key=lambda c: c["id"])] == ROTATED
    trained(tmp_path / "same", coco, coco)
    log = trained(tmp_path / "mixed", coco, rotated)
    assert "classes matched by name" in log and str(rotated) in log
    assert_same_run(tmp_path / "same" / "last.pt", tmp_path / "mixed" / "last.pt")
    model = singleshot.load(tmp_path / "mixed" / "last.pt")
    assert model.class_names == ["__background__", *SYNTH_CLASSES]  # the first root's order

    # Control: the rotated root first sets the model's order, and then the same images train
    # other label indices, so the weights must differ from the run above.
    trained(tmp_path / "rotated_first", rotated, coco)
    assert singleshot.load(tmp_path / "rotated_first" / "last.pt").class_names[1:] == ROTATED
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_run(tmp_path / "same" / "last.pt", tmp_path / "rotated_first" / "last.pt")


def class_channels_in(state, order, names):
    """``state`` with the class predictors' (anchor, class) channels put from ``order``'s class
    order into ``names``'; every other tensor as it is."""
    index = torch.tensor([0] + [order.index(name) + 1 for name in names])
    moved = {}
    for key, tensor in state.items():
        if key.startswith("head.conf."):
            tensor = tensor.reshape(-1, len(index), *tensor.shape[1:])[:, index].reshape(tensor.shape)
        moved[key] = tensor
    return moved


def test_fine_tuning_on_another_order_reorders_the_checkpoints_class_predictors(coco, tmp_path):
    trained(tmp_path / "start", coco, extra=["--iterations", "1"])
    start = tmp_path / "start" / "last.pt"
    rotated = recategorised(coco, tmp_path / "rotated", ROTATED)
    log_same = trained(tmp_path / "on_same", coco, extra=["--init-from", str(start)])
    log = trained(tmp_path / "on_rotated", rotated, extra=["--init-from", str(start)])
    assert "class predictors" not in log_same
    assert f"note: {start}: class predictors reordered by name to the training set's order" in log
    assert singleshot.load(tmp_path / "on_rotated" / "last.pt").class_names[1:] == ROTATED

    # The model follows the rotated set's order, so its class channels are the other run's,
    # moved. Sums over the classes come in another order, so the weights agree up to rounding
    # (and the hard negatives it may swap): measured against how far training moved them.
    begin = load_checkpoint(start)["state_dict"]
    same = load_checkpoint(tmp_path / "on_same" / "last.pt")["state_dict"]
    moved = class_channels_in(load_checkpoint(tmp_path / "on_rotated" / "last.pt")["state_dict"], ROTATED,
                              list(SYNTH_CLASSES))  # fmt: skip
    floats = [key for key, value in same.items() if value.is_floating_point()]
    assert all(torch.equal(same[key], moved[key]) for key in same.keys() - floats)

    def off(keys):  # distance between the runs over the distance trained, for these tensors
        apart = sum(float((moved[k] - same[k]).square().sum()) for k in keys)
        trained = sum(float((same[k] - begin[k]).square().sum()) for k in keys)
        assert trained > 0
        return (apart / trained) ** 0.5

    assert off(floats) < 1e-3
    # a wrong order leaves the class predictors as far apart as training moved them, or more
    assert max(off([key]) for key in floats if key.startswith("head.conf.")) < 1e-3

    renamed = recategorised(coco, tmp_path / "renamed", list(SYNTH_CLASSES), rename={"circle": "round"})
    log = trained(tmp_path / "on_renamed", renamed, extra=["--init-from", str(start)])
    note = f"note: {start}: class predictors copied by name for 5 of the training set's 6 classes; round"
    assert note in log


def test_class_map_relates_renamed_classes(coco, tmp_path):
    renamed = {SYNTH_CLASSES[0]: "round", SYNTH_CLASSES[2]: "tri"}
    other = recategorised(coco, tmp_path / "renamed", ROTATED, rename=renamed)
    class_map = tmp_path / "map.yaml"
    class_map.write_text("".join(f"{new}: {old}\n" for old, new in renamed.items()))
    trained(tmp_path / "same", coco, coco)
    trained(tmp_path / "mapped", coco, other, extra=["--class-map", str(class_map)])
    assert_same_run(tmp_path / "same" / "last.pt", tmp_path / "mapped" / "last.pt")

    unmapped = train(tmp_path / "unmapped", coco, other)
    assert unmapped.returncode != 0 and "Traceback" not in unmapped.stderr
    assert str(other) in unmapped.stderr and "round" in unmapped.stderr

    class_map.write_text("round: circle\nsquircle: square\n")
    wrong = train(tmp_path / "wrong", coco, other, extra=["--class-map", str(class_map)])
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "the class map names classes no training set has: squircle" in wrong.stderr
