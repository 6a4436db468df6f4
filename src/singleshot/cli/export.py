"""``singleshot export``: a checkpoint -> ONNX, OpenVINO IR or TorchScript, optionally with
post-processing inside."""

from __future__ import annotations

import argparse

from .export_int8 import add_int8_options, check_int8_options, run_int8


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, OpenVINO IR or TorchScript",
        description=(
            "Export a singleshot checkpoint for deployment, with a dynamic batch dimension. The graph "
            "takes a normalised batch: float32 (B, 3, S, S), RGB 0-255 resized to S x S (bilinear) "
            "minus the model's image mean (S and the mean are stored in the file's metadata). "
            "Without --with-postprocess it returns loc (B, P, 4) and conf (B, P, C) logits. With it, "
            "decoding and per-class NMS are inside the graph and it returns boxes (B, K, 4) xyxy as "
            "fractions of the input, scores (B, K), labels (B, K) and counts (B,): image b's "
            "detections are its first counts[b] rows, so ONNX Runtime alone gives final detections. "
            "--format openvino converts the ONNX graph with OpenVINO's own converter into OpenVINO IR "
            "(OUT.xml + OUT.bin, float32 weights; pip install 'singleshot[openvino]'). `singleshot eval` "
            "and `singleshot detect` run every format, reading the metadata stored in the file."
        ),
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="singleshot checkpoint (.pt or .safetensors)")
    add("--format", required=True, choices=("onnx", "torchscript", "openvino"),
        help="output format: onnx, torchscript or openvino (IR: OUT.xml with OUT.bin beside it)")  # fmt: skip
    add("--with-postprocess", action="store_true", help="put decoding and NMS inside the graph")
    add("output", metavar="OUT", help="file to write (.onnx, .pt, or .xml for openvino)")
    add(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, >= 17 (default 18; openvino: of the ONNX it converts)",
    )
    _add_postprocess_options(parser)
    add(
        "--freeze", action="store_true", help="TorchScript only: torch.jit.freeze the module (inference only)"
    )
    add("--verify", action="store_true",
        help="run the exported file (ONNX Runtime / OpenVINO / torch.jit) on random input and compare "
             "with PyTorch")  # fmt: skip
    add_int8_options(parser)
    parser.set_defaults(func=run)


def _add_postprocess_options(parser: argparse.ArgumentParser) -> None:
    """The post-processing settings of a graph with NMS inside; those left out are the model's own
    (``model.postprocess``)."""
    add = parser.add_argument
    add(
        "--score-threshold",
        type=float,
        default=None,
        help="with post-processing: per-class score threshold (default: the model's; VGG 0.01)",
    )
    add(
        "--nms-threshold",
        type=float,
        default=None,
        help="with post-processing: NMS IoU threshold (default: the model's; VGG 0.45)",
    )
    add(
        "--pre-nms-top-k",
        type=int,
        default=None,
        help="with post-processing: candidates per class entering NMS (default: the model's; VGG 200)",
    )
    add(
        "--max-detections",
        type=int,
        default=None,
        help="with post-processing: detections per image, K (0 = no cap: K = (classes - 1) * top-k; "
        "default: the model's; VGG 200)",
    )
    add(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with post-processing: clip boxes to the image before NMS (default: the model's; VGG off)",
    )


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..export import DEFAULT_OPSET, export_onnx, export_openvino, export_torchscript, verify_export

    check_int8_options(args)
    model = load(args.checkpoint)
    given = {
        "score_threshold": args.score_threshold,
        "nms_threshold": args.nms_threshold,
        "pre_nms_top_k": args.pre_nms_top_k,
        "max_detections": args.max_detections,
        "clip": args.clip,
    }
    # settings left out are the model's own (model.postprocess), as for predict
    postprocess = {name: value for name, value in given.items() if value is not None}
    if args.max_detections == 0:
        postprocess["max_detections"] = None  # no cap
    if args.format != "torchscript" and args.freeze:
        raise ValueError("--freeze applies to --format torchscript only")
    if args.int8:
        return run_int8(args, model, postprocess)
    if args.format == "onnx":
        path = export_onnx(
            model, args.output, with_postprocess=args.with_postprocess, opset=args.opset or DEFAULT_OPSET,
            **postprocess,
        )  # fmt: skip
    elif args.format == "openvino":
        path = export_openvino(
            model, args.output, with_postprocess=args.with_postprocess, opset=args.opset or DEFAULT_OPSET,
            **postprocess,
        )  # fmt: skip
    else:
        if args.opset is not None:
            raise ValueError("--opset applies to --format onnx only")
        path = export_torchscript(
            model, args.output, with_postprocess=args.with_postprocess, freeze=args.freeze, **postprocess
        )
    what = "detector (network + decoding + NMS)" if args.with_postprocess else "network (loc, conf)"
    print(f"wrote {path}: {model.preset} {what}, input (B, 3, {model.image_size}, {model.image_size})")
    if args.verify:
        print(verify_export(model, path, args.format, args.with_postprocess, postprocess))
    return 0
