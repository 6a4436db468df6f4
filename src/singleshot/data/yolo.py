"""The YOLO text format: one ``.txt`` of ``class cx cy w h`` (normalised) per image.

Layout (the one Ultralytics and most labelling tools export)::

    root/images/<split>/<name>.jpg      (sub-folders allowed)
    root/labels/<split>/<name>.txt      same relative path, .txt suffix
    root/classes.txt                    one class name per line, class 0 first
                                        (or root/data.yaml / dataset.yaml with "names")

Other layouts (Ultralytics ``data.yaml``, Roboflow, CVAT, Label Studio; see
`singleshot.data.layouts`) give the images explicitly (``images=``: folders, ``.txt`` lists
or files) and the class names (``classes=``); an image's label file then follows the
Ultralytics rule (`ultralytics_label_path`).

Each label line is ``class cx cy w h``: a 0-based class index and the box centre and size
as fractions of the image width (cx, w) and height (cy, h). An image without a label file,
or with an empty one, has no objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..imageio import IMAGE_SUFFIXES
from .common import DetectionDataset, Record, Transforms, make_record, read_class_names_without_background
from .validation import InvalidItem, Problems, check_image, progress_bar

__all__ = [
    "YOLODataset",
    "IMAGE_SUFFIXES",
    "read_yolo_classes",
    "parse_yolo_labels",
    "list_images",
    "ultralytics_label_path",
    "read_data_yaml",
    "DataYaml",
]

# Pixel coordinates computed from normalised text carry float noise (0.1 * 300 is not 30
# exactly); they are rounded to 1/10000 pixel, far below any annotation's precision.
_PIXEL_DECIMALS = 4


def read_yolo_classes(path: Path) -> list[str]:
    """Class names from a text file (one per line) or a YAML file with ``names``.

    ``names`` is a list, or a dict whose keys are the class indices 0..K-1; each name is
    a non-empty string or number, and no name appears twice.

    Raises:
        ValueError: unreadable file, no names, or names breaking these rules; names the file.
    """
    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_class_names_without_background(path)
    return yaml_class_names(load_yaml(path), path)


YAML_SPLITS = ("train", "val", "test")
MAX_CLASSES = 100_000  # an ``nc`` beyond this is a damaged file, not a class list to build


class DataYaml(NamedTuple):
    """An Ultralytics dataset yaml, resolved: ``root`` (the ``path``), the split sources."""

    file: Path
    root: Path
    sources: dict[str, list[Path]]
    names: list[str]
    roboflow: bool


def load_yaml(path: Path) -> dict:
    """A YAML file's top-level mapping (ValueError naming the file when it is not one)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as error:  # ValueError: non-UTF-8, huge ints
        raise ValueError(f"{path}: cannot read the dataset yaml ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with train/val/test and names")
    return data


def yaml_class_names(data: dict, path: Path) -> list[str]:
    """The classes of a dataset yaml: ``names`` as a list, or a dict whose keys are the class
    indices 0..K-1; each name a non-empty string or number, none twice. Without ``names``,
    ``nc`` gives ``class_0 ...`` as in Ultralytics."""
    names = data.get("names")
    if isinstance(names, dict):
        names = _indexed_names(names, path)
    nc = data.get("nc")
    if names is None and isinstance(nc, int) and not isinstance(nc, bool) and 0 < nc <= MAX_CLASSES:
        names = [f"class_{k}" for k in range(nc)]  # Ultralytics' names when only nc is given
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: no 'names' list or dict of classes")
    if isinstance(data.get("nc"), int) and data["nc"] != len(names):
        raise ValueError(f"{path}: nc is {data['nc']} but 'names' has {len(names)} classes")
    for k, name in enumerate(names):
        if not isinstance(name, (str, int, float)) or not str(name).strip() or name != name:
            raise ValueError(f"{path}: class {k} has no name (got {name!r})")
    names = [str(name).strip() for name in names]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: class names listed more than once: {repeated}")
    return names


def _indexed_names(names: dict, path: Path) -> list:
    """A ``{index: name}`` mapping as a list; the indices must be exactly 0..K-1."""
    try:
        by_index = {int(k): v for k, v in names.items() if not isinstance(k, (bool, float))}
    except ValueError:
        by_index = {}
    if len(by_index) != len(names) or sorted(by_index) != list(range(len(names))):
        raise ValueError(f"{path}: 'names' keys must be the class indices 0..K-1, got {list(names)}")
    return [by_index[k] for k in range(len(names))]


def _resolve(base: Path, entry: str) -> Path:
    """``base / entry``; an entry starting ``../`` that does not exist there is tried without it."""
    path = base / entry
    if not path.exists() and entry.startswith("../"):
        path = base / entry[3:]
    return path


