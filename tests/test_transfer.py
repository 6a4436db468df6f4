"""`pack_samples` / `unpack_samples`: a worker's batch in one tensor, given back unchanged."""

import torch
from torch.utils.data import DataLoader, Dataset

from singleshot.data.transfer import PackedSamples, pack_samples, unpack_samples


def _sample(index, height, width, generator):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    count = index % 3  # 0, 1 or 2 objects
    target = {
        "boxes": torch.rand(count, 4, generator=generator) * 100,
        "labels": torch.arange(1, count + 1),
        "difficult": torch.arange(count) % 2 == 1,
        "area": torch.rand(count, generator=generator, dtype=torch.float64),
        "weights": torch.ones(count, dtype=torch.bfloat16),  # numpy has no bfloat16: stays a tensor
        "image_id": f"img_{index}",
        "size": (height, width),
    }
    return image, target


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, (list, tuple)):
        return sum(_tensors(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensors(v) for v in value.values())
    return 0


def _assert_same_samples(got, expected):
    assert len(got) == len(expected)
    for (image, target), (want_image, want_target) in zip(got, expected):
        assert image.dtype == want_image.dtype and torch.equal(image, want_image)
        assert list(target) == list(want_target)  # the keys, in order
        for key, value in want_target.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(target[key], torch.Tensor) and target[key].dtype == value.dtype, key
                assert target[key].shape == value.shape and torch.equal(target[key], value), key
            else:
                assert target[key] == value, key


def test_round_trip_gives_back_the_samples_and_sends_one_tensor():
    generator = torch.Generator().manual_seed(0)
    batch = [_sample(i, h, w, generator) for i, (h, w) in enumerate([(375, 500), (7, 5), (300, 300)])]
    packed = pack_samples(batch)
    # the three images in one tensor, the bfloat16 weights as themselves, the rest as numpy
    assert packed.pixels is not None and packed.pixels.numel() == 3 * (375 * 500 + 7 * 5 + 300 * 300)
    assert _tensors(packed) == 1 + 3
    _assert_same_samples(unpack_samples(packed), batch)


def test_images_of_mixed_dtypes_travel_as_they_are():
    generator = torch.Generator().manual_seed(1)
    batch = [_sample(0, 4, 6, generator), _sample(1, 5, 3, generator)]
    batch[1] = (batch[1][0].float(), batch[1][1])
    packed = pack_samples(batch)
    assert packed.pixels is None and packed.images[1].dtype == torch.float32
    _assert_same_samples(unpack_samples(packed), batch)


class _Samples(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return _sample(index, 20 + index, 30 - index, torch.Generator().manual_seed(index))


def test_through_worker_processes_in_order():
    dataset = _Samples()
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=pack_samples)
    received = list(loader)
    assert all(isinstance(batch, PackedSamples) for batch in received)
    got = [sample for batch in received for sample in unpack_samples(batch)]
    _assert_same_samples(got, [dataset[i] for i in range(len(dataset))])
