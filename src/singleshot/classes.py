"""Class identity is the name: relating a model's labels to a dataset's.

A label is an index into a list of names, and two files of one dataset may list the same
names in another order (labelling tools order categories by first appearance). Every path
that compares a model's labels with a dataset's (evaluation, training on separate train
and val files, several training roots) goes through `match_classes`:

- the same names in the same order: labels are equal;
- the same names in another order: labels are mapped by name, and ``note`` says so;
- other names: ValueError listing the missing and extra names, unless an explicit class
  map (dataset class name -> model class name, `read_class_map`) relates them;
- a model without names: labels are compared by index, and ``note`` says so.

Example::

    match = match_classes(model.class_names, dataset.classes)
    detections = match.detections_to_dataset(model.predict(images))
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassMatch", "match_classes", "read_class_map", "load_class_map", "map_for"]


@dataclass(frozen=True)
class ClassMatch:
    """How a model's labels relate to a dataset's (label 0 = background in both).

    Attributes:
        model_to_dataset: int64 (C_model,): the dataset label of each model label, -1 where
            the dataset has no such class (those detections are dropped).
        dataset_to_model: int64 (C_data,): the model label of each dataset label.
        note: one line saying how labels were related, or None when they are equal.
    """

    model_to_dataset: Tensor
    dataset_to_model: Tensor
    note: str | None = None

    @property
    def identity(self) -> bool:
        """True when model labels and dataset labels are the same numbers."""
        n = len(self.model_to_dataset)
        return n == len(self.dataset_to_model) and torch.equal(self.model_to_dataset, torch.arange(n))

    def detections_to_dataset(self, detections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Detections (per image ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) model labels)
        -> the same with dataset labels; detections of model classes the dataset lacks are dropped."""
        if self.identity:
            return [dict(d) for d in detections]
        out = []
        for det in detections:
            labels = torch.as_tensor(det["labels"], dtype=torch.int64)
            mapped = self.model_to_dataset.to(labels.device)[labels]
            keep = mapped >= 0
            out.append(
                {**det, "boxes": det["boxes"][keep], "scores": det["scores"][keep], "labels": mapped[keep]}
            )
        return out

    def labels_to_model(self, labels: Tensor) -> Tensor:
        """Dataset labels (any shape) -> model labels."""
        return self.dataset_to_model.to(labels.device)[labels.long()]


def _repeated(names: Sequence[str], whose: str) -> None:
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"the {whose} lists class names more than once: {', '.join(repeated)}")


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _by_index(model_count: int, dataset_names: Sequence[str]) -> ClassMatch:
    if model_count != len(dataset_names):
        raise ValueError(
            f"the model predicts {model_count - 1} classes (no names) but the dataset has "
            f"{len(dataset_names) - 1}: {', '.join(dataset_names[1:])}"
        )
    labels = torch.arange(model_count)
    note = "the model has no class names: its labels are taken as the dataset's, by index"
    return ClassMatch(labels, labels.clone(), note)


def _check_map(class_map: Mapping[str, str], model: Sequence[str], dataset: Sequence[str]) -> None:
    unknown = [name for name in class_map if name not in dataset[1:]]
    if unknown:
        raise ValueError(f"the class map names dataset classes the dataset lacks: {_listing(unknown)}")
    targets = [name for name in class_map.values() if name not in model[1:]]
    if targets:
        raise ValueError(f"the class map names model classes the model lacks: {_listing(targets)}")


def map_for(class_map: Mapping[str, str] | None, dataset_names: Sequence[str]) -> dict[str, str]:
    """The entries of ``class_map`` (dataset name -> model name) whose dataset name is one of
    ``dataset_names`` (index 0 = background): one map can serve several datasets."""
    own = set(dataset_names[1:])
    return {name: target for name, target in (class_map or {}).items() if name in own}


def match_classes(
    model_names: Sequence[str] | None,
    dataset_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    *,
    model_count: int | None = None,
) -> ClassMatch:
    """Relate a model's labels to a dataset's by class name.

    Args:
        model_names: the model's names, index 0 = "__background__"; None = unknown (then
            labels are compared by index, which needs ``model_count`` = len(dataset_names)).
        dataset_names: the dataset's names, index 0 = "__background__".
        class_map: {dataset class name: model class name} for classes named differently;
            unlisted dataset classes keep their name, unmapped model classes are ignored.
        model_count: classes the model predicts (with background), used when it has no names.

    Raises:
        ValueError: the sets of names differ (listing the dataset's classes missing from
            the model and the model's extra classes) and no ``class_map`` relates them; a
            class map naming unknown classes or mapping two dataset classes to one model class.
    """
    dataset_names = list(dataset_names)
    if model_names is None:
        if class_map:
            raise ValueError("a class map needs the model's class names, and this model has none")
        return _by_index(len(dataset_names) if model_count is None else model_count, dataset_names)
    model_names = list(model_names)
    _repeated(model_names, "model")
    _repeated(dataset_names, "dataset")
    class_map = dict(class_map or {})
    _check_map(class_map, model_names, dataset_names)
    wanted = [class_map.get(name, name) for name in dataset_names[1:]]
    index = {name: label for label, name in enumerate(model_names) if label > 0}
    missing = [name for name, target in zip(dataset_names[1:], wanted) if target not in index]
    extra = [name for name in model_names[1:] if name not in set(wanted)]
    if missing or (extra and not class_map):
        raise ValueError(
            f"the model's classes differ from the dataset's: in the dataset but not the model: "
            f"{_listing(missing)}; in the model but not the dataset: {_listing(extra)}. Relate them with "
            "a class map (--class-map FILE: dataset name -> model name) or fine-tune with --init-from"
        )
    shared = [name for name, count in Counter(wanted).items() if count > 1]
    if shared:
        raise ValueError(f"the class map maps several dataset classes to one model class: {_listing(shared)}")
    dataset_to_model = torch.tensor([0] + [index[name] for name in wanted], dtype=torch.int64)
    model_to_dataset = torch.full((len(model_names),), -1, dtype=torch.int64)
    model_to_dataset[dataset_to_model] = torch.arange(len(dataset_names))
    return ClassMatch(model_to_dataset, dataset_to_model, _note(model_names, dataset_names, class_map, extra))


def _note(model: list[str], dataset: list[str], class_map: dict[str, str], extra: list[str]) -> str | None:
    if model == dataset:
        return None
    if not class_map:
        count = len(model) - 1
        return f"classes matched by name: the dataset lists the model's {count} classes in another order"
    renamed = [f"{d} -> {m}" for d, m in class_map.items() if d != m]
    note = f"classes matched by name through the class map ({_listing(renamed)})"
    return note + (f"; model classes ignored: {', '.join(extra)}" if extra else "")


def read_class_map(path: str | os.PathLike) -> dict[str, str]:
    """A class map file: YAML or JSON {dataset class name: model class name}.

    In YAML one ``dataset name: model name`` per line (e.g. ``automobile: car``); JSON is
    the same as one object. Dataset classes not listed keep their own name.

    Raises:
        ValueError: missing or unreadable file, not a mapping of names to names; names the file.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the class map ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not a YAML or JSON class map ({error})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: a class map is a mapping 'dataset class name: model class name'")
    bad = [f"{k!r}: {v!r}" for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"{path}: class names must be strings: {', '.join(bad)}")
    return data


def load_class_map(value: Mapping[str, str] | str | os.PathLike | None) -> dict[str, str] | None:
    """A class map given as a mapping, a file path (`read_class_map`) or None."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    return read_class_map(value)
