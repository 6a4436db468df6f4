"""``singleshot convert``: ssd.pytorch, torchvision or ImageNet VGG16 weights -> a singleshot checkpoint."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ..models.ssd import SSD


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_save, save_checkpoint
    from ..weights import (
        convert_file,
        model_from_vgg16,
        read_class_names_with_background,
        reduced_vgg16_backbone,
    )

    class_names = read_class_names_with_background(args.classes) if args.classes else None
    vgg_only = ("num_classes", "backbone_only")
    if args.source != "vgg16" and any(getattr(args, name) for name in vgg_only):
        raise ValueError("--num-classes and --backbone-only apply to --from vgg16 only")
    if args.source == "vgg16" and args.backbone_only:
        atomic_save(reduced_vgg16_backbone(args.input), args.output)
        print(f"wrote {args.output}: SSD base network (conv1_1 ... conv7) in vgg16_reducedfc.pth layout")
        return 0
    if args.source == "vgg16":
        model = model_from_vgg16(
            args.input, args.preset or "ssd300_voc", num_classes=args.num_classes,
            class_names=class_names, seed=args.seed,
        )  # fmt: skip
    else:
        model = convert_file(args.input, args.source, preset=args.preset, class_names=class_names)
    save_checkpoint(args.output, cast("SSD", model))  # the weights builders return an SSD
    print(
        f"wrote {args.output}: {model.preset}, {model.num_classes} classes, "
        f"priors clip={model.prior_config.clip}"
    )
    return 0
