"""The SSD detector: base network + extra layers + multibox heads + default boxes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..priors import PriorConfig, generate_priors
from ..transforms import VGG_MEAN
from .heads import MultiBoxHead
from .spec import MODEL_DEFAULT as _MODEL_DEFAULT
from .spec import UNIT_STD, PostprocessConfig

if TYPE_CHECKING:
    from ..optimize import InferenceOptimizations
    from ..results import Detections

__all__ = ["SSD", "source_channels"]

_INFERENCE_ONLY = (
    "this model is an inference-only copy made by optimize_for_inference ({what}); {action} the "
    "model it was made from"
)


def _being_exported() -> bool:
    """Whether a forward runs inside TorchScript tracing, ONNX export or ``torch.export``."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _out_channels(module: nn.Module) -> Any:
    """A part's declared ``out_channels`` (an int for a block, a sequence for a backbone)."""
    return module.out_channels


def _blocks(extras: nn.Module) -> Iterable[nn.Module]:
    """The extra blocks, in order (the extras part is an iterable module such as ModuleList)."""
    return cast(Iterable[nn.Module], extras)


def source_channels(backbone: nn.Module, extras: nn.Module, prior_config: PriorConfig) -> list[int]:
    """Channels of each source the heads read; ValueError unless there is one per prior level."""
    channels = [int(c) for c in _out_channels(backbone)] + [
        int(_out_channels(block)) for block in _blocks(extras)
    ]
    if len(channels) != len(prior_config.feature_maps):
        raise ValueError(
            f"the network has {len(channels)} sources but the prior config "
            f"{len(prior_config.feature_maps)} levels"
        )
    return channels


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Built from explicit parts (use `singleshot.build_model` for the presets, or
    `singleshot.models.build_ssd` for an `SSDSpec`); the modules are used as given
    (no re-initialisation: see `reset_parameters`).

    Args:
        backbone: module mapping x (B, 3, S, S) to a list of sources, with an
            ``out_channels`` tuple giving their channel counts.
        extras: blocks applied one after the other to the last source; each output
            (with an ``out_channels`` attribute) is one more source.
        num_classes: number of classes including background (index 0).
        prior_config: default-box layout; one level per source.
        image_mean: RGB mean on the 0-255 scale, subtracted from inputs by `predict`.
        preset: name of the preset this model was built from, if any (saved in checkpoints).
        class_names: optional names, index 0 = "__background__".
        head: module mapping the sources to (loc, conf); None = a `MultiBoxHead`.
        image_std: RGB divisor on the 0-255 scale, applied after the mean (1.0 = none).
        postprocess: `predict`'s default settings (None = `PostprocessConfig()`).

    A model whose parts describe themselves (see `singleshot.models.spec`) can be saved
    with `singleshot.checkpoint.save_checkpoint`.

    Attributes:
        priors: (P, 4) float32 cxcywh default boxes as fractions of the image (a buffer
            that moves with the model but is not saved: it is derived from ``prior_config``;
            it stays float32 when the model is cast to another dtype).
        optimizations: None, or for an inference-only copy made by `optimize_for_inference`,
            what was done to it (`singleshot.optimize.InferenceOptimizations`).

    forward: x float (B, 3, S, S), (RGB 0-255 - ``image_mean``) / ``image_std`` -> ``loc`` (B, P, 4)
    encoded offsets and ``conf`` (B, P, num_classes) logits, in train and eval mode alike.

    ``forward`` hands the convolutions a channels-last copy of ``x`` (set
    ``channels_last = False`` to turn that off): oneDNN's convolutions are faster in
    that layout (1.3x for SSD300 inference on a 2-core AVX-512 CPU), and the heads'
    outputs then flatten to (B, P, 4) without a copy.
    """

    priors: Tensor

    def __init__(
        self,
        *,
        backbone: nn.Module,
        extras: nn.Module,
        num_classes: int,
        prior_config: PriorConfig,
        image_mean: Sequence[float] = VGG_MEAN,
        preset: str | None = None,
        class_names: Sequence[str] | None = None,
        head: nn.Module | None = None,
        image_std: Sequence[float] = UNIT_STD,
        postprocess: PostprocessConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.backbone = backbone
        self.extras = extras
        channels = source_channels(backbone, extras, prior_config)
        if head is None:
            head = MultiBoxHead(channels, prior_config.boxes_per_location, num_classes)
        elif getattr(head, "num_classes", num_classes) != num_classes:
            raise ValueError(f"the head predicts {head.num_classes} classes, not {num_classes}")
        self.head = head
        self.num_classes = num_classes
        self.prior_config = prior_config
        self.image_size = prior_config.image_size
        red, green, blue = (float(m) for m in image_mean)
        self.image_mean = (red, green, blue)
        if len(image_std) != 3 or not all(float(v) > 0 for v in image_std):
            raise ValueError(f"image_std must be three positive numbers, got {tuple(image_std)}")
        red, green, blue = (float(v) for v in image_std)
        self.image_std = (red, green, blue)
        self.postprocess = postprocess if postprocess is not None else PostprocessConfig()
        self.preset = preset
        self.class_names = list(class_names) if class_names is not None else None
        # The training set's own id of each label (COCO category ids), when it had them.
        self.category_ids: list[int] | None = None
        self.channels_last = True
        # Set on the copies `optimize_for_inference` makes, which refuse training and export.
        self.optimizations: InferenceOptimizations | None = None
        self.register_buffer("priors", generate_priors(prior_config), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SSD:
        # The priors stay float32 under .half()/.to(dtype): rounded to float16 they would
        # move by up to 2.4e-4 of the image. Device moves apply as usual.
        priors = self.priors
        super()._apply(fn, recurse)
        if self.priors.dtype != priors.dtype:
            self.priors = priors.to(self.priors.device)
        return self

    def reset_parameters(self) -> None:
        """Initialise each part by its own ``reset_parameters`` (backbone, extras, head, in that
        order; a part without one is left as it is)."""
        for part in (self.backbone, self.extras, self.head):
            reset = getattr(part, "reset_parameters", None)
            if callable(reset):
                reset()

    def sources(self, x: Tensor) -> list[Tensor]:
        """The feature maps the heads read: (B, C_k, H_k, W_k) for each level k."""
        features = list(self.backbone(x))
        for block in _blocks(self.extras):
            features.append(block(features[-1]))
        return features

    def train(self, mode: bool = True) -> SSD:
        """As ``nn.Module.train``; an inference-only copy (`optimize_for_inference`) refuses
        ``mode=True`` with a RuntimeError (``eval()`` is fine)."""
        if mode and self.optimizations is not None:
            raise RuntimeError(_INFERENCE_ONLY.format(what=self.optimizations.describe(), action="train"))
        return super().train(mode)

    def optimize_for_inference(
        self,
        *,
        fuse: bool | None = None,
        winograd: bool | None = None,
        channels_last: bool | None = None,
        batch_size: int = 8,
        dtype: torch.dtype | None = None,
    ) -> SSD:
        """An inference-only copy of this model, faster on its device, with the same detections
        to float32 rounding; this model is left as it was (train, save and export it, not the copy).

        On a float32 CPU model: BatchNorm folded and squeeze-excitation convolutions as matrix
        products (``fuse``), VGG16's 3x3 convolutions with 64+ channels and the head's wide
        predictors by Winograd's F(4x4, 3x3) (``winograd``; without a C compiler, direct
        convolutions and a warning), the memory format a timed trial at ``batch_size`` finds
        faster (``channels_last``; cached per machine), and each Winograd convolution's fastest
        tile schedule at ``batch_size`` (timed once per machine; the same result whichever). On
        other devices and dtypes only the memory format is chosen unless ``fuse=True``. The
        copy's ``optimizations`` says what was done. See
        `singleshot.optimize.optimize_for_inference` for the arguments and each conversion's
        exactness.
        """
        from ..optimize import optimize_for_inference

        return optimize_for_inference(
            self,
            fuse=fuse,
            winograd=winograd,
            channels_last=channels_last,
            batch_size=batch_size,
            dtype=dtype,
        )

    def refuse_export(self) -> None:
        """Raise RuntimeError if this is an inference-only copy (`optimize_for_inference`): its
        converted layers have no export; the model it was made from exports."""
        if self.optimizations is not None:
            raise RuntimeError(_INFERENCE_ONLY.format(what=self.optimizations.describe(), action="export"))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if _being_exported():
            self.refuse_export()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.sources(x))

    def predict(
        self,
        images: Any,
        score_threshold: float = _MODEL_DEFAULT,
        nms_threshold: float = _MODEL_DEFAULT,
        pre_nms_top_k: int = _MODEL_DEFAULT,
        max_detections: int | None = _MODEL_DEFAULT,
    ) -> list[Detections]:
        """Detect objects in images of any size.

        Args:
            images: one image or a list: uint8 tensors (3, H, W) RGB, PIL images or file paths.
            score_threshold, nms_threshold, pre_nms_top_k, max_detections: as in
                `singleshot.postprocess.detect` (max_detections None = no cap); left out, the
                model's ``postprocess`` setting applies (0.01, 0.45, 200, 200 for the presets).
                Boxes are clipped before NMS when ``postprocess.clip`` is set.

        Returns:
            One `singleshot.results.Detections` per image, a dict: ``boxes`` float (N, 4)
            xyxy in the original image's pixels (clipped to it), ``scores`` (N,), ``labels``
            int64 (N,) in 1..C-1, sorted by score, descending; it also knows its image (or
            file), the class names, and draws (``plot``, ``save``) and converts itself
            (``to_json``, ``to_pandas``).
        """
        from ..inference import predict

        return predict(
            self,
            images,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
            pre_nms_top_k=pre_nms_top_k,
            max_detections=max_detections,
        )

    def extra_repr(self) -> str:
        return f"preset={self.preset}, num_classes={self.num_classes}, priors={self.priors.shape[0]}"
