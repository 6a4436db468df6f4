"""Training-data speed: decoded-and-augmented samples per second on one core.

    .venv/bin/python benchmarks/bench_data.py [--images 48] [--samples 240] [--repeats 5]
                                             [--size 300] [--threads 1] [--quick]

Writes ``--images`` synthetic JPEG files (500 x 375, quality 90, 1-5 boxed shapes each)
into a temporary folder, then measures two pipelines on the same files, both reading
each file with `singleshot.imageio.read_image` (torchvision.io's libjpeg-turbo decode):

- singleshot: `SSDAugmentation` (the paper's pipeline, ending in the normalised
  float32 (3, S, S) model input and boxes as fractions);
- torchvision: its reference "ssd" augmentation preset (references/detection/presets.py)
  composed from transforms.v2: RandomPhotometricDistort, RandomZoomOut(fill=mean),
  RandomIoUCrop, RandomHorizontalFlip, then Resize to S x S (bilinear, no antialias, as
  torchvision's SSD transform does), SanitizeBoundingBoxes, ToDtype(float32) and
  Normalize(mean, std=1), boxes divided by S: the same output.

Each repeat times ``--samples`` samples of each pipeline, alternately, so that load from
other processes falls on both alike; the table gives the median samples/s and the
ratio (> 1 = singleshot is faster). Then one more pass times each stage separately to
show where the time goes. glibc's malloc is tuned first (`singleshot.runtime.tune_malloc`,
as the ``singleshot`` command does), for both pipelines.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from tqdm import tqdm

from singleshot.data.augment import SSDAugmentation, transform_boxes
from singleshot.data.geometric import resize_bilinear, visible_region
from singleshot.data.photometric import apply_photometric
from singleshot.imageio import read_image
from singleshot.runtime import tune_malloc

MEAN = (123.0, 117.0, 104.0)
WIDTH, HEIGHT = 500, 375


def write_dataset(folder: Path, count: int, seed: int = 0) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    """``count`` JPEG files with shapes on a noisy gradient; returns (path, target) pairs."""
    rng = np.random.default_rng(seed)
    items = []
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in tqdm(range(count), desc="writing JPEG files", leave=False):
        base = rng.uniform(40, 200, size=3)
        slope = rng.uniform(-0.2, 0.2, size=(3, 2))
        pixels = base + slope[:, 0] * xx[..., None] + slope[:, 1] * yy[..., None]
        pixels = np.clip(pixels + rng.normal(0, 12, size=pixels.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        boxes = []
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(30, 250), rng.uniform(30, 200)
            x0, y0 = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x0 + w, y0 + h], fill=colour)
            boxes.append([x0, y0, x0 + w, y0 + h])
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.randint(1, 21, (len(boxes),)),
            "difficult": torch.zeros(len(boxes), dtype=torch.bool),
            "image_id": path.stem,
        }
        items.append((path, target))
    return items


def torchvision_transforms(size: int) -> list:
    """torchvision's reference "ssd" preset, ending in the same model input as ours."""
    return [
        T.RandomPhotometricDistort(p=0.5),
        T.RandomZoomOut(fill=[int(m) for m in MEAN], side_range=(1.0, 4.0), p=0.5),
        T.RandomIoUCrop(),
        T.RandomHorizontalFlip(p=0.5),
        T.Resize((size, size), antialias=False),
        T.SanitizeBoundingBoxes(),
        T.ToDtype(torch.float32),
        T.Normalize(mean=list(MEAN), std=[1.0, 1.0, 1.0]),
    ]


def torchvision_inputs(image: torch.Tensor, target: dict) -> tuple:
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return tv_tensors.Image(image), {"boxes": boxes, "labels": target["labels"]}


def run_ours(items, aug: SSDAugmentation, count: int, seed: int) -> None:
    for k in range(count):
        path, target = items[k % len(items)]
        aug(read_image(path), target, generator=torch.Generator().manual_seed(seed + k))


def run_torchvision(items, transform, size: int, count: int) -> None:
    for k in range(count):
        path, target = items[k % len(items)]
        x, out = transform(*torchvision_inputs(read_image(path), target))
        out["boxes"].as_subclass(torch.Tensor) / size


