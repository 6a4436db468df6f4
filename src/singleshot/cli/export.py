"""``singleshot export``: a checkpoint -> ONNX or TorchScript, optionally with post-processing inside."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description=(
            "Export a singleshot checkpoint for deployment, with a dynamic batch dimension. The graph "
            "takes a normalised batch: float32 (B, 3, S, S), RGB 0-255 resized to S x S (bilinear) "
            "minus the model's image mean (S and the mean are stored in the file's metadata). "
            "Without --with-postprocess it returns loc (B, P, 4) and conf (B, P, C) logits. With it, "
            "decoding and per-class NMS are inside the graph and it returns boxes (B, K, 4) xyxy as "
            "fractions of the input, scores (B, K), labels (B, K) and counts (B,): image b's "
            "detections are its first counts[b] rows, so ONNX Runtime alone gives final detections."
        ),
    )
    add = parser.add_argument
    add("--checkpoint", required=True, help="singleshot checkpoint (.pt or .safetensors)")
    add("--format", required=True, choices=("onnx", "torchscript"), help="output format")
    add("--with-postprocess", action="store_true", help="put decoding and NMS inside the graph")
    add("output", metavar="OUT", help="file to write (.onnx or .pt)")
    add("--opset", type=int, default=None, help="ONNX opset, >= 17 (default 18)")
    add("--score-threshold", type=float, default=0.01, help="with post-processing: per-class score threshold")
    add("--nms-threshold", type=float, default=0.45, help="with post-processing: NMS IoU threshold")
    add(
        "--pre-nms-top-k",
        type=int,
        default=200,
        help="with post-processing: candidates per class entering NMS",
    )
    add("--max-detections", type=int, default=200,
        help="with post-processing: detections per image, K (0 = no cap: "
             "K = (classes - 1) * top-k)")  # fmt: skip
    add("--clip", action="store_true", help="with post-processing: clip boxes to the image before NMS")
    add(
        "--freeze", action="store_true", help="TorchScript only: torch.jit.freeze the module (inference only)"
    )
    add("--verify", action="store_true",
        help="run the exported file (ONNX Runtime / torch.jit) on random input and compare with "
             "PyTorch")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..export import DEFAULT_OPSET, export_onnx, export_torchscript

    model = load(args.checkpoint)
    postprocess = {
        "score_threshold": args.score_threshold,
        "nms_threshold": args.nms_threshold,
        "pre_nms_top_k": args.pre_nms_top_k,
        "max_detections": args.max_detections or None,
        "clip": args.clip,
    }
    if args.format == "onnx":
        if args.freeze:
            raise ValueError("--freeze applies to --format torchscript only")
        path = export_onnx(
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


def verify_export(model, path, fmt: str, with_postprocess: bool, postprocess: dict) -> str:
    """Run the exported file and PyTorch on two random inputs; raise ValueError on a mismatch.

    Network outputs must agree within 1e-3. With post-processing, the detection counts
    must be equal and the (sorted) scores agree within 1e-4; boxes and labels are compared
    row by row and reported (rows tied in score may legitimately come in another order).
    """
    import torch

    from ..export import DetectorGraph, OnnxDetector, TorchScriptDetector

    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
    x = torch.rand(2, 3, size, size, generator=generator) * 255 - mean
    if any(s != 1.0 for s in model.image_std):
        x = x / torch.tensor(model.image_std).view(1, 3, 1, 1)
    runner = OnnxDetector(path) if fmt == "onnx" else TorchScriptDetector(path)
    got = runner.run(x)
    with torch.no_grad():
        if with_postprocess:
            expected = DetectorGraph(model, model.priors, model.num_classes, **postprocess).eval()(x)
        else:
            expected = model.eval()(x)
    if not with_postprocess:
        worst = max(float((a - b).abs().max()) for a, b in zip(got, expected))
        if worst > 1e-3:
            raise ValueError(f"{path}: outputs differ from PyTorch by up to {worst:.3g}")
        return f"verified: loc and conf match PyTorch (max abs difference {worst:.2e})"
    boxes, scores, labels, counts = got
    ref_boxes, ref_scores, ref_labels, ref_counts = expected
    if not torch.equal(counts, ref_counts.to(counts.dtype)):
        raise ValueError(
            f"{path}: detection counts {counts.tolist()} differ from PyTorch's {ref_counts.tolist()}"
        )
    score_error = float((scores - ref_scores).abs().max()) if scores.numel() else 0.0
    if score_error > 1e-4:
        raise ValueError(f"{path}: scores differ from PyTorch by up to {score_error:.3g}")
    same = (labels == ref_labels) & ((boxes - ref_boxes).abs().amax(-1) < 1e-4)
    return (
        f"verified: {counts.tolist()} detections, scores within {score_error:.1e} of PyTorch, "
        f"{float(same.float().mean()):.1%} of rows with the same label and box"
    )
