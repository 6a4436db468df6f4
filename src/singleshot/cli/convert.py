"""``singleshot convert``: ssd.pytorch, torchvision or ImageNet VGG16 weights -> a singleshot checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="make a singleshot checkpoint from ssd.pytorch / torchvision / VGG16 weights",
        description=(
            "Convert weights trained elsewhere into a self-describing singleshot checkpoint. "
            "Files are read with torch.load(weights_only=True) (or as .safetensors when the "
            "safetensors package is installed): a weight file can never run code. "
            "ssd.pytorch: an SSD300 .pth (VOC with 21 classes, else COCO boxes; a DataParallel "
            "'module.' prefix is fine). torchvision: an ssd300_vgg16 state dict (91 sparse COCO ids; "
            "the priors clamp only their sizes, as torchvision's, so its detections are reproduced "
            "with detect(pre_nms_top_k=400, max_detections=200, clip=True)). vgg16: torchvision's "
            "ImageNet VGG16 (e.g. vgg16-397923af.pth, fc6/fc7 reduced to conv6/conv7 as in the paper) "
            "or ssd.pytorch's vgg16_reducedfc.pth, giving a detector whose base network is initialised "
            "and whose extra layers and heads have the paper's random initialisation."
        ),
    )
    add = parser.add_argument
    add("--from", dest="source", required=True, choices=("ssd.pytorch", "torchvision", "vgg16"),
        help="layout of the input weights")  # fmt: skip
    add("input", metavar="IN", help="weights file to read (.pth / .pt / .safetensors)")
    add("output", metavar="OUT", help="singleshot checkpoint to write (.pt; .safetensors needs the package)")
    add("--classes", metavar="FILE",
        help="class names, one per line, without or with '__background__' first "
             "(default: VOC's or COCO's names when the class count matches)")  # fmt: skip
    add(
        "--preset",
        help="model preset; default: inferred (ssd300_voc / ssd300_coco; ssd300_voc for --from vgg16)",
    )
    add("--num-classes", type=int,
        help="--from vgg16 only: classes including background (default: from --classes, "
             "else the preset's)")  # fmt: skip
    add(
        "--seed", type=int, default=0, help="--from vgg16 only: seed of the extras' and heads' initialisation"
    )
    add("--backbone-only", action="store_true",
        help="--from vgg16 only: write just the reduced base network in ssd.pytorch's "
             "vgg16_reducedfc.pth layout ('0.weight' ... '33.bias') instead of a checkpoint")  # fmt: skip
    parser.set_defaults(func=run)


def read_class_names_with_background(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored); index 0 = "__background__"."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read class names: {error}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    if names[0] != "__background__":
        names.insert(0, "__background__")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{path}: duplicate class names: {', '.join(duplicates)}")
    return names


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import save_checkpoint
    from ..weights import convert_model, load_vgg16_backbone, read_state_dict, reduce_vgg16
    from ..weights.vgg16 import is_torchvision_vgg16

    class_names = read_class_names_with_background(args.classes) if args.classes else None
    vgg_only = ("num_classes", "backbone_only")
    if args.source != "vgg16" and any(getattr(args, name) for name in vgg_only):
        raise ValueError("--num-classes and --backbone-only apply to --from vgg16 only")
    state = read_state_dict(args.input)

    if args.source == "vgg16" and args.backbone_only:
        from ..checkpoint import atomic_save
        from ..weights.keymaps import strip_prefix

        state = strip_prefix(state)
        reduced = reduce_vgg16(state) if is_torchvision_vgg16(state) else state
        # load into a throwaway model: validates layout and shapes with file-naming errors
        from ..presets import build_model

        load_vgg16_backbone(build_model("ssd300_voc"), reduced)
        atomic_save(reduced, args.output)
        print(f"wrote {args.output}: SSD base network (conv1_1 ... conv7) in vgg16_reducedfc.pth layout")
        return 0

    if args.source == "vgg16":
        from ..presets import build_model

        torch.manual_seed(args.seed)
        model = build_model(
            args.preset or "ssd300_voc", num_classes=args.num_classes, class_names=class_names
        )
        try:
            load_vgg16_backbone(model, state)
        except ValueError as error:
            raise ValueError(f"{args.input}: {error}") from None
    else:
        try:
            model = convert_model(state, args.source, preset=args.preset, class_names=class_names)
        except ValueError as error:
            raise ValueError(f"{args.input}: {error}") from None
    save_checkpoint(args.output, model)
    print(
        f"wrote {args.output}: {model.preset}, {model.num_classes} classes, "
        f"priors clip={model.prior_config.clip}"
    )
    return 0
