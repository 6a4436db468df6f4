"""Feeding the training loop: seeded per-sample augmentation over the endless sampler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..classes import ClassMatch, map_for, match_classes
from ..data.collate import collate
from .sampler import EndlessSampler, sample_generator

__all__ = [
    "TrainSamples",
    "BadSampleError",
    "make_train_loader",
    "open_training_set",
    "open_run_datasets",
    "relabel",
    "Relabeled",
    "default_workers",
]

# transform(image uint8 (3,H,W), target, generator=...) -> (x float (3,S,S), target with boxes in [0,1])
Transform = Callable[..., tuple[Tensor, dict[str, Any]]]


class BadSampleError(ValueError):
    """A training image could not be read during the run (``on_bad_sample="stop"``)."""


class TrainSamples(Dataset):
    """Wraps a detection dataset for the training stream.

    ``use_difficult=False`` drops objects flagged difficult before augmentation (ssd.pytorch
    does; Caffe SSD trained on them, ``use_difficult_gt: true``).

    ``cache_images=True`` keeps each decoded image (and its target) in memory after its
    first read, in this process: for small datasets (the demo's 1200 images of 160 px take
    92 MB), it saves decoding each image again on every pass. `make_train_loader` fills
    it before starting loader workers (`fill_cache`), so that forked workers share one
    copy instead of each building its own.

    ``samples[(index, position)]`` reads image ``index`` and augments it with a generator
    seeded from (seed, position) (`singleshot.training.sampler.sample_generator`), giving
    ``(x float (3, S, S), {"boxes": (n, 4) xyxy fractions, "labels": (n,) int64,
    "image_id": str, "bad_samples": [(image, reason), ...]})``.

    An image that fails to read during the run (deleted, truncated or replaced on disk after
    the dataset was validated: the dataset raises a ValueError naming the file) either
    stops the run with a `BadSampleError` naming the file (``on_bad_sample="stop"``), or
    (``"skip"``) is replaced by the next image of the dataset, in dataset order (index + 1,
    + 2, ..., wrapping), that reads; the replacement is augmented with the generator of the
    original position, so a run with the same bad files is reproducible. The images passed
    over are listed in the target's ``"bad_samples"`` for the trainer to count and log.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Transform,
        seed: int,
        use_difficult: bool = True,
        cache_images: bool = False,
        on_bad_sample: str = "stop",
    ) -> None:
        self.dataset = dataset
        self.on_bad_sample = on_bad_sample
        self.transform = transform
        self.seed = seed
        self.use_difficult = use_difficult
        self.cache: dict[int, tuple[Tensor, dict[str, Any]]] | None = {} if cache_images else None

    def _read(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        if self.cache is None:
            return self.dataset[index]
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        image, target = self.cache[index]
        # copies: a transform may work in place
        return image.clone(), {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}

    def fill_cache(self) -> None:
        """Decode every image into the cache now (images that fail are left to the run)."""
        if self.cache is None:
            return
        for index in range(len(self.dataset)):
            if index not in self.cache:
                with contextlib.suppress(ValueError, OSError):
                    self.cache[index] = self.dataset[index]

    def _read_good(self, index: int, position: int) -> tuple[Tensor, dict[str, Any], list[tuple[str, str]]]:
        """Image ``index`` or (skipping) its replacement, and the (image, reason) of those passed over."""
        bad: list[tuple[str, str]] = []
        count = len(self.dataset)
        for step in range(count):
            candidate = (index + step) % count
            try:
                return (*self._read(candidate), bad)
            except (ValueError, OSError) as error:
                name = self._name(candidate)
                if self.on_bad_sample != "skip":
                    raise BadSampleError(
                        f"{error} (training image {name}, stream position {position}); the run stopped, "
                        "its last checkpoint is as it was: fix or remove the image and resume, or train "
                        "with --on-bad-sample skip"
                    ) from None
                bad.append((name, str(error)))
        raise BadSampleError(f"none of the {count} training images can be read; first: {bad[0][1]}")

    def _name(self, index: int) -> str:
        image_path = getattr(self.dataset, "image_path", None)
        try:
            return str(image_path(index)) if image_path is not None else f"#{index}"
        except (IndexError, AttributeError):
            return f"#{index}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        index, position = item
        image, target, bad = self._read_good(index, position)
        if not self.use_difficult and "difficult" in target:
            keep = ~target["difficult"].bool()
            target = {**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep],
                      "difficult": target["difficult"][keep]}  # fmt: skip
        x, target = self.transform(image, target, generator=sample_generator(self.seed, position))
        image_id = target.get("image_id", index)
        return x, {
            "boxes": target["boxes"].float().reshape(-1, 4),
            "labels": target["labels"].long().reshape(-1),
            "image_id": str(image_id),
            "bad_samples": bad,
        }


def make_train_loader(
    dataset: Any,
    transform: Transform,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_position: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    use_difficult: bool = True,
    cache_images: bool = False,
    on_bad_sample: str = "stop",
) -> DataLoader:
    """An endless DataLoader of this process's batches (``batch_size`` = per process).

    With ``cache_images`` and ``workers`` > 0 every image is decoded here first: workers
    started by fork (Linux) share that cache, where each would otherwise fill its own.
    """
    sampler = EndlessSampler(
        len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size, start_position=start_position
    )
    samples = TrainSamples(dataset, transform, seed, use_difficult, cache_images, on_bad_sample)
    if workers > 0:
        samples.fill_cache()
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


