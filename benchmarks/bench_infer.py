"""End-to-end inference speed: uint8 images in, final detections in pixels out.

    .venv/bin/python benchmarks/bench_infer.py [--model ssd300|ssdlite320_coco] [--repeats 5]
                                               [--threads 2] [--batches 1 8]
                                               [--compile] [--skip-onnx] [--skip-winograd]
                                               [--gpu-only]

All paths run in one process on the same SSD300 weights and the same eight 500x375
images, each timed end to end (resize + mean subtraction, network, decoding, NMS,
scaling to the image's pixels):

- torchvision: ``ssd300_vgg16(num_classes=21)``, called as its users do (0-1 float images);
- predict: the pipeline of `singleshot.SSD.predict` (`preprocess`, the network, `detect`) with
  torchvision's post-processing settings (``pre_nms_top_k=400``, ``clip=True``), in eager
  PyTorch with channels-last convolutions and, for reference, contiguous NCHW;
- predict on ``model.optimize_for_inference()`` with its defaults (the default CPU path of
  Python users and of ``detect`` / ``eval``: BatchNorm folded, Winograd where it applies and
  its kernels build, the memory format a cached trial picks, each Winograd convolution's tile
  schedules timed at batches 8 and 1), converted once before timing; and the same copy with the tile
  schedules of the fixed rule that came before the timed choice, and with the 2x2 max poolings
  after conv1_2, conv2_2 and conv3_3 run apart instead of in their output transform (both
  giving the same outputs);
- TorchScript: the network traced, frozen and passed through ``optimize_for_inference``
  (oneDNN weight prepacking and conv fusions), then `detect` in PyTorch;
- ONNX Runtime: the whole detector exported with `singleshot.export.export_onnx(...,
  with_postprocess=True)` (decoding and NMS inside the graph), all graph optimisations on;
- torch.compile (``--compile``): inductor with freezing; its compile time is printed apart;
- Winograd: `singleshot.winograd.use_winograd` on a copy of the model (conv2_2 ... conv5_3
  by F(4x4, 3x3) with C tile transforms, the other layers eager, channels-last), then
  `detect`: what `singleshot detect --winograd` runs;
- int8 (``--int8``): the network statically quantised by ONNX Runtime (per-channel weights,
  VNNI kernels). Its detections are NOT equivalent to the float model's (see "agree"), so
  it is shown for information only.

``--model ssdlite320_coco`` runs SSDLite320 instead: torchvision's ``ssdlite320_mobilenet_v3_large``
(``weights=None, weights_backbone=None``, He-scaled weights and a background bias, see
``peers.build_ssdlite_models``) against our ``ssdlite320_coco`` with 91 classes and its converted
weights, post-processed with torchvision's SSDLite settings (score 0.001, NMS 0.55, 300 per
class and per image). Its paths: predict eager channels-last and NCHW, predict on
``optimize_for_inference()`` (what ``detect`` / ``eval`` run on a CPU: here BatchNorm folded and
the layout trial's pick) and on `singleshot.fastpath.fuse_for_inference` alone, TorchScript,
ONNX Runtime, OpenVINO (the same ONNX file, CPU plugin, float32, ``--threads`` threads) and
torch.compile (``--compile``); Winograd does not apply to depthwise convolutions.

Our model is ``ssd300_coco`` with 21 classes and ``prior_clip="size"`` (torchvision's boxes)
loaded with torchvision's converted weights, the background bias raised so that scores look
like a trained model's (random weights would send ~100k candidates through NMS). Before
timing, every path's detections are compared with torchvision's: "agree" is the share of
torchvision's detections found with the same label, a box within 0.5 px and a score within
1e-3; "IoU.5" only asks for the same label and an IoU of at least 0.5.

Timings: per batch size, the paths run one after the other in each of ``--repeats`` rounds
(so that load from other processes falls on all alike), after a warm-up round; the table
gives the median ms per image, images/s, and torchvision's time divided by the path's
(> 1 = faster than torchvision). ``--threads`` sets torch's and ONNX Runtime's intra-op
threads. Where CUDA is available, a GPU section follows: batch-1 latency of fp32 and fp16
`predict`, of fp16 replayed from a CUDA graph, and of torchvision, with the device name.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from peers import build_models, build_ssdlite_models
from singleshot.inference import preprocess
from singleshot.postprocess import detect
from singleshot.runtime import tune_malloc


def make_images(count: int = 8) -> list[torch.Tensor]:
    """Smooth random images (noise blurred by upsampling), VOC-sized, uint8 (3, 375, 500)."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(count, 3, 24, 32, generator=g) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)
    noise = torch.randn(count, 3, 375, 500, generator=g) * 8
    return [image for image in (fine + noise).clamp(0, 255).to(torch.uint8)]


