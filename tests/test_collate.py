import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from singleshot.data.augment import EvalTransform, SSDAugmentation
from singleshot.data.collate import collate
from tolerances import rounding


def sample(value, n, image_id, size=4):
    x = torch.full((3, size, size), float(value))
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6]]).repeat(n, 1)
    return x, {"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64), "image_id": image_id}


def test_stacks_inputs_in_order_and_keeps_targets():
    batch = [sample(1, 2, "a"), sample(2, 0, "b"), sample(3, 1, "c")]
    x, targets = collate(batch)
    assert x.shape == (3, 3, 4, 4) and x.dtype == torch.float32
    assert x[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert [t["image_id"] for t in targets] == ["a", "b", "c"]
    assert [len(t["boxes"]) for t in targets] == [2, 0, 1]
    for target, (_, given) in zip(targets, batch):
        assert list(target) == list(given)  # the keys, in order
        for key in ("boxes", "labels"):
            assert target[key].dtype == given[key].dtype and torch.equal(target[key], given[key])
    # each key's tensors are views of one tensor: a worker's batch sends one storage per key
    for key in ("boxes", "labels"):
        storages = {t[key].untyped_storage().data_ptr() for t in targets}
        assert len(storages) == 1, key
    assert all(
        "boxes" in s[1]
        and s[1]["boxes"].untyped_storage().data_ptr()
        not in {t["boxes"].untyped_storage().data_ptr() for t in targets}
        for s in batch
    )  # inputs untouched


def test_targets_of_mixed_kinds_keep_their_tensors():
    # a key is joined only where every target holds a tensor of one dtype and row shape
    batch = [
        (
            torch.zeros(3, 4, 4),
            {"boxes": torch.ones(2, 4), "extra": torch.ones(2, 3), "score": torch.ones(1)},
        ),
        (torch.zeros(3, 4, 4), {"boxes": torch.ones(1, 4), "extra": torch.ones(1, 5), "score": 1.0}),
    ]
    _, targets = collate(batch)
    assert (
        targets[0]["boxes"].untyped_storage().data_ptr() == targets[1]["boxes"].untyped_storage().data_ptr()
    )
    for key in ("extra", "score"):
        assert targets[0][key] is batch[0][1][key] and targets[1][key] is batch[1][1][key]


@pytest.mark.parametrize(
    "batch, message",
    [
        ([], "empty"),
        ([sample(1, 1, "a"), sample(2, 1, "odd", size=5)], "sample 1 \\(image 'odd'\\)"),
        ([sample(1, 1, "a"), (torch.zeros(3, 4, 4, dtype=torch.float64), {})], "sample 1"),
        ([(torch.zeros(4, 4), {"image_id": 7})], "image 7"),
        ([(torch.zeros(3, 4, 4),)], "pair"),
    ],
)
def test_bad_batches_raise_value_error(batch, message):
    with pytest.raises(ValueError, match=message):
        collate(batch)


class Images(Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.sizes = [(20, 30), (40, 25), (16, 16), (33, 50), (24, 24)]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        image = torch.full((3, h, w), 10 * i, dtype=torch.uint8)
        boxes = torch.tensor([[0.0, 0.0, w / 2, h / 2]]) if i % 2 == 0 else torch.zeros(0, 4)
        target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "image_id": i}
        return self.transform(image, target)


@pytest.mark.parametrize("transform", [EvalTransform(12), SSDAugmentation(12)])
def test_with_dataloader_images_of_any_size(transform):
    torch.manual_seed(0)
    loader = DataLoader(Images(transform), batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert [x.shape for x, _ in batches] == [(2, 3, 12, 12), (2, 3, 12, 12), (1, 3, 12, 12)]
    targets = [t for _, ts in batches for t in ts]
    assert [t["image_id"] for t in targets] == [0, 1, 2, 3, 4]
    for t in targets:
        assert t["boxes"].shape[1] == 4 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    if isinstance(transform, EvalTransform):
        # uniform images: every input pixel is 10 i minus the mean; boxes halve the image
        # bilinear weights rounded (their sum 1 within 2 EPS) times pixels <= 40, four
        # products and three sums, then the mean's subtraction: <= 8 roundings at <= 255
        for i, x in enumerate(torch.cat([x for x, _ in batches])):
            expected = (10.0 * i - torch.tensor(transform.mean).view(3, 1, 1)).expand_as(x)
            torch.testing.assert_close(x, expected, atol=rounding(255, ops=8), rtol=0)
        assert targets[0]["boxes"].tolist() == [[0.0, 0.0, 0.5, 0.5]]
