"""What `SSD.predict` returns: one image's detections, a dict that also knows its image.

>>> det = model.predict("street.jpg")[0]
>>> det["boxes"], det["scores"], det["labels"]      # as always: a dict of tensors
>>> det.label_names                                  # ["person", "car", ...]
>>> det.save("street_boxes.jpg")                     # the picture with the boxes drawn
>>> det.to_json()                                    # COCO results, the dataset's category ids
>>> det.to_pandas()                                  # one row per detection (needs pandas)

`Detections` is a ``dict`` subclass, so every use of the plain dicts of earlier versions
(indexing, iteration over the keys, ``dict(det)``, comparison with a dict) is unchanged;
what it adds lives in attributes, never in keys.
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    import pandas

__all__ = ["Detections", "attach_sources"]

_PANDAS_MISSING = "Detections.to_pandas needs pandas: pip install pandas"


class Detections(dict[str, Tensor]):
    """One image's detections: ``boxes`` float (N, 4) xyxy in the image's pixels, ``scores``
    (N,) sorted descending, ``labels`` int64 (N,) in 1..C-1 (0 is background).

    Args:
        boxes, scores, labels: the three tensors (kept as given: device and dtype unchanged).
        image_size: (height, width) of the image the boxes refer to, in pixels.
        image: the image, uint8 (3, H, W) RGB, when it was given in memory.
        path: the file the image was read from, when it was read from one.
        names: the model's class names, index = label (index 0 = background); None = unknown.
        category_ids: the model's dataset category id of each label (``model.category_ids``,
            index = label); None = unknown.

    Attributes (besides the args): ``image`` reads the file again when only a path is kept,
    so a list of results over many files does not hold every picture in memory.

    Saved with ``torch.save`` or pickle, a result is written as its dict alone (an
    ``OrderedDict`` when read back), so such files still load with ``torch.load(...,
    weights_only=True)``; copies (``copy.copy``, ``copy.deepcopy``) keep everything.
    """

    def __init__(
        self,
        boxes: Tensor,
        scores: Tensor,
        labels: Tensor,
        *,
        image_size: tuple[int, int],
        image: Tensor | None = None,
        path: str | os.PathLike | None = None,
        names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__(boxes=boxes, scores=scores, labels=labels)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._image = image
        self.path = None if path is None else Path(path)
        self.names = None if names is None else list(names)
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]

    def __reduce__(self) -> tuple[Any, ...]:
        # as an OrderedDict: one of the types torch.load(weights_only=True) rebuilds
        return collections.OrderedDict, (), None, None, iter(self.items())

    def __copy__(self) -> Detections:
        return self._with(self["boxes"], self["scores"], self["labels"], self._image)

    def __deepcopy__(self, memo: dict[int, Any]) -> Detections:
        boxes, scores, labels = (copy.deepcopy(self[key], memo) for key in ("boxes", "scores", "labels"))
        return self._with(boxes, scores, labels, copy.deepcopy(self._image, memo))

    def _with(self, boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor | None) -> Detections:
        return Detections(boxes, scores, labels, image_size=self.image_size, image=image, path=self.path,
                          names=self.names, category_ids=self.category_ids)  # fmt: skip

    @property
    def image(self) -> Tensor:
        """The image, uint8 (3, H, W) RGB: the one given, else read from ``path``.

        Raises:
            ValueError: neither an image nor a path is known.
        """
        if self._image is not None:
            return self._image
        if self.path is None:
            raise ValueError("these detections keep neither their image nor its file")
        from .imageio import read_image

        return read_image(self.path)

    @property
    def label_names(self) -> list[str]:
        """The class name of each detection ("class <label>" where the model has no name for it)."""
        from .visualize import label_name

        return [label_name(int(label), self.names) for label in self["labels"].tolist()]

    def plot(self, score_threshold: float = 0.5, width: int = 2) -> Tensor:
        """The image with the detections scoring at least ``score_threshold`` drawn (boxes,
        class names and scores; see `singleshot.visualize.draw_detections`).

        Returns:
            A new uint8 (3, H, W) RGB image on the CPU.
        """
        from .visualize import draw_detections

        return draw_detections(self.image, self, self.names, score_threshold=score_threshold, width=width)

    def save(self, path: str | os.PathLike, score_threshold: float = 0.5, quality: int = 90) -> Path:
        """Write `plot`'s picture; the format follows the suffix (.jpg, .png, ...). Returns the path."""
        from .visualize import save_image

        return save_image(self.plot(score_threshold), path, quality=quality)

    def to_json(
        self,
        image_id: int | str | None = None,
        label_to_category_id: Mapping[int, int] | None = None,
        decimals: int | None = 3,
    ) -> list[dict[str, Any]]:
        """The detections in the COCO results format, ready for ``json.dumps``.

        Args:
            image_id: the image's id; None = from the file: its stem as a number when it is
                one (COCO's ``000000000139.jpg`` -> 139), else its name.
            label_to_category_id: {label: category id}; None = found from the class names
                (`singleshot.categories.label_to_category_map`: the training set's ids, COCO's
                ids for COCO's classes, else the labels).
            decimals: round boxes to this many decimals, scores to this many + 2; None = exact.

        Returns:
            [{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}], by score.

        Raises:
            ValueError: no ``image_id`` and no file to take one from.
        """
        from .categories import coco_results, label_to_category_map

        if image_id is None:
            image_id = self._file_image_id()
        if label_to_category_id is None:
            label_to_category_id = label_to_category_map(self.names, self.category_ids)
        return coco_results(self, image_id, label_to_category_id, decimals=decimals)

    def _file_image_id(self) -> int | str:
        if self.path is None:
            raise ValueError("to_json needs an image_id: these detections were not read from a file")
        stem = self.path.stem
        return int(stem) if stem.isdigit() else self.path.name

    def to_pandas(self) -> pandas.DataFrame:
        """One row per detection: x1, y1, x2, y2 (pixels), score, label, name.

        Raises:
            ImportError: pandas is not installed.
        """
        try:
            import pandas
        except ImportError:
            raise ImportError(_PANDAS_MISSING) from None
        boxes = self["boxes"].detach().cpu().double().reshape(-1, 4).numpy()
        return pandas.DataFrame(
            {
                "x1": boxes[:, 0],
                "y1": boxes[:, 1],
                "x2": boxes[:, 2],
                "y2": boxes[:, 3],
                "score": self["scores"].detach().cpu().double().numpy(),
                "label": self["labels"].detach().cpu().long().numpy(),
                "name": self.label_names,
            }
        )


def attach_sources(
    detections: Sequence[dict[str, Tensor]],
    inputs: Sequence[Any],
    images: Sequence[Tensor],
    model: Any,
) -> list[Detections]:
    """Wrap a model's raw per-image dicts as `Detections` that know their source.

    Args:
        detections: one {"boxes", "scores", "labels"} dict per image.
        inputs: what the caller passed for each image (a path is kept as ``path``; the
            pixels of an in-memory image as ``image``).
        images: each image as the model saw it before resizing, uint8 (3, H, W).
        model: anything with ``class_names`` and (optionally) ``category_ids``.
    """
    names = getattr(model, "class_names", None)
    category_ids = getattr(model, "category_ids", None)
    wrapped = []
    for det, given, image in zip(detections, inputs, images):
        from_file = isinstance(given, (str, os.PathLike))
        wrapped.append(
            Detections(
                det["boxes"],
                det["scores"],
                det["labels"],
                image_size=(int(image.shape[-2]), int(image.shape[-1])),
                image=None if from_file else image,
                path=given if from_file else None,
                names=names,
                category_ids=category_ids,
            )
        )
    return wrapped
