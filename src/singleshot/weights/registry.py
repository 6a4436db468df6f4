"""Published weights singleshot can use by name: where each file comes from, how it is
verified, what it is for, and what it scored.

>>> entry = published("ssd300_vgg16_coco")
>>> entry.file_name, entry.sha256, str(entry.metric)
('ssd300_vgg16_coco-b556d3b4.pth', 'b556d3b4', '25.1 box AP, COCO val2017')

The entries are plain data; `singleshot.weights.download` fetches and verifies the files,
`singleshot.weights.published` turns them into ready checkpoints and backbone files.

Checksums. torchvision publishes no full hash: by its convention (``torch.hub``'s
``check_hash``) the hex digits after the last ``-`` of the file name are the start of the
file's SHA-256, and that prefix is what its entries record (32 bits: it catches a truncated
or wrong file, not a deliberate forgery). ssd.pytorch publishes no checksum at all: its
entries record ``sha256=None`` and are fetched only against a full SHA-256 the user
confirms, written ``NAME@sha256:<64 hex digits>`` (see `parse_name`).

Your own entries (e.g. a company's models on an internal server): a JSON file named by
``$SINGLESHOT_WEIGHTS_REGISTRY`` adds them (`singleshot.weights.registry_file`), each with
its full SHA-256. It may not redefine a built-in name.

Counts: ``params`` and ``mult_adds`` (billions of multiply-adds for one image) are
torchvision's published figures for its files, which singleshot's own count of the
converted preset reproduces exactly; for ssd.pytorch's, singleshot's count
(``torch.utils.flop_counter``, multiply-adds = FLOPs / 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from urllib.parse import urlsplit

__all__ = [
    "CLASS_LISTS",
    "KINDS",
    "SOURCES",
    "Metric",
    "PublishedWeights",
    "REGISTRY",
    "parse_name",
    "published",
    "published_names",
    "registry",
]

KINDS = ("detector", "backbone")
SOURCES = ("torchvision", "ssd.pytorch", "singleshot")
SHA256 = re.compile(r"[0-9a-f]{64}")


def _coco91() -> list[str]:
    from .names import coco_names_91

    return coco_names_91()


def _voc21() -> list[str]:
    from .names import VOC_CLASSES_WITH_BACKGROUND

    return list(VOC_CLASSES_WITH_BACKGROUND)


# class-list key -> (what it is, how to get the names, index 0 = background; None: a backbone's,
# or a singleshot checkpoint's own)
CLASS_LISTS: Mapping[str, tuple[str, Callable[[], list[str]] | None]] = MappingProxyType(
    {
        "coco91": ("COCO, torchvision's 91-id layout (weights.coco_names_91)", _coco91),
        "voc21": ("VOC, 20 classes + background (weights.VOC_CLASSES_WITH_BACKGROUND)", _voc21),
        "imagenet1k": ("ImageNet-1K (the classifier is not used)", None),
        "own": ("those the singleshot checkpoint records", None),
    }
)


@dataclass(frozen=True)
class Metric:
    """A published score: ``value`` of ``name`` on ``dataset``, as ``source`` states at ``url``.

    ``source`` names who published it and where (``project`` is its first word, for tables);
    "box AP" is COCO's AP@[.50:.95], "mAP (11-point)" the VOC2007 metric.
    """

    value: float
    name: str
    dataset: str
    source: str
    url: str

    def __str__(self) -> str:
        return f"{self.value:g} {self.name}, {self.dataset}"

    @property
    def project(self) -> str:
        """Who published the score: the first word of ``source``."""
        return self.source.split(maxsplit=1)[0]


@dataclass(frozen=True)
class PublishedWeights:
    """One published weight file.

    Attributes:
        name: what users type (``singleshot detect --model NAME``).
        kind: "detector" (a whole SSD) or "backbone" (ImageNet weights for ``--backbone-weights``).
        preset: the singleshot preset a detector converts to, or one a backbone initialises.
        source: the project and file layout: "torchvision", "ssd.pytorch" (converted by
            `singleshot.weights.convert_file`) or "singleshot" (already a checkpoint): `SOURCES`.
        url: where the project publishes the file; its last path segment is the file name.
        sha256: the lowercase hex digits of the file's SHA-256 that are known: all 64, the
            prefix of torchvision's naming convention, or None when nothing is published.
        checksum: where ``sha256`` comes from, in words.
        licence: the licence the source project states; ``licence_note`` says more.
        classes: a `CLASS_LISTS` key.
        metric: the published score, or None when none is published.
        params: parameters of the file's network (None: not stated).
        mult_adds: billions of multiply-adds for one image at ``counted_at`` (None: not stated).
        counted_at: the input size and network the counts refer to, and who counted.
    """

    name: str
    kind: str
    preset: str | None
    source: str
    url: str
    sha256: str | None
    checksum: str
    licence: str
    licence_note: str
    classes: str
    metric: Metric | None
    params: int | None
    mult_adds: float | None
    counted_at: str

    @property
    def file_name(self) -> str:
        """The origin's file name (kept in the cache and appended to a mirror's base URL)."""
        return PurePosixPath(urlsplit(self.url).path).name

    @property
    def hash_is_prefix(self) -> bool:
        """Whether ``sha256`` is only the start of the hash (torchvision's convention)."""
        return self.sha256 is not None and len(self.sha256) < 64

    def class_names(self) -> list[str] | None:
        """The detector's class names (index 0 = "__background__"); None for a backbone."""
        make = CLASS_LISTS[self.classes][1]
        return make() if make is not None else None


_TORCHVISION_CHECKSUM = (
    "the start of the SHA-256 only: torchvision's convention puts it in the file name "
    "(torch.hub checks it); no full hash is published"
)
_NO_CHECKSUM = (
    "none published by ssd.pytorch: fetched only against a SHA-256 you confirm (NAME@sha256:<64 hex digits>)"
)
_TORCHVISION_LICENCE = (
    "torchvision's code licence; torchvision states no separate licence for its weights and "
    "says the training data's terms may apply"
)
_TORCHVISION_COUNTS = "torchvision's published num_params and _ops; equal to singleshot's count of the preset"
_TV_DOCS = "https://pytorch.org/vision/stable/models/generated/torchvision.models."

_BUILT_IN = (
    PublishedWeights(
        name="ssd300_vgg16_coco",
        kind="detector",
        preset="ssd300_coco",
        source="torchvision",
        url="https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
        sha256="b556d3b4",
        checksum=_TORCHVISION_CHECKSUM,
        licence="BSD-3-Clause",
        licence_note=_TORCHVISION_LICENCE,
        classes="coco91",
        metric=Metric(
            25.1,
            "box AP",
            "COCO val2017",
            "torchvision SSD300_VGG16_Weights.COCO_V1",
            _TV_DOCS + "detection.ssd300_vgg16.html",
        ),
        params=35_641_826,
        mult_adds=34.858,
        counted_at=f"300x300, 91 classes; {_TORCHVISION_COUNTS}",
    ),
    PublishedWeights(
        name="ssdlite320_mobilenet_v3_large_coco",
        kind="detector",
        preset="ssdlite320_coco",
        source="torchvision",
        url="https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        sha256="a79551df",
        checksum=_TORCHVISION_CHECKSUM,
        licence="BSD-3-Clause",
        licence_note=_TORCHVISION_LICENCE,
        classes="coco91",
        metric=Metric(
            21.3,
            "box AP",
            "COCO val2017",
            "torchvision SSDLite320_MobileNet_V3_Large_Weights.COCO_V1",
            _TV_DOCS + "detection.ssdlite320_mobilenet_v3_large.html",
        ),
        params=3_440_060,
        mult_adds=0.583,
        counted_at=f"320x320, 91 classes; {_TORCHVISION_COUNTS}",
    ),
    PublishedWeights(
        name="ssd300_voc0712_ssdpytorch",
        kind="detector",
        preset="ssd300_voc",
        source="ssd.pytorch",
        url="https://s3.amazonaws.com/amdegroot-models/ssd300_mAP_77.43_v2.pth",
        sha256=None,
        checksum=_NO_CHECKSUM,
        licence="MIT",
        licence_note="ssd.pytorch's licence (its LICENSE file); trained on VOC2007+2012 trainval",
        classes="voc21",
        metric=Metric(
            77.43,
            "mAP (11-point)",
            "VOC2007 test",
            "ssd.pytorch README, Performance",
            "https://github.com/amdegroot/ssd.pytorch#performance",
        ),
        params=26_285_486,
        mult_adds=31.374,
        counted_at="300x300, 21 classes; counted by singleshot (torch.utils.flop_counter, FLOPs / 2)",
    ),
    PublishedWeights(
        name="vgg16_reducedfc",
        kind="backbone",
        preset="ssd300_voc",
        source="ssd.pytorch",
        url="https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
        sha256=None,
        checksum=_NO_CHECKSUM,
        licence="MIT",
        licence_note="ssd.pytorch's licence; VGG16 (Simonyan and Zisserman), fc6/fc7 reduced to conv6/conv7",
        classes="imagenet1k",
        metric=None,
        params=20_483_904,
        mult_adds=29.898,
        counted_at="300x300, conv1_1 ... conv7 (the file's layers); counted by singleshot",
    ),
    PublishedWeights(
        name="mobilenet_v3_large_imagenet",
        kind="backbone",
        preset="ssdlite320_coco",
        source="torchvision",
        url="https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
        sha256="8738ca79",
        checksum=_TORCHVISION_CHECKSUM,
        licence="BSD-3-Clause",
        licence_note=_TORCHVISION_LICENCE,
        classes="imagenet1k",
        metric=Metric(
            74.042,
            "top-1 accuracy",
            "ImageNet-1K val",
            "torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1",
            _TV_DOCS + "mobilenet_v3_large.html",
        ),
        params=5_483_032,
        mult_adds=0.217,
        counted_at="224x224, the whole classifier; torchvision's published num_params and _ops",
    ),
    PublishedWeights(
        name="vgg16_imagenet",
        kind="backbone",
        preset="ssd300_voc",
        source="torchvision",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256="397923af",
        checksum=_TORCHVISION_CHECKSUM,
        licence="BSD-3-Clause",
        licence_note=f"{_TORCHVISION_LICENCE}; reduced to SSD's base network when loaded",
        classes="imagenet1k",
        metric=Metric(
            71.592,
            "top-1 accuracy",
            "ImageNet-1K val",
            "torchvision VGG16_Weights.IMAGENET1K_V1",
            _TV_DOCS + "vgg16.html",
        ),
        params=138_357_544,
        mult_adds=15.47,
        counted_at="224x224, the whole classifier; torchvision's published num_params and _ops",
    ),
)

REGISTRY: Mapping[str, PublishedWeights] = MappingProxyType({entry.name: entry for entry in _BUILT_IN})


def registry() -> Mapping[str, PublishedWeights]:
    """The built-in entries, then those of ``$SINGLESHOT_WEIGHTS_REGISTRY`` (read on every call).

    Raises:
        ValueError: the file is unreadable or malformed, or redefines a name; the message names it.
    """
    path = os.environ.get("SINGLESHOT_WEIGHTS_REGISTRY")
    if not path:
        return REGISTRY
    from .registry_file import read_registry_file

    extra = read_registry_file(path)
    clashes = sorted(set(extra) & set(REGISTRY))
    if clashes:
        raise ValueError(f"{path}: redefines built-in published weights: {', '.join(clashes)}")
    return MappingProxyType({**REGISTRY, **extra})


def published_names(kind: str | None = None) -> list[str]:
    """Names of the known entries (of one ``kind`` when given), in registry order."""
    return [name for name, entry in registry().items() if kind is None or entry.kind == kind]


def published(name: str) -> PublishedWeights:
    """The entry called ``name``; ValueError listing the known names when there is none."""
    known = registry()
    entry = known.get(name)
    if entry is None:
        raise ValueError(f"no published weights named {name!r}; known: {', '.join(known)}")
    return entry


def parse_name(text: str) -> tuple[PublishedWeights, str | None]:
    """``NAME`` or ``NAME@sha256:<64 hex digits>`` -> (entry, the confirmed SHA-256 or None).

    A confirmed hash is how a file without a published checksum is accepted, and it must
    agree with what is published: torchvision's prefix, or a full hash.

    Raises:
        ValueError: unknown name, a malformed hash, or one that contradicts the published one.
    """
    name, at, digest = text.partition("@")
    entry = published(name)
    if not at:
        return entry, None
    algorithm, _, hexdigits = digest.partition(":")
    hexdigits = hexdigits.lower()
    if algorithm != "sha256" or not SHA256.fullmatch(hexdigits):
        raise ValueError(f"{text}: write a confirmed hash as {name}@sha256:<64 hex digits>")
    if entry.sha256 is not None and not hexdigits.startswith(entry.sha256):
        raise ValueError(
            f"{text}: the confirmed SHA-256 contradicts the published one ({entry.sha256}, {entry.checksum})"
        )
    return entry, hexdigits