def to_pixels(detections, images):
    out = []
    for det, image in zip(detections, images):
        height, width = image.shape[-2:]
        boxes = det["boxes"] * det["boxes"].new_tensor([width, height, width, height])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        out.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"]})
    return out


# torchvision's post-processing settings: score, NMS IoU, candidates per class, per image
SETTINGS = {"ssd300": (0.01, 0.45, 400, 200), "ssdlite320_coco": (0.001, 0.55, 300, 300)}


def network_then_detect(network: Callable, model) -> Callable:
    """predict's pipeline around another implementation of the network."""
    priors = model.priors
    settings = SETTINGS["ssdlite320_coco" if model.image_size == 320 else "ssd300"]

    def run(images):
        x = preprocess(images, model.image_size, model.image_mean, std=model.image_std)
        with torch.inference_mode():
            loc, conf = network(x)
            detections = detect(loc, conf.softmax(-1), priors, *settings, clip=True)
        return to_pixels(detections, images)

    return run


def agreement(got, reference, loose: bool = False) -> float:
    """Share of the reference detections that ``got`` has too: same label, box within 0.5 px,
    score within 1e-3 (``loose``: same label and IoU >= 0.5, any score)."""
    from torchvision.ops import box_iou

    found = total = 0
    for det, ref in zip(got, reference):
        total += len(ref["scores"])
        if not len(ref["scores"]) or not len(det["scores"]):
            continue
        same = det["labels"][:, None] == ref["labels"][None, :]
        close = (det["boxes"][:, None, :] - ref["boxes"][None, :, :]).abs().amax(-1) < 0.5
        if loose:  # boxes clipped to zero area at the border have no IoU: accept them when close
            same &= (box_iou(det["boxes"], ref["boxes"]) >= 0.5) | close
        else:
            same &= close & ((det["scores"][:, None] - ref["scores"][None, :]).abs() < 1e-3)
        found += int(same.any(0).sum())
    return found / max(total, 1)


def torchscript_network(model):
    example = torch.zeros(1, 3, model.image_size, model.image_size)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        for batch in (1, 8):  # the profiling executor specialises on the first calls
            for _ in range(2):
                frozen(torch.zeros(batch, 3, model.image_size, model.image_size))
    return frozen


def compiled_network(model):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in (1, 8):
            compiled(torch.zeros(batch, 3, model.image_size, model.image_size))
    return compiled, time.perf_counter() - start


def optimized_network(model):
    """``model.optimize_for_inference()`` with its defaults: what `SSD.predict` users and
    ``detect`` / ``eval`` run on a CPU (BatchNorm folded, Winograd, the layout trial's pick)."""
    start = time.perf_counter()
    optimized = model.optimize_for_inference()
    seconds = time.perf_counter() - start
    print(f"optimize_for_inference ({seconds:.1f} s): {optimized.optimizations.describe()}")
    return optimized


def untuned(optimized):
    """A copy of ``optimized`` whose Winograd convolutions schedule their tiles by the fixed
    rule, as before the timed choice (`singleshot.winograd.schedule`): the same outputs."""
    import copy

    from singleshot.winograd import WinogradConv2d

    plain = copy.deepcopy(optimized)
    for module in plain.modules():
        if isinstance(module, WinogradConv2d):
            module.schedules = {}
    return plain


def pools_apart(optimized):
    """A copy of ``optimized`` whose Winograd convolutions write their full-size outputs for
    ``nn.MaxPool2d`` modules to pool, as before the pooling ran in the output transform
    (`singleshot.winograd.ops.POOL_FLOOR`): the same outputs."""
    import copy

    from singleshot.winograd import FusedMaxPool2d, WinogradConv2d
    from singleshot.winograd.ops import NO_POOL

    apart = copy.deepcopy(optimized)
    for parent in list(apart.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedMaxPool2d):
                setattr(parent, name, child.to_max_pool())
            elif isinstance(child, WinogradConv2d):
                child.pool = NO_POOL
    return apart


def winograd_network(model):
    import copy

    from singleshot.winograd import use_winograd

    start = time.perf_counter()
    network = copy.deepcopy(model)
    replaced = use_winograd(network)
    seconds = time.perf_counter() - start
    print(f"Winograd: {len(replaced)} layers, {seconds:.1f} s to convert (kernels built or cached)")
    return network