class Stopwatch:
    """Accumulates seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.last
        self.last = now


def breakdown_ours(items, aug: SSDAugmentation, count: int, seed: int) -> dict[str, float]:
    """Our pipeline stage by stage: the steps of `SSDAugmentation.__call__` and `render`,
    checked to give the same input as the real call."""
    mean = torch.tensor(aug.mean).view(3, 1, 1)
    size = aug.size
    watch = Stopwatch()
    for k in range(count):
        path, target = items[k % len(items)]
        watch.last = time.perf_counter()
        image = read_image(path)
        watch.lap("decode")
        height, width = image.shape[-2:]
        plan = aug.plan(width, height, target["boxes"], torch.Generator().manual_seed(seed + k))
        watch.lap("random draws, expand + crop search")
        region = visible_region(width, height, plan.expansion, plan.crop.rect, size)
        if region is None:
            canvas = torch.zeros(3, size, size)
        else:
            (sx0, sy0, sx1, sy1), (dx0, dy0, dx1, dy1) = region
            patch = resize_bilinear(image[:, sy0:sy1, sx0:sx1], dy1 - dy0, dx1 - dx0)
            if (dx0, dy0, dx1, dy1) == (0, 0, size, size):
                canvas = view = patch
            else:
                canvas = mean.expand(3, size, size).clone()
                view = canvas[:, dy0:dy1, dx0:dx1]
                view.copy_(patch)
            watch.lap("crop + resize (+ expansion fill)")
            if not plan.photometric.identity:
                apply_photometric(view, plan.photometric)
            watch.lap("photometric")
            if plan.flip:
                canvas = canvas.flip(-1)
            watch.lap("flip")
            canvas.sub_(mean)
        watch.lap("normalise")
        boxes = transform_boxes(target["boxes"], plan)
        {**target, "boxes": boxes, "labels": target["labels"][plan.crop.keep]}
        watch.lap("boxes + target")
        if k < 3:
            expected, _ = aug(image, target, generator=torch.Generator().manual_seed(seed + k))
            assert torch.equal(canvas, expected), "the breakdown no longer follows SSDAugmentation"
            watch.last = time.perf_counter()
    return {name: seconds / count for name, seconds in watch.seconds.items()}


def breakdown_torchvision(items, transforms: list, size: int, count: int) -> dict[str, float]:
    watch = Stopwatch()
    for k in range(count):
        path, target = items[k % len(items)]
        watch.last = time.perf_counter()
        sample = torchvision_inputs(read_image(path), target)
        watch.lap("decode")
        for transform in transforms:
            sample = transform(*sample)
            watch.lap(type(transform).__name__)
        sample[1]["boxes"].as_subclass(torch.Tensor) / size
        watch.lap("boxes / size")
    return {name: seconds / count for name, seconds in watch.seconds.items()}


def print_breakdown(title: str, stages: dict[str, float]) -> None:
    total = sum(stages.values())
    print(f"\n{title}: {total * 1e3:.2f} ms per sample")
    for name, seconds in stages.items():
        print(f"  {name:<36} {seconds * 1e3:7.2f} ms  {100 * seconds / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=48, help="JPEG files written and cycled through (default 48)"
    )
    parser.add_argument(
        "--samples", type=int, default=240, help="samples per timed run of each pipeline (default 240)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each pipeline; the median is shown"
    )
    parser.add_argument(
        "--size", type=int, default=300, help="output side S of the model input (default 300)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the files and of both pipelines")
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 images, 24 samples, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.images, args.samples, args.repeats = 8, 24, 2

    tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    aug = SSDAugmentation(size=args.size, mean=MEAN)
    transforms = torchvision_transforms(args.size)
    transform = T.Compose(transforms)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        items = write_dataset(Path(folder), args.images, args.seed)
        run_ours(items, aug, min(8, args.samples), args.seed)  # warm-up
        run_torchvision(items, transform, args.size, min(8, args.samples))
        ours, theirs = [], []
        for r in tqdm(range(args.repeats), desc="timing", leave=False):
            start = time.perf_counter()
            run_ours(items, aug, args.samples, args.seed + r * args.samples)
            ours.append(args.samples / (time.perf_counter() - start))
            start = time.perf_counter()
            run_torchvision(items, transform, args.size, args.samples)
            theirs.append(args.samples / (time.perf_counter() - start))
        stages_ours = breakdown_ours(items, aug, args.samples, args.seed)
        stages_theirs = breakdown_torchvision(items, transforms, args.size, args.samples)

    ours_rate, theirs_rate = statistics.median(ours), statistics.median(theirs)
    print(
        f"decode + augment, {WIDTH}x{HEIGHT} JPEG -> {args.size}x{args.size} model input, "
        f"{args.threads} thread(s), median of {args.repeats} x {args.samples} samples"
    )
    print(f"{'pipeline':<34} {'samples/s':>10} {'ms/sample':>10}")
    print(f"{'singleshot SSDAugmentation':<34} {ours_rate:10.1f} {1e3 / ours_rate:10.2f}")
    print(f"{'torchvision v2 reference ssd':<34} {theirs_rate:10.1f} {1e3 / theirs_rate:10.2f}")
    print(f"{'ratio (singleshot / torchvision)':<34} {ours_rate / theirs_rate:10.2f}")
    print_breakdown("singleshot, where the time goes", stages_ours)
    print_breakdown("torchvision, where the time goes", stages_theirs)


if __name__ == "__main__":
    main()
