"""Small in-memory detection data for the training tests (and the DDP worker script).

Images are 64 x 64 with two bright rectangles on a dark background; the transform
resizes to the compact preset's 160 px, subtracts the mean and flips with the
generator it is given, so the training stream's seeding is exercised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from singleshot.training import TrainConfig

MEAN = torch.tensor([123.0, 117.0, 104.0]).view(3, 1, 1)


class ShapesDataset:
    """``n`` images with 2 objects each; classes red and green; ``poison`` ids give inf images."""

    classes = ["__background__", "red", "green"]

    def __init__(self, n: int, size: int = 64, seed: int = 0, poison: tuple[int, ...] = ()) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image = torch.full((3, size, size), 40, dtype=torch.uint8)
            boxes, labels = [], []
            for _ in range(2):
                w, h = torch.randint(size // 5, size // 2, (2,), generator=g).tolist()
                x, y = torch.randint(0, size - size // 2, (2,), generator=g).tolist()
                label = int(torch.randint(1, 3, (1,), generator=g))
                image[label - 1, y : y + h, x : x + w] = 220
                boxes.append([x, y, x + w, y + h])
                labels.append(label)
            image_id = f"poison{i}" if i in poison else f"img{i}"
            target = {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels),
                "difficult": torch.zeros(2, dtype=torch.bool),
                "image_id": image_id,
            }
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def resize_flip(image, target, generator=None, size: int = 160):
    """uint8 (3, H, W) + target in pixels -> (x float (3, size, size), boxes as fractions)."""
    h, w = image.shape[-2:]
    x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0] - MEAN
    boxes = target["boxes"] / torch.tensor([w, h, w, h], dtype=torch.float32)
    if generator is not None and float(torch.rand((), generator=generator)) < 0.5:
        x = x.flip(-1)
        boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    if str(target["image_id"]).startswith("poison"):
        x = torch.full_like(x, float("inf"))
    return x, {**target, "boxes": boxes}


def tiny_config(out, **changes) -> TrainConfig:
    """The compact preset, batch 4, SGD with cosine schedule, no evaluation, CPU."""
    config = TrainConfig(
        model="ssd160_compact",
        out=str(out),
        batch_size=4,
        iterations=8,
        workers=0,
        device="cpu",
        log_every=2,
        checkpoint_every=100,
        val_split=None,
    )
    config.optimizer.lr = 0.02
    config.schedule.name = "cosine"
    config.schedule.warmup_iterations = 2
    for key, value in changes.items():
        setattr(config, key, value)
    return config