class Relabeled(Dataset):
    """A detection dataset whose labels follow other class names (same classes, related by name).

    ``ds[i]`` and ``ds.annotation(i)`` are the wrapped dataset's with ``labels`` mapped
    through ``match.dataset_to_model`` (an index tensor); ``classes`` are the new names.
    """

    def __init__(self, dataset: Any, match: ClassMatch, classes: list[str]) -> None:
        self.dataset, self.match, self.classes = dataset, match, list(classes)
        self.skipped = getattr(dataset, "skipped", [])
        self.warnings = getattr(dataset, "warnings", {})
        ids = getattr(dataset, "label_to_category_id", None)
        if ids is not None:  # {new label: the file's category id}
            self.label_to_category_id = {int(match.dataset_to_model[k]): v for k, v in ids.items()}

    def __len__(self) -> int:
        return len(self.dataset)

    def _relabel(self, target: dict[str, Any]) -> dict[str, Any]:
        return {**target, "labels": self.match.labels_to_model(target["labels"])}

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.dataset[index]
        return image, self._relabel(target)

    def annotation(self, index: int) -> dict[str, Any]:
        return self._relabel(self.dataset.annotation(index))

    def image_path(self, index: int) -> Path:
        return self.dataset.image_path(index)


def relabel(
    dataset: Any, classes: list[str], class_map: dict[str, str] | None = None
) -> tuple[Any, str | None]:
    """(``dataset`` with labels following ``classes``, by name; the note saying so or None).

    ``class_map`` {dataset name: name in ``classes``} entries for classes this dataset lacks
    are left out (one map serves several datasets). Raises ValueError as `match_classes`.
    """
    match = match_classes(classes, dataset.classes, map_for(class_map, dataset.classes))
    if list(dataset.classes) == list(classes):
        return dataset, None
    return Relabeled(dataset, match, classes), match.note


def open_training_set(
    roots: list[str], format: str | None, split: str, class_map: dict[str, str] | None = None
) -> tuple[Any, list[str]]:
    """(``split`` of each root, concatenated when there are several; notes on relabelled roots).

    The run's class names are the first root's (renamed by ``class_map``, {dataset name:
    model name}); every root's labels follow them by name (`relabel`).
    """
    from ..data import DetectionConcat, open_dataset
    from ..data.common import BACKGROUND

    class_map = class_map or {}
    datasets = [open_dataset(root, format=format, split=split) for root in roots]
    known = {name for dataset in datasets for name in dataset.classes}
    unknown = sorted(set(class_map) - known)
    if unknown:
        raise ValueError(f"the class map names classes no training set has: {', '.join(unknown)}")
    names = [BACKGROUND] + [class_map.get(name, name) for name in datasets[0].classes[1:]]
    parts, notes = [], []
    for root, dataset in zip(roots, datasets):
        try:
            part, note = relabel(dataset, names, class_map)
        except ValueError as error:
            raise ValueError(f"{root}: {error}") from None
        parts.append(part)
        notes += [f"{root}: {note}"] if note else []
    return (parts[0] if len(parts) == 1 else DetectionConcat(parts)), notes


def open_run_datasets(
    config: Any, train_dataset: Any, val_dataset: Any, class_map: dict[str, str] | None
) -> tuple[Any, Any, list[str]]:
    """(training set, validation set or None, notes) of a `TrainConfig`; given datasets are kept."""
    from ..data import open_coco, open_dataset

    roots = [config.data] if isinstance(config.data, str) else list(config.data or [])
    notes: list[str] = []
    if train_dataset is None and config.images is not None:
        train_dataset = open_coco(config.images, config.annotations)
    elif train_dataset is None:
        if not roots:
            raise ValueError("no training data: give config.data (a dataset folder) or a dataset")
        train_dataset, notes = open_training_set(roots, config.format, config.train_split, class_map)
    if val_dataset is None and config.val_split and config.val_images is not None:
        val_dataset = open_coco(config.val_images, config.val_annotations)
    elif val_dataset is None and config.val_split and (config.val_data or roots):
        root = config.val_data or roots[0]
        val_dataset = open_dataset(root, format=config.format, split=config.val_split)
    if len(train_dataset) == 0:
        raise ValueError(f"{config.data or 'training set'}: the training split has no images")
    return train_dataset, val_dataset, notes


def default_workers(device_type: str) -> int:
    """Loader processes when the config leaves it open: none on the CPU, else up to 8 per process.

    On a CPU the loader's work (a few ms per image) runs between steps in the training
    process itself: a worker process would compete with the compute threads for the same
    cores (measured slower for the demo on 2 cores). With GPUs, the cores of the node are
    shared among its training processes, one kept for each process's own thread.
    """
    if device_type == "cpu":
        return 0
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(min(8, (os.cpu_count() or 1) // local - 1), 0)