TV = "torchvision, eager"


def build_paths(tv, ours, args, folder: Path) -> dict[str, Callable]:
    paths: dict[str, Callable] = {}
    paths[TV] = lambda images: tv([image.float() / 255 for image in images])

    paths["predict, eager (channels-last)"] = network_then_detect(ours, ours)
    paths["predict, eager (NCHW)"] = network_then_detect(lambda x: _nchw(ours, x), ours)
    optimized = optimized_network(ours)
    paths["predict, optimize_for_inference() (default)"] = network_then_detect(optimized, ours)
    if optimized.optimizations.winograd_schedules:
        paths["the same, tile schedules by rule (untimed)"] = network_then_detect(untuned(optimized), ours)
    from singleshot.winograd import FusedMaxPool2d

    if any(isinstance(module, FusedMaxPool2d) for module in optimized.modules()):
        apart = pools_apart(optimized)
        paths["the same, max pooling after the convolution"] = network_then_detect(apart, ours)
    if args.model == "ssdlite320_coco":
        from singleshot.fastpath import fuse_for_inference

        paths["predict, fuse_for_inference"] = network_then_detect(fuse_for_inference(ours), ours)
    paths["TorchScript frozen + optimize_for_inference"] = network_then_detect(
        torchscript_network(ours), ours
    )
    if not args.skip_winograd and args.model == "ssd300":
        fast = winograd_network(ours)
        paths["predict, Winograd conv2_2-conv5_3 (C kernels)"] = network_then_detect(fast, ours)
    if args.compile:
        compiled, seconds = compiled_network(ours)
        print(f"torch.compile (inductor, freezing): {seconds:.1f} s to compile for batches 1 and 8")
        paths["torch.compile (inductor, freezing)"] = network_then_detect(compiled, ours)
    if not args.skip_onnx:
        paths.update(exported_paths(ours, args, folder))
    if args.int8:
        paths["ONNX Runtime int8 (static QDQ), not equivalent"] = int8_path(ours, args.threads, folder)
    return paths


def exported_paths(ours, args, folder: Path) -> dict[str, Callable]:
    """The whole detector exported to ONNX (NMS inside), run by ONNX Runtime and by OpenVINO."""
    import importlib.util

    from singleshot.export import OnnxDetector, OpenVinoDetector, export_onnx

    start = time.perf_counter()
    settings = SETTINGS[args.model]
    path = export_onnx(
        ours, folder / "detector.onnx", with_postprocess=True, score_threshold=settings[0],
        nms_threshold=settings[1], pre_nms_top_k=settings[2], max_detections=settings[3], clip=True,
    )  # fmt: skip
    print(f"ONNX export (detector with NMS): {time.perf_counter() - start:.1f} s")
    paths = {"ONNX Runtime, detector with NMS in graph": OnnxDetector(path, threads=args.threads).predict}
    if importlib.util.find_spec("openvino") is not None:
        paths["OpenVINO CPU f32, same ONNX file"] = OpenVinoDetector(path, threads=args.threads).predict
    else:
        print("(openvino not installed: its path skipped)")
    return paths


