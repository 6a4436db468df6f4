"""The folder layouts singleshot reads, and which one a dataset folder is in.

Each `Layout` names a layout, the marker files that identify it (relative to the dataset
folder), its splits, and how a split opens with one of the three readers (`VOCDataset`,
`COCODataset`, `YOLODataset`). `detect_layout` tries them in the order of `LAYOUTS`; the
first whose markers are present wins. Layouts without splits have one split, ``"all"``.

What each layout is, and where it was checked (the tools' documentation or source):

- CVAT "PASCAL VOC 1.1" (docs.cvat.ai, format-voc): ``Annotations/<name>.xml``,
  ``JPEGImages/``, ``ImageSets/Main/<subset>.txt`` (subset ``default`` unless set) and
  ``labelmap.txt`` (``# label:color_rgb:parts:actions`` then ``name:r,g,b::`` lines,
  ``background`` first): the classes are the labelmap's names without ``background``.
- Pascal VOC / singleshot: ``Annotations/`` + ``ImageSets/Main/``; classes from
  ``classes.txt``, else the 20 VOC classes.
- Label Studio "Pascal VOC XML" (label-studio-converter ``convert_to_voc``):
  ``Annotations/<stem>.xml`` + ``images/``, no ImageSets and no class list; ``<filename>``
  is the image's stem. The classes are ``classes.txt`` if present, else every object name
  in the XML files, sorted.
- COCO / singleshot / CVAT "COCO 1.0" (CVAT's docs point to Datumaro's COCO format:
  ``annotations/instances_<subset>.json``, images in ``images/<subset>/``):
  ``annotations/instances_<split>.json`` with images in ``images/<split>/``, ``<split>/``
  (COCO's own) or, also accepted, one ``images/`` folder.
- Roboflow COCO: ``<split>/_annotations.coco.json`` with the images beside it (splits
  ``train``, ``valid``, ``test``); the root category Roboflow puts first (id 0,
  supercategory "none", named as every class's supercategory, no annotations; see
  roboflow-100-benchmark issue 45) is not a class (`grouping_category_ids`).
- Label Studio "COCO" (``convert_to_coco``): ``result.json`` whose ``file_name`` entries
  are ``images/<name>``, relative to the export folder, with ``images/``.
- Ultralytics ``data.yaml`` (or ``dataset.yaml``) with ``train``/``val``/``test`` keys:
  see `singleshot.data.yolo.read_data_yaml` (labels: Ultralytics' ``img2label_paths``
  rule). Roboflow's YOLO export is this form (``train: ../train/images``, ``names`` a
  list, ``nc``; a ``roboflow:`` section); it is named "Roboflow YOLO" when the yaml has
  that section or a ``../`` split path.
- CVAT "YOLO 1.1" (docs.cvat.ai, format-yolo): ``obj.names`` (one class per line),
  ``obj.data``, ``obj_<subset>_data/`` with each image and its ``.txt`` side by side,
  ``<subset>.txt`` lists. The images are read from the folder, not the lists.
- Label Studio "YOLO" (``convert_to_yolo``): ``classes.txt``, ``notes.json``, ``images/``
  and ``labels/`` without split sub-folders.
- YOLO / singleshot: ``images/<split>/``, ``labels/<split>/``, ``classes.txt``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .coco import COCODataset
from .common import DetectionDataset, read_class_names_without_background
from .voc import VOC_CLASSES, VOCDataset
from .yolo import YAML_SPLITS, YOLODataset, load_yaml, read_data_yaml

__all__ = ["Layout", "Detected", "LAYOUTS", "ALL_SPLIT", "detect_layout", "unknown_layout"]

ALL_SPLIT = "all"  # the one split of a layout without splits


@dataclass(frozen=True)
class Layout:
    """One folder layout.

    Attributes:
        name: shown to the user, e.g. "Roboflow COCO".
        format: the reader: "voc", "coco" or "yolo".
        markers: what detection looks for, relative to the folder, e.g.
            ``"<split>/_annotations.coco.json"``.
        find: ``find(root)`` -> the marker found (a relative path) or None.
        splits: ``splits(root)`` -> the split names, sorted.
        open: ``open(root, split, **options)`` -> the split's dataset.
    """

    name: str
    format: str
    markers: str
    find: Callable[[Path], str | None]
    splits: Callable[[Path], list[str]]
    open: Callable[..., DetectionDataset]


class Detected(NamedTuple):
    """A detected layout and the marker that identified it."""

    layout: Layout
    marker: str

    def describe(self) -> str:
        """E.g. ``"Roboflow COCO (train/_annotations.coco.json)"``."""
        return f"{self.layout.name} ({self.marker})"


def _all(*names: str) -> Callable[[Path], str | None]:
    """A finder that needs every named file or folder (a trailing / means a folder)."""

    def find(root: Path) -> str | None:
        for name in names:
            path = root / name
            if not (path.is_dir() if name.endswith("/") else path.is_file()):
                return None
        return names[0]

    return find


def _one_split(root: Path) -> list[str]:
    return [ALL_SPLIT]


def _check_all(split: str) -> None:
    if split != ALL_SPLIT:
        raise ValueError(f"this layout has one split, {ALL_SPLIT!r}, not {split!r}")


# -- VOC ------------------------------------------------------------------------------------
def _labelmap_names(path: Path) -> list[str]:
    """Class names of a CVAT/Datumaro ``labelmap.txt`` (``name:color:parts:actions`` lines)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    names = [line.split(":")[0].strip() for line in lines if line.strip() and not line.startswith("#")]
    return [name for name in names if name and name != "background"]


