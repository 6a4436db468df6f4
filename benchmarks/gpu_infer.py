"""GPU check, inference and exported models, against torchvision on the same weights.

Inference: batch-1 latency from ``bench_infer.gpu_section`` (torchvision fp32, `predict`
fp32, fp16, fp16 with the network in a CUDA graph) and throughput at a large batch
(`predict` fp32 and fp16; torchvision fp32 and under fp16 autocast), end to end from
uint8 images in host memory (resize, normalisation, network, decoding, NMS, pixels).

Exported: the SSD300 detector exported to ONNX with its NMS inside
(`singleshot.export.export_onnx`), run by ONNX Runtime with the CUDA and TensorRT
execution providers where this onnxruntime has them (each otherwise skipped with a
note), and with the CPU provider as the reference.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench_infer import gpu_section, make_images, median_seconds
from gpu_report import Section
from peers import build_models, build_ssdlite_models

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def models(kind: str):
    """(torchvision's model, ours with the same weights), ours in the channels-last layout its
    forward feeds the convolutions, as `singleshot.load` returns a model."""
    tv, ours = build_ssdlite_models() if kind == "ssdlite320" else build_models()
    return tv, ours.to(memory_format=torch.channels_last)


def throughput_paths(tv, ours, device: torch.device) -> dict[str, Any]:
    """name -> fn(images): the batch paths, fp16 ones on CUDA only."""

    def torchvision(images, dtype=None):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):  # fmt: skip
            return tv([image.to(device).float() / 255 for image in images])

    paths: dict[str, Any] = {"torchvision fp32": torchvision, "predict fp32": ours.predict}
    if device.type == "cuda":
        half = copy.deepcopy(ours).half()
        paths["torchvision fp16 autocast"] = lambda images: torchvision(images, torch.float16)
        paths["predict fp16"] = half.predict
    return paths


def latency_rows(kind: str, tv, ours, images, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    results = gpu_section(tv, ours, images, repeats, device, warmup=1 if repeats == 1 else 3)
    reference = results["torchvision fp32"]
    return [{"model": kind, "batch": 1, "path": name, "ms": 1e3 * seconds, "images_per_s": 1 / seconds,
             "vs_torchvision_fp32": reference / seconds} for name, seconds in results.items()]  # fmt: skip


def throughput_rows(kind: str, tv, ours, images, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, run in throughput_paths(tv, ours, device).items():
        seconds = median_seconds(lambda run=run: run(images), device, repeats, warmup=1)
        rows.append({"model": kind, "batch": len(images), "path": name, "ms": 1e3 * seconds,
                     "images_per_s": len(images) / seconds})  # fmt: skip
    best_tv = max(row["images_per_s"] for row in rows if row["path"].startswith("torchvision"))
    for row in rows:
        row["vs_best_torchvision"] = row["images_per_s"] / best_tv
    return rows


def inference_section(section: Section, context: dict[str, Any]) -> None:
    """Section 4: SSD300, then SSDLite320 while time is left."""
    device, smoke = context["device"], context["smoke"]
    batch, repeats = (2, 1) if smoke else (64, 5)
    kinds = ["ssd300"] if smoke else ["ssd300", "ssdlite320"]
    base = make_images(8)
    images = [base[i % len(base)] for i in range(batch)]
    for kind in kinds:
        if section.out_of_time(kind):
            continue
        tv, ours = models(kind)
        section.rows += latency_rows(kind, tv, ours, base, device, repeats)
        if section.out_of_time(f"{kind} batch {batch}"):
            continue
        section.rows += throughput_rows(kind, tv, ours, images, device, repeats)
        del tv, ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type != "cuda":
        section.skip(
            "fp16 and CUDA-graph paths", "CUDA only (fp16 convolutions on a CPU are not the question)"
        )
    if smoke:
        section.skip("ssdlite320", "not in the smoke run")
    section.notes.append("target: predict fp16 at batch 64 >= 1.5x torchvision (vs_best_torchvision)")


def provider_rows(path: Path, image, device: torch.device, repeats: int, section: Section) -> list[dict]:
    """Batch-1 latency of the exported detector per ONNX Runtime provider (CPU always)."""
    import onnxruntime as ort

    from singleshot.export import OnnxDetector

    available = ort.get_available_providers()
    rows = []
    for provider in ("CPUExecutionProvider", *GPU_PROVIDERS):
        if provider not in available:
            reason = (f"onnxruntime {ort.__version__} does not have it (has: {', '.join(available)}); "
                      "onnxruntime-gpu (with TensorRT for its provider) would add it")  # fmt: skip
            section.skip(provider, reason)
            continue
        detector = OnnxDetector(path, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
        running = detector.session.get_providers()[0]
        if running != provider:
            section.skip(provider, f"the session fell back to {running}")
            continue
        seconds = median_seconds(lambda detector=detector: detector.predict(image), device, repeats)
        rows.append(
            {"model": "ssd300", "batch": 1, "runtime": f"onnxruntime {provider}", "ms": 1e3 * seconds}
        )
    return rows


def export_section(section: Section, context: dict[str, Any]) -> None:
    """Section 5: SSD300's ONNX detector in ONNX Runtime's providers, beside eager `predict`."""
    from singleshot.export import export_onnx

    device, smoke = context["device"], context["smoke"]
    repeats = 2 if smoke else 10
    _, ours = models("ssd300")
    image = make_images(1)[0]
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(ours, Path(folder) / "ssd300.onnx", with_postprocess=True)
        rows = provider_rows(path, image, device, repeats, section)
    model = ours.to(device)
    eager = median_seconds(lambda: model.predict(image), device, repeats)
    rows.append(
        {"model": "ssd300", "batch": 1, "runtime": f"predict fp32 on {device.type}", "ms": 1e3 * eager}
    )
    for row in rows:
        row["vs_predict"] = eager * 1e3 / row["ms"]
    section.rows += rows