def read_data_yaml(path: str | os.PathLike) -> DataYaml:
    """Read an Ultralytics dataset yaml (Roboflow's YOLO export is one)::

        path: ../datasets/coco8      # dataset root: absolute, or relative to the yaml's folder
        train: images/train          # relative to path: an image folder, a .txt list of
        val: [images/val, more/val]  #   image paths, or a list of those
        names: {0: person, 1: bicycle}   # or a list; without names, nc gives class_0 ...

    Without ``path`` the root is the yaml's folder (Ultralytics itself resolves a relative
    ``path`` against its ``datasets_dir`` setting; here it is the yaml's folder, so that a
    dataset folder reads the same anywhere). A split path is ``root / entry``; when
    that does not exist and the entry starts with ``../`` (Roboflow writes ``train:
    ../train/images`` next to ``train/``), ``root / entry[3:]`` is used, the fallback
    Ultralytics applies itself (``check_det_dataset``): so Roboflow's paths resolve inside
    the dataset folder. Labels follow `ultralytics_label_path`.
    """
    path = Path(path)
    data = load_yaml(path)
    root = path.parent
    if data.get("path"):
        root = Path(str(data["path"]))
        root = root if root.is_absolute() else path.parent / root
    sources, dotted = {}, False
    for split in YAML_SPLITS:
        entries = data.get(split)
        if not entries:
            continue
        entries = [entries] if isinstance(entries, str) else list(entries)
        dotted = dotted or any(str(e).startswith("../") for e in entries)
        sources[split] = [_resolve(root, str(entry)) for entry in entries]
    return DataYaml(path, root, sources, yaml_class_names(data, path), "roboflow" in data or dotted)


