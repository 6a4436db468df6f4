"""The YOLO text format: one ``.txt`` of ``class cx cy w h`` (normalised) per image.

Layout (the one Ultralytics and most labelling tools export)::

    root/images/<split>/<name>.jpg      (sub-folders allowed)
    root/labels/<split>/<name>.txt      same relative path, .txt suffix
    root/classes.txt                    one class name per line, class 0 first
                                        (or root/data.yaml / dataset.yaml with "names")

Each label line is ``class cx cy w h``: a 0-based class index and the box centre and size
as fractions of the image width (cx, w) and height (cy, h). An image without a label file,
or with an empty one, has no objects.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .common import DetectionDataset, Record, Transforms, make_record, read_class_names
from .validation import InvalidItem, Problems, check_image, progress_bar

__all__ = ["YOLODataset", "IMAGE_SUFFIXES", "read_yolo_classes", "parse_yolo_labels"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
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
        return read_class_names(path)
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as error:  # ValueError: non-UTF-8, huge ints
        raise ValueError(f"{path}: cannot read the class names ({type(error).__name__}: {error})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        names = _indexed_names(names, path)
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: no 'names' list of classes")
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


def _default_classes_file(root: Path) -> Path:
    for name in ("classes.txt", "data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{root}: no classes.txt (one class name per line) or data.yaml with 'names'")


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
    False; ``image_id`` is the image's path relative to the split folder, without suffix
    (the file stem for a flat folder). Images are read in stored pixel order (no EXIF
    rotation); their sizes are read from the file headers when the dataset is opened.

    Args:
        root: the dataset folder holding ``images/`` and ``labels/``.
        split: sub-folder of images/ and labels/ ("train", "val", "test", ...).
        classes_file: class names (text, one per line, or YAML with ``names``);
            None = root/classes.txt, else root/data.yaml or root/dataset.yaml.
        transforms: ``transforms(image, target) -> (image_or_x, target)``.
        skip_invalid: leave out invalid items (listed in ``skipped``) instead of raising.
        verify_images: "quick" or "full" (see `singleshot.data.validation.check_image`);
            "none" still reads each header, since the pixel size is needed.
        progress: progress bar while parsing; None = only for 1000 images or more.
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
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.classes_file = (
            Path(classes_file) if classes_file is not None else _default_classes_file(self.root)
        )
        names = read_yolo_classes(self.classes_file)
        image_dir = self.root / "images" / split
        if not image_dir.is_dir():
            raise ValueError(f"{image_dir}: split {split!r} not found (no such image folder)")
        self.image_dir, self.label_dir = image_dir, self.root / "labels" / split
        images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        problems = Problems(skip_invalid)
        verify = "quick" if verify_images == "none" else verify_images
        records = []
        for image_path in progress_bar(images, len(images), f"reading {self.root.name}/{split}", progress):
            try:
                records.append(self._load(image_path, len(names), problems, verify))
            except InvalidItem as error:
                problems.invalid(error)
        super().__init__(records, names, transforms, problems, source=image_dir)
        problems.emit_warnings(image_dir)

    def label_path(self, image_path: Path) -> Path:
        """The label file of an image: labels/<split>/<same relative path>.txt."""
        return (self.label_dir / image_path.relative_to(self.image_dir)).with_suffix(".txt")

    def _load(self, image_path: Path, num_classes: int, problems: Problems, verify: str) -> Record:
        height, width = check_image(image_path, verify)  # type: ignore[misc]
        label_path = self.label_path(image_path)
        boxes, labels, where = parse_yolo_labels(label_path, num_classes, height, width)
        image_id = image_path.relative_to(self.image_dir).with_suffix("").as_posix()
        return make_record(
            label_path,
            image_path,
            image_id,
            height,
            width,
            boxes,
            labels,
            np.zeros(len(labels), dtype=bool),
            problems,
            names=where,
        )