def int8_path(model, threads: int, folder: Path) -> Callable:
    """The network quantised to int8 by ONNX Runtime (per-channel weights, activations calibrated
    on the benchmark's own images), post-processed in PyTorch. Its detections differ from the
    float model's: see the "agree" column; its accuracy cost needs trained weights to measure."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from singleshot.export import export_onnx, session_options

    network = export_onnx(model, folder / "network.onnx")
    calibration = preprocess(make_images(), model.image_size, model.image_mean).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    quantized = folder / "network_int8.onnx"
    quantize_static(
        str(network), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    options = session_options(threads)
    session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])

    def network_fn(x):
        loc, conf = session.run(None, {"images": x.numpy()})
        return torch.from_numpy(loc), torch.from_numpy(conf)

    return network_then_detect(network_fn, model)


def _nchw(model, x):
    model.channels_last = False
    try:
        return model(x)
    finally:
        model.channels_last = True


def time_paths(paths: dict[str, Callable], images, batch: int, repeats: int) -> dict[str, float]:
    chosen = images[:batch]
    with torch.inference_mode():
        for run in paths.values():  # warm-up round
            run(chosen)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(repeats):
            for name, run in paths.items():
                start = time.perf_counter()
                run(chosen)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) / batch for name, values in times.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup``, the device's
    queue drained before each clock read."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def graphed_predict(model, image: torch.Tensor, device: torch.device) -> Callable:
    """`predict` with ``model``'s network (fp16, batch 1) captured in a CUDA graph and replayed
    on a static input; resize, normalisation, decoding and NMS stay eager, with the model's
    post-processing settings, as `predict`."""
    static_x = torch.zeros(1, 3, model.image_size, model.image_size, device=device, dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_loc, static_conf = model(static_x)
    priors = model.priors.float()
    settings = dataclasses.asdict(model.postprocess)  # what predict uses

    def run():
        with torch.inference_mode():
            x = preprocess([image], model.image_size, model.image_mean, device=device, std=model.image_std)
            static_x.copy_(x)
            graph.replay()
            det = detect(static_loc.float(), static_conf.float().softmax(-1), priors, **settings)
            return to_pixels(det, [image])

    return run


def gpu_section(
    tv, ours, images, repeats: int, device: str | torch.device = "cuda", warmup: int = 3
) -> dict[str, float]:
    """Batch-1 latency in seconds (median of ``repeats``), end to end from a uint8 image in
    host memory: torchvision fp32, `predict` fp32 and, on CUDA, `predict` fp16 and fp16 with
    the network replayed from a CUDA graph. The models move to ``device``; ``ours`` stays
    fp32 (the fp16 paths run on a copy)."""
    import copy

    device = torch.device(device)
    model, tv_device, image = ours.to(device), tv.to(device), images[0]
    results = {"torchvision fp32": median_seconds(lambda: tv_device([image.to(device).float() / 255]),
                                                  device, repeats, warmup)}  # fmt: skip
    results["predict fp32"] = median_seconds(lambda: model.predict(image), device, repeats, warmup)
    if device.type != "cuda":
        return results
    half = copy.deepcopy(model).half()
    results["predict fp16"] = median_seconds(lambda: half.predict(image), device, repeats, warmup)
    results["predict fp16, network in a CUDA graph"] = median_seconds(graphed_predict(half, image, device),
                                                                      device, repeats, warmup)  # fmt: skip
    return results


def print_gpu_section(results: dict[str, float], repeats: int) -> None:
    name = torch.cuda.get_device_name()
    print(f"\nGPU: {name}, batch 1, end to end from a uint8 image in host memory, median of {repeats}")
    reference = results["torchvision fp32"]
    for label, seconds in results.items():
        print(f"{label:<46} {seconds * 1e3:>8.2f} ms  {reference / seconds:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(SETTINGS), default="ssd300", help="the detector to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size (median)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--skip-winograd", action="store_true", help="skip the Winograd path")
    parser.add_argument("--skip-onnx", action="store_true", help="skip the ONNX export and ONNX Runtime")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also time an int8-quantised network (ONNX Runtime; not equivalent)",
    )
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU section (needs CUDA)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notes
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice on stdout
    torch.set_num_threads(args.threads)
    tune_malloc()
    tv, ours = build_ssdlite_models() if args.model == "ssdlite320_coco" else build_models()
    images = make_images()

    if not args.gpu_only:
        with tempfile.TemporaryDirectory() as folder:
            paths = build_paths(tv, ours, args, Path(folder))
            with torch.inference_mode():
                reference = tv([image.float() / 255 for image in images[:2]])
                outputs = {name: run(images[:2]) for name, run in paths.items()}
            agree = {name: agreement(out, reference) for name, out in outputs.items()}
            loose = {name: agreement(out, reference, loose=True) for name, out in outputs.items()}
            print(
                f"{args.model}: torch {torch.__version__}, {args.threads} threads, 500x375 uint8 images, "
                f"median of {args.repeats} rounds"
            )
            for batch in args.batches:
                per_image = time_paths(paths, images, batch, args.repeats)
                baseline = per_image[TV]
                print(f"\nbatch {batch}")
                print(f"{'path':<46} {'ms/image':>9} {'images/s':>9} {'vs tv':>7} {'agree':>7} {'IoU.5':>7}")
                for name, seconds in per_image.items():
                    print(
                        f"{name:<46} {seconds * 1e3:>9.1f} {1 / seconds:>9.2f} "
                        f"{baseline / seconds:>6.2f}x {agree[name]:>7.1%} {loose[name]:>7.1%}"
                    )
    if torch.cuda.is_available():
        print_gpu_section(gpu_section(tv, ours, images, args.repeats), args.repeats)
    elif args.gpu_only:
        raise SystemExit("--gpu-only: no CUDA device")
    else:
        print("\n(no CUDA device: GPU section skipped)")


if __name__ == "__main__":
    main()