def _default_classes_file(root: Path) -> Path:
    for name in ("classes.txt", "data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{root}: no classes.txt (one class name per line) or data.yaml with 'names'")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_images(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The image files of one source or several, in order, each source's files sorted.

    A source is a folder (its images, sub-folders included), a ``.txt`` list (one image path
    per line; a relative path is relative to the list's folder) or an image file.

    Raises:
        ValueError: a source that does not exist (named).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    images: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            images += _image_files(source)
        elif source.is_file() and source.suffix.lower() == ".txt":
            lines = source.read_text(encoding="utf-8").splitlines()
            images += [source.parent / line.strip() for line in lines if line.strip()]
        elif source.is_file():
            images.append(source)
        else:
            raise ValueError(f"{source}: no such image folder, list or file")
    return images


def ultralytics_label_path(image_path: Path, root: Path | None = None) -> Path:
    """The label file of an image by the Ultralytics rule: the last ``images`` folder in the
    path becomes ``labels`` and the suffix ``.txt`` (``a/images/train/x.jpg`` ->
    ``a/labels/train/x.txt``); without an ``images`` folder the label lies beside the image
    (``obj_train_data/x.jpg`` -> ``obj_train_data/x.txt``, CVAT YOLO). Only the part of the
    path below ``root`` is searched, when the image is under ``root``, so that a folder named
    ``images`` above the dataset does not count.
    """
    image_path = Path(image_path)
    base, inner = Path(), image_path
    if root is not None and image_path.is_relative_to(root):
        base, inner = Path(root), image_path.relative_to(root)
    parts = list(inner.parts)
    folders = [k for k, part in enumerate(parts[:-1]) if part == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return (base / Path(*parts)).with_suffix(".txt")


def parse_yolo_labels(
    path: Path, num_classes: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one label file.

    Args:
        num_classes: number of object classes (indices 0..num_classes-1 are valid).
        height, width: the image's stored size, to turn fractions into pixels.

    Returns:
        (boxes float64 (n, 4) xyxy continuous pixels, labels int64 (n,) = class index + 1,
        "line k" of each box for messages). A missing file gives no objects.

    Raises:
        InvalidItem: naming the file and line: not five values, a non-integer or unknown
            class, a non-numeric or non-finite value, a zero or negative width or height.
    """
    if not path.exists():
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64), []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidItem(path, f"cannot read the labels ({error})") from None
    rows, labels, where_list = [], [], []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"line {number}"
        if len(parts) != 5:
            raise InvalidItem(path, f"{where}: expected 5 values 'class cx cy w h', got {len(parts)}")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise InvalidItem(path, f"{where}: not numbers: {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise InvalidItem(path, f"{where}: values are not finite: {line.strip()!r}")
        if not values[0].is_integer():
            raise InvalidItem(path, f"{where}: class index {parts[0]!r} is not an integer")
        index = int(values[0])
        if not 0 <= index < num_classes:
            raise InvalidItem(path, f"{where}: unknown class index {index} (there are {num_classes} classes)")
        cx, cy, w, h = values[1:]
        if w < 0 or h < 0:
            raise InvalidItem(path, f"{where}: inverted box (negative width or height): {line.strip()!r}")
        if w == 0 or h == 0:
            raise InvalidItem(path, f"{where}: empty box (zero width or height): {line.strip()!r}")
        rows.append(
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        )
        labels.append(index + 1)
        where_list.append(where)
    boxes = np.round(np.asarray(rows, dtype=np.float64).reshape(-1, 4), _PIXEL_DECIMALS) + 0.0  # no -0.0
    return boxes, np.asarray(labels, dtype=np.int64), where_list


class YOLODataset(DetectionDataset):
    """A YOLO-format split (see the module docstring for the layout).

    Boxes are xyxy continuous 0-based pixels: ``((cx - w/2) W, (cy - h/2) H, (cx + w/2) W,
    (cy + h/2) H)`` rounded to 1/10000 pixel; boxes reaching outside the image are clipped
    and counted in ``warnings``. Labels are the class index + 1; ``difficult`` is all
    False; ``image_id`` is the image's path relative to the split folder (with ``images=``:
    relative to ``root``, or the file stem outside it), without suffix. Images are read in
    stored pixel order (no EXIF rotation); their sizes are read from the file headers when
    the dataset is opened.

    Forms::

        YOLODataset(root, "train")                  # root/images/train, root/labels/train
        YOLODataset(root, "val", images=[root / "valid" / "images"], classes=["cat", "dog"])

    Args:
        root: the dataset folder holding ``images/`` and ``labels/``.
        split: sub-folder of images/ and labels/ ("train", "val", "test", ...); with
            ``images=``, only the split's name.
        classes_file: class names (text, one per line, or YAML with ``names``);
            None = root/classes.txt, else root/data.yaml or root/dataset.yaml.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid items (listed in ``skipped``) instead of raising.
        verify_images: "quick" or "full" (see `singleshot.data.validation.check_image`);
            "none" still reads each header, since the pixel size is needed.
        progress: progress bar while parsing; None = only for 1000 images or more.
        images: the split's images given explicitly: folders, ``.txt`` lists or image files
            (`list_images`); their labels follow `ultralytics_label_path`.
        classes: the class names, class 0 first (instead of ``classes_file``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes_file: str | os.PathLike | None = None,
        transforms: Transforms | None = None,
        skip_invalid: bool = False,
        verify_images: str = "quick",
        progress: bool | None = None,
        images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.classes_file: Path | None = None
        if classes is None:
            self.classes_file = (
                Path(classes_file) if classes_file is not None else _default_classes_file(self.root)
            )
            names = read_yolo_classes(self.classes_file)
        else:
            names = list(classes)
        self.explicit = images is not None
        if images is not None:
            image_paths = list_images(images)
            self.image_dir = self.label_dir = self.root
        else:
            self.image_dir, self.label_dir = self.root / "images" / split, self.root / "labels" / split
            if not self.image_dir.is_dir():
                raise ValueError(f"{self.image_dir}: split {split!r} not found (no such image folder)")
            image_paths = _image_files(self.image_dir)
        problems = Problems(skip_invalid)
        verify = "quick" if verify_images == "none" else verify_images
        records = []
        for image_path in progress_bar(
            image_paths, len(image_paths), f"reading {self.root.name}/{split}", progress
        ):
            try:
                records.append(self._load(image_path, len(names), problems, verify))
            except InvalidItem as error:
                problems.invalid(error)
        super().__init__(records, names, transforms, problems, source=self.image_dir)
        problems.emit_warnings(self.image_dir)

    def label_path(self, image_path: Path) -> Path:
        """The label file of an image: labels/<split>/<same relative path>.txt, or with
        ``images=`` the Ultralytics rule (`ultralytics_label_path`)."""
        if self.explicit:
            return ultralytics_label_path(image_path, self.root)
        return (self.label_dir / image_path.relative_to(self.image_dir)).with_suffix(".txt")

    def _image_id(self, image_path: Path) -> str:
        if image_path.is_relative_to(self.image_dir):
            return image_path.relative_to(self.image_dir).with_suffix("").as_posix()
        return image_path.stem

    def _load(self, image_path: Path, num_classes: int, problems: Problems, verify: str) -> Record:
        height, width = check_image(image_path, verify)  # type: ignore[misc]
        label_path = self.label_path(image_path)
        boxes, labels, where = parse_yolo_labels(label_path, num_classes, height, width)
        return make_record(
            label_path,
            image_path,
            self._image_id(image_path),
            height,
            width,
            boxes,
            labels,
            np.zeros(len(labels), dtype=bool),
            problems,
            names=where,
        )
