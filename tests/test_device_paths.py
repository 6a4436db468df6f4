"""What the CUDA paths depend on, tested where no GPU is: device placement, the AMP choice,
float16 arithmetic of the model (float16 runs on the CPU too, slowly)."""

import datetime
import os

import pytest
import torch

import singleshot
from singleshot.checkpoint import save_checkpoint
from singleshot.models.vgg import L2Norm
from singleshot.training import TrainConfig, train
from singleshot.training.data import make_train_loader
from singleshot.training.distributed import init_distributed, select_device
from singleshot.training.setup import resolve_amp
from train_fixtures import ShapesDataset, resize_flip, tiny_config


def test_load_puts_the_model_on_the_device_asked_for(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", singleshot.build_model("ssd160_compact", num_classes=3))
    model = singleshot.load(path, map_location="meta")  # a device as foreign to the CPU as CUDA is
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} == {"meta"}  # the priors and BatchNorm statistics
    assert not model.training


@pytest.mark.parametrize(
    ("mode", "native_bf16", "expected"),
    [
        ("auto", True, torch.bfloat16),  # Ampere and later
        ("auto", False, torch.float16),  # V100, T4: bf16 only emulated -> fp16 with the GradScaler
        ("bf16", False, torch.bfloat16),  # asked for explicitly
        ("fp16", True, torch.float16),
        ("none", True, None),
    ],
)
def test_amp_auto_takes_bf16_only_where_the_gpu_computes_it_natively(
    monkeypatch, mode, native_bf16, expected
):
    def is_bf16_supported(including_emulation=True):
        return native_bf16 or including_emulation  # every CUDA GPU can emulate bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_amp(mode, torch.device("cuda")) == expected
    assert resolve_amp(mode, torch.device("cpu")) is None


def test_l2norm_in_float16_keeps_all_zero_positions_finite():
    norm = L2Norm(8, scale=20.0)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 30
    x[0, :, 2, 3] = 0  # an all-zero conv4_3 position: 0 / max(0, eps); eps = 1e-10 is 0 in float16
    y = norm(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.equal(y[0, :, 2, 3], torch.zeros(8, dtype=torch.float16))
    # the float32 computation rounded once to float16
    assert torch.equal(y, norm(x.half().float()).half())


def test_priors_stay_float32_when_the_model_changes_dtype():
    model = singleshot.build_model("ssd160_compact", num_classes=3)
    priors = model.priors.clone()
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        converted = singleshot.build_model("ssd160_compact", num_classes=3).to(dtype)
        assert converted.priors.dtype == torch.float32 and torch.equal(converted.priors, priors)
        assert next(converted.parameters()).dtype == dtype
    assert singleshot.build_model("ssd160_compact", num_classes=3).half().float().priors.equal(priors)
    assert model.to("meta").priors.device.type == "meta"  # device moves still apply


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA as torch would report a node with two GPUs; set_device calls are recorded."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_each_torchrun_process_takes_its_local_ranks_gpu(two_gpus):
    assert select_device("cuda", local_rank=1, local_world_size=2) == torch.device("cuda", 1)
    assert select_device("auto", local_rank=0, local_world_size=2) == torch.device("cuda", 0)
    assert select_device("cuda:1") == torch.device("cuda", 1)  # one process: any GPU it names
    assert two_gpus == [torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 1)]


def test_gpus_shared_by_torchrun_processes_are_errors(two_gpus):
    with pytest.raises(ValueError, match="would put all 2 processes of this node on one GPU"):
        select_device("cuda:1", local_rank=0, local_world_size=2)
    with pytest.raises(ValueError, match="3 processes on this node but 2 GPU"):
        select_device("cuda", local_rank=2, local_world_size=3)
    assert two_gpus == []


def test_a_deterministic_run_turns_cuda_nondeterminism_off_and_restores_the_process(tmp_path):
    seen = []

    def recording_transform(image, target, generator=None):
        cudnn = torch.backends.cudnn
        seen.append((torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark,
                     cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))  # fmt: skip
        return resize_flip(image, target, generator)

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cuda.matmul.allow_tf32, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))  # fmt: skip
    config = tiny_config(tmp_path, iterations=2, deterministic=True)
    train(config, ShapesDataset(4), transform=recording_transform, progress=False)
    assert seen and set(seen) == {(True, True, False, False, False)}  # every op of the CPU run is allowed
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))  # fmt: skip
    assert after == before


def test_ddp_processes_wait_for_one_another_as_long_as_configured(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info, device = init_distributed("cpu", timeout_minutes=90)
    assert calls == [{"backend": "gloo", "timeout": datetime.timedelta(minutes=90)}]
    assert device == torch.device("cpu") and info.rank == 1 and info.world_size == 2
    assert TrainConfig().dist_timeout_minutes == 60  # not NCCL's 10, which rank 0's evaluation can outlast


class ReadLog:
    """ShapesDataset whose reads are appended, with the reading process's id, to a file."""

    def __init__(self, path, n=6):
        self.inner, self.path, self.classes = ShapesDataset(n), path, ShapesDataset.classes

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()} {index}\n")
        return self.inner[index]


def test_cached_images_are_decoded_once_for_all_loader_workers(tmp_path):
    dataset = ReadLog(tmp_path / "reads.txt")
    loader = make_train_loader(dataset, resize_flip, 2, seed=0, workers=2, cache_images=True)
    stream = iter(loader)
    for _ in range(9):  # three passes over the 6 images
        next(stream)
    del stream
    reads = [line.split() for line in (tmp_path / "reads.txt").read_text().splitlines()]
    assert sorted(int(index) for _, index in reads) == list(range(6))  # each image decoded once ...
    assert {pid for pid, _ in reads} == {str(os.getpid())}  # ... here, not in each worker