def _voc_classes(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        return read_class_names_without_background(root / "classes.txt")
    if (root / "labelmap.txt").is_file():
        return _labelmap_names(root / "labelmap.txt")
    return list(VOC_CLASSES)


def _voc_splits(root: Path) -> list[str]:
    classes = set(_voc_classes(root))
    splits = []
    for file in (root / "ImageSets" / "Main").glob("*.txt"):
        head, _, tail = file.stem.partition("_")
        if not (tail and head in classes):  # leave out the per-class <class>_<split>.txt lists
            splits.append(file.stem)
    return sorted(splits)


def _open_voc(root: Path, split: str, **options: Any) -> DetectionDataset:
    return VOCDataset(root, image_set=split, classes=_voc_classes(root), **options)


def _names_in_annotations(root: Path) -> list[str]:
    names: set[str] = set()
    for xml_path in (root / "Annotations").glob("*.xml"):
        try:
            names.update((n.text or "").strip() for n in ET.parse(xml_path).getroot().iter("name"))
        except ET.ParseError:
            continue  # reported by the reader
    return sorted(n for n in names if n)


def _open_label_studio_voc(root: Path, split: str, **options: Any) -> DetectionDataset:
    _check_all(split)
    has_list = (root / "classes.txt").is_file()
    if has_list:
        classes = read_class_names_without_background(root / "classes.txt")
    else:
        classes = _names_in_annotations(root)
    return VOCDataset(root, image_set=None, classes=classes, image_dir="images", **options)


def _find_label_studio_voc(root: Path) -> str | None:
    if (root / "ImageSets").exists():
        return None
    return _all("Annotations/", "images/")(root)


# -- COCO -----------------------------------------------------------------------------------
def _find_coco(root: Path) -> str | None:
    files = sorted((root / "annotations").glob("instances_*.json"))
    return files[0].relative_to(root).as_posix() if files else None


def _coco_splits(root: Path) -> list[str]:
    return sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json"))


def coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a split in the COCO layout: the annotations are in
    ``annotations/instances_<split>.json``; the images in ``images/<split>/`` (singleshot,
    Datumaro/CVAT), ``<split>/`` (COCO's own, e.g. train2017/) or ``images/`` (older CVAT)."""
    annotation = root / "annotations" / f"instances_{split}.json"
    for image_dir in (root / "images" / split, root / split, root / "images"):
        if image_dir.is_dir():
            return image_dir, annotation
    return root / "images" / split, annotation


def _open_coco(root: Path, split: str, **options: Any) -> DetectionDataset:
    return COCODataset(*coco_paths(root, split), **options)


ROBOFLOW_COCO_FILE = "_annotations.coco.json"


def _roboflow_coco_splits(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"*/{ROBOFLOW_COCO_FILE}"))


def _find_roboflow_coco(root: Path) -> str | None:
    splits = _roboflow_coco_splits(root)
    return f"{splits[0]}/{ROBOFLOW_COCO_FILE}" if splits else None


def _open_roboflow_coco(root: Path, split: str, **options: Any) -> DetectionDataset:
    folder = root / split
    return COCODataset(folder, folder / ROBOFLOW_COCO_FILE, drop_grouping_categories=True, **options)


def _open_label_studio_coco(root: Path, split: str, **options: Any) -> DetectionDataset:
    _check_all(split)
    return COCODataset(root, root / "result.json", **options)


# -- YOLO -----------------------------------------------------------------------------------
def _data_yaml(root: Path) -> Path | None:
    """The folder's ``data.yaml`` or ``dataset.yaml`` when it names splits (or cannot be read)."""
    for name in ("data.yaml", "dataset.yaml"):
        path = root / name
        if path.is_file():
            try:
                data = load_yaml(path)
            except ValueError:
                return path  # reported when the splits are read
            if any(data.get(split) for split in YAML_SPLITS):
                return path
    return None


def _find_yaml(roboflow: bool) -> Callable[[Path], str | None]:
    def find(root: Path) -> str | None:
        path = _data_yaml(root)
        if path is None:
            return None
        try:
            is_roboflow = read_data_yaml(path).roboflow
        except ValueError:
            is_roboflow = False
        return path.name if is_roboflow == roboflow else None

    return find


def _yaml_splits(root: Path) -> list[str]:
    path = _data_yaml(root)
    return sorted(read_data_yaml(path).sources) if path else []


def _open_yaml(root: Path, split: str, **options: Any) -> DetectionDataset:
    spec = read_data_yaml(_data_yaml(root) or root / "data.yaml")
    return YOLODataset(spec.root, split, images=spec.sources[split], classes=spec.names, **options)


def _cvat_yolo_splits(root: Path) -> list[str]:
    return sorted(p.name[4:-5] for p in root.glob("obj_*_data") if p.is_dir())


def _find_cvat_yolo(root: Path) -> str | None:
    return "obj.names" if (root / "obj.names").is_file() and _cvat_yolo_splits(root) else None


def _open_cvat_yolo(root: Path, split: str, **options: Any) -> DetectionDataset:
    images = root / f"obj_{split}_data"
    return YOLODataset(root, split, classes_file=root / "obj.names", images=images, **options)


def _open_label_studio_yolo(root: Path, split: str, **options: Any) -> DetectionDataset:
    _check_all(split)
    return YOLODataset(root, split, classes_file=root / "classes.txt", images=root / "images", **options)


def _yolo_splits(root: Path) -> list[str]:
    images = root / "images"
    return sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []


def _open_yolo(root: Path, split: str, **options: Any) -> DetectionDataset:
    return YOLODataset(root, split=split, **options)


# -- the table --------------------------------------------------------------------------------
LAYOUTS: tuple[Layout, ...] = (
    Layout("CVAT Pascal VOC", "voc", "labelmap.txt + Annotations/ + ImageSets/Main/",
           _all("labelmap.txt", "Annotations/", "ImageSets/Main/"), _voc_splits, _open_voc),
    Layout("Pascal VOC", "voc", "Annotations/ + ImageSets/Main/",
           _all("ImageSets/Main/", "Annotations/"), _voc_splits, _open_voc),
    Layout("Label Studio VOC", "voc", "Annotations/ + images/ (no ImageSets/)",
           _find_label_studio_voc, _one_split, _open_label_studio_voc),
    Layout("COCO", "coco", "annotations/instances_<split>.json",
           _find_coco, _coco_splits, _open_coco),
    Layout("Roboflow COCO", "coco", f"<split>/{ROBOFLOW_COCO_FILE}",
           _find_roboflow_coco, _roboflow_coco_splits, _open_roboflow_coco),
    Layout("Label Studio COCO", "coco", "result.json + images/",
           _all("result.json", "images/"), _one_split, _open_label_studio_coco),
    Layout("Roboflow YOLO", "yolo", "data.yaml with ../<split>/images paths or a roboflow: section",
           _find_yaml(roboflow=True), _yaml_splits, _open_yaml),
    Layout("Ultralytics YOLO", "yolo", "data.yaml or dataset.yaml with train/val/test",
           _find_yaml(roboflow=False), _yaml_splits, _open_yaml),
    Layout("CVAT YOLO", "yolo", "obj.names + obj_<subset>_data/",
           _find_cvat_yolo, _cvat_yolo_splits, _open_cvat_yolo),
    Layout("Label Studio YOLO", "yolo", "notes.json + classes.txt + images/ + labels/",
           _all("notes.json", "classes.txt", "images/", "labels/"), _one_split, _open_label_studio_yolo),
    Layout("YOLO", "yolo", "images/<split>/ + labels/<split>/",
           _all("images/", "labels/"), _yolo_splits, _open_yolo),
)  # fmt: skip

# the layout a format stands for when it is given but no layout of it is found (singleshot's own)
DEFAULT_LAYOUTS = {"voc": LAYOUTS[1], "coco": LAYOUTS[3], "yolo": LAYOUTS[-1]}


def unknown_layout(path: Path, format: str | None = None) -> ValueError:
    """The error for a folder in no known layout: each layout's markers, relative to it."""
    looked = [f"  {lay.name}: {lay.markers}" for lay in LAYOUTS if format in (None, lay.format)]
    kind = f"{format} " if format else ""
    return ValueError(
        f"{path}: unknown {kind}dataset layout; looked for (relative to this folder):\n" + "\n".join(looked)
    )


def detect_layout(path: str | os.PathLike, format: str | None = None) -> Detected:
    """The first layout of `LAYOUTS` (of ``format``, if given) whose markers ``path`` has.

    Raises:
        ValueError: not a folder, or no layout matches (`unknown_layout`).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    for layout in LAYOUTS:
        if format in (None, layout.format):
            marker = layout.find(root)
            if marker is not None:
                return Detected(layout, marker)
    raise unknown_layout(root, format)
