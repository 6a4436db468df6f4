"""Building the model a run starts from: fresh, on ImageNet backbone weights, or from a detector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, with_recorded_parts
from ..classes import ClassMatch, map_for, match_classes
from ..models.build import build_ssd
from ..models.spec import Part, SSDSpec
from ..models.ssd import SSD
from ..presets import preset_spec
from ..priors import PriorConfig
from .config import TrainConfig
from .data import Transform, default_workers, relabel

__all__ = [
    "build_training_model",
    "init_from_detector",
    "init_from_note",
    "class_logit_tensors",
    "freeze_batch_norm",
    "resolve_amp",
    "default_transform",
    "default_evaluator",
    "relate_classes",
    "dataset_category_ids",
    "Evaluator",
]

Evaluator = Callable[..., dict[str, Any]]


def build_training_model(config: TrainConfig, class_names: list[str], notes: list[str] | None = None) -> SSD:
    """The model of a new run: preset ``config.model`` for ``class_names`` (index 0 = background).

    Initialised with the paper's scheme under ``config.seed``, then overwritten by
    ``config.backbone_weights`` (VGG16 or MobileNetV3-Large ImageNet weights, a file or a
    published backbone's name such as "vgg16_reducedfc"; the backbone is then built in the
    layout they fit, see `imagenet_backbone`) and/or ``config.init_from`` (a trained singleshot
    detector, a file or a published detector's name) when given. ``notes``, when given, gets
    a line on how ``config.init_from``'s class predictors were used (`init_from_note`).
    """
    torch.manual_seed(config.seed)
    prior_config = None
    source = None
    if config.init_from:
        source = load_checkpoint(config.init_from)
        if source["model"]["preset"] != config.model:
            raise ValueError(
                f"{config.init_from}: a {source['model']['preset']!r} detector cannot initialise "
                f"a {config.model!r} model"
            )
        prior_config = PriorConfig.from_dict(source["model"]["prior_config"])
    spec = preset_spec(
        config.model, class_names=list(class_names), prior_clip=config.prior_clip, prior_config=prior_config
    )
    if source is not None:  # the detector's own part settings (a full MobileNetV3 tail...)
        spec = with_recorded_parts(spec, source["model"].get("parts"))
    if config.backbone_weights:
        spec = imagenet_backbone(spec)
    model = build_ssd(spec, preset=config.model)
    if config.backbone_weights:
        from ..weights import load_backbone
        from ..weights.published import backbone_file

        load_backbone(model, backbone_file(config.backbone_weights))
    if source is not None:
        names = source["model"].get("class_names")
        kept = init_from_detector(model, source["state_dict"], str(config.init_from), names)
        note = init_from_note(str(config.init_from), names, model.class_names, kept)
        if note is not None and notes is not None:
            notes.append(note)
    return model


def init_from_note(
    where: str, source: list[str] | None, target: list[str] | None, kept: list[str]
) -> str | None:
    """What `init_from_detector` did with the class predictors, for the user: a detector of
    classes ``source`` initialised a model of classes ``target`` (index 0 = background; None
    = unnamed) and left ``kept`` (its return) as initialised. None when it copied them as
    they are between the same named classes."""
    count = len(target or []) - 1
    classes = "class" if count == 1 else "classes"
    rest = "the backbone, extra layers and box predictors are copied"
    if kept:
        what = "names no classes and predicts another number" if source is None else "shares no class"
        return (
            f"{where} {what}: the class predictors start afresh for the training set's {count} {classes}; "
            + rest
        )
    if source is None:
        return f"{where} names no classes: its class predictors are copied in its own order"
    order = _head_order(source, target)
    if not isinstance(order, torch.Tensor):
        return None
    new = [name for name, label in zip(target or [], order.tolist()) if label < 0]
    if new:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        return (f"{where}: class predictors copied by name for {count - len(new)} of the training set's "
                f"{count} {classes}; {shown} start afresh")  # fmt: skip
    if len(source) == len(target or []):
        return f"{where}: class predictors reordered by name to the training set's order"
    theirs = len(source) - 1
    return (
        f"{where}: class predictors of the training set's {count} {classes} copied by name from its {theirs}"
    )


def imagenet_backbone(spec: SSDSpec) -> SSDSpec:
    """``spec`` with its backbone in the settings ImageNet weights fit (the part class's
    ``imagenet_config``, e.g. MobileNetV3's full tail; none for VGG16)."""
    changes = getattr(spec.backbone.cls, "imagenet_config", None)
    if not changes:
        return spec
    return spec.replace(backbone=Part(spec.backbone.cls, {**spec.backbone.config, **changes}))


def init_from_detector(
    model: SSD, state_dict: dict[str, torch.Tensor], where: str = "checkpoint", names: list | None = None
) -> list:
    """Copy a trained detector's weights into ``model`` for fine-tuning on another class set.

    Every tensor whose name and shape match is copied: backbone, extras, the box regression
    heads (class-agnostic in SSD) and any layers of the class heads before their class
    predictors (SSDLite's depthwise convolutions and BatchNorms; see `class_logit_tensors`).
    The class predictors follow the class names (``names``: the detector's, index 0 =
    background): each of ``model.class_names`` that the detector has takes the detector's
    channels for it, wherever they are in its order, and background with them; the others
    keep their initial values. With no object class in common (or another count, unnamed)
    the class predictors stay as initialised. Returns the names of the tensors left wholly at
    their initial values. Raises ValueError (naming ``where``) if any other tensor is
    missing or has another shape: that is a different architecture.
    """
    own = model.state_dict()
    kept: list[str] = []
    copied = {}
    order = _head_order(names, model.class_names)
    logits = class_logit_tensors(model)
    for name, tensor in own.items():
        other = state_dict.get(name)
        if name in logits:
            rows = _class_rows(other, tensor, order)
            if rows is None:
                kept.append(name)
            else:
                copied[name] = rows
        elif other is not None and other.shape == tensor.shape:
            copied[name] = other
        else:
            found = "missing" if other is None else f"shape {tuple(other.shape)}"
            raise ValueError(f"{where}: {name} ({tuple(tensor.shape)}) does not fit: {found}")
    model.load_state_dict(copied, strict=False)
    return kept


def _class_rows(
    other: torch.Tensor | None, own: torch.Tensor, order: torch.Tensor | None | bool
) -> torch.Tensor | None:
    """A class predictor's tensor (output channels = (anchor, class) pairs) taking from
    ``other`` the channels of each class ``order`` finds there (`_head_order`) and keeping
    ``own``'s for the rest; None when nothing is taken."""
    if other is None or order is False:
        return None
    if order is None:
        return other if other.shape == own.shape else None
    assert isinstance(order, torch.Tensor)
    anchors, rest = own.shape[0] // len(order), own.shape[1:]
    if other.shape[1:] != rest or other.shape[0] % anchors or own.shape[0] % len(order):
        return None
    if int(order.max()) >= other.shape[0] // anchors:  # names the detector's tensors lack
        return None
    theirs = other.reshape(anchors, -1, *rest)[:, order.clamp(min=0)]
    found = (order >= 0).view(1, -1, *[1] * len(rest))
    return torch.where(found, theirs, own.reshape(anchors, len(order), *rest)).reshape(own.shape)


def class_logit_tensors(model: SSD) -> set[str]:
    """State-dict names of the class predictors: the last convolution of each level of
    ``model.head.conf`` (the whole level for the SSD head, the final 1x1 after the depthwise
    block for SSDLite's), whose output channels are (anchor, class) pairs. A head without
    a ``conf`` list of levels: every ``head.conf.*`` tensor."""
    levels = getattr(model.head, "conf", None)
    if not isinstance(levels, nn.ModuleList):
        return {name for name in model.state_dict() if name.startswith("head.conf.")}
    names: set[str] = set()
    for k, level in enumerate(levels):
        convs = [name for name, module in level.named_modules() if isinstance(module, nn.Conv2d)]
        if not convs:
            raise ValueError(f"head.conf.{k} has no convolution predicting the class scores")
        prefix = f"head.conf.{k}." + (f"{convs[-1]}." if convs[-1] else "")
        names.update(prefix + p for p, _ in level.get_submodule(convs[-1]).named_parameters())
    return names


def _head_order(source: list | None, target: list | None) -> torch.Tensor | None | bool:
    """For each target label, the source label of the same name, -1 where the source has no
    such class (background is label 0 in both); None to copy the heads as they are (the same
    names in the same order, or either unnamed); False when no object class is shared."""
    if source is None or target is None or list(source) == list(target):
        return None
    index = {name: label for label, name in enumerate(source) if label > 0}
    order = torch.tensor([0] + [index.get(name, -1) for name in target[1:]], dtype=torch.int64)
    return order if bool((order[1:] >= 0).any()) else False


def relate_classes(
    model: SSD, train_dataset: Any, val_dataset: Any, class_map: dict[str, str] | None
) -> tuple[Any, ClassMatch | None, list[str]]:
    """Class names of a run: (the training set in the model's labels, the validation set's
    `ClassMatch` to the model or None, notes to print). Raises ValueError naming the set."""
    notes = []
    names, count = model.class_names, model.num_classes
    try:
        if names is None:
            match = match_classes(None, train_dataset.classes, model_count=count)
            notes.append(f"training set: {match.note}")
        else:
            train_dataset, note = relabel(train_dataset, names, class_map)
            notes += [f"training set: {note}"] if note else []
    except ValueError as error:
        raise ValueError(f"the training set: {error}") from None
    val_match = None
    if val_dataset is not None:
        usable = map_for(class_map, val_dataset.classes)
        try:
            val_match = match_classes(names, val_dataset.classes, usable, model_count=count)
        except ValueError as error:
            raise ValueError(f"the validation set: {error}") from None
        notes += [f"validation set: {val_match.note}"] if val_match.note else []
    return train_dataset, val_match, notes


def dataset_category_ids(dataset: Any, num_classes: int) -> list[int] | None:
    """[0, category id of label 1, ...] of a COCO-style dataset covering every label, else None."""
    ids = getattr(dataset, "label_to_category_id", None)
    if ids is None or set(ids) != set(range(1, num_classes)):
        return None
    return [0] + [int(ids[label]) for label in range(1, num_classes)]


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and not updated)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``mode`` ("none", "auto", "bf16", "fp16") on ``device``.

    "auto": bf16 where the GPU computes it natively (Ampere and later), else fp16 (with the
    GradScaler). Pre-Ampere GPUs (V100, T4) only emulate bf16, slowly, so they get fp16;
    `torch.cuda.is_bf16_supported` counts emulation unless told not to.
    """
    if device.type != "cuda" or mode == "none":
        return None
    if mode == "auto":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


# The `SSDAugmentation` switches a recipe's ``augment`` section may set.
AUGMENT_OPTIONS = ("photometric", "expand")


def default_transform(model: SSD, options: dict[str, Any]) -> Transform:
    """`SSDAugmentation` at the model's input size and normalisation, with ``options``
    (``TrainConfig.augment``). Raises ValueError for an option it does not take."""
    from ..data import SSDAugmentation

    unknown = sorted(set(options) - set(AUGMENT_OPTIONS))
    if unknown:
        raise ValueError(
            f"augment: unknown option(s) {', '.join(unknown)}; known: {', '.join(AUGMENT_OPTIONS)}"
        )
    return SSDAugmentation(model.image_size, model.image_mean, std=model.image_std, **options)


def default_evaluator(
    model: SSD,
    dataset: Any,
    metric: str,
    batch_size: int,
    device: str | torch.device,
    progress: bool,
    classes: ClassMatch | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """`evaluate_model` with its work shared among the DDP processes, if any (every process
    calls it and gets the same result); ``classes``: the model-dataset `ClassMatch`
    (default: matched by name).

    ``workers``: loader processes that read the images (the run's ``config.workers``);
    None = as many as training uses by default (`default_workers`: none on the CPU, up to
    8 per process with GPUs).
    """
    from ..evaluation.run import evaluate_model

    if workers is None:
        workers = default_workers(torch.device(device).type)
    return evaluate_model(
        model,
        dataset,
        metric=metric,
        batch_size=batch_size,
        device=device,
        progress=progress,
        classes=classes,
        num_workers=workers,
        distributed=True,
    )
