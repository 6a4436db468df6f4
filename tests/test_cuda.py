"""What only a GPU can show: the CUDA paths against fp32, the CPU and themselves.

Marked ``cuda``: they skip where no CUDA device is (``benchmarks/gpu_check.py`` runs them
first on a GPU; ``pytest -m cuda`` alone). Each states its tolerance and can fail.
"""

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch

import singleshot
from singleshot.loss import MultiBoxLoss
from singleshot.postprocess import detect
from singleshot.training import train
from singleshot.training.data import make_train_loader
from singleshot.training.trainer import Trainer
from test_loss import make_case
from tolerances import reduction
from train_fixtures import ShapesDataset, resize_flip, tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TESTS = Path(__file__).parent
CUDA = torch.device("cuda")

# AMP against fp32, each training step's loss terms at the same weights, relative: bf16 keeps
# 8 significant bits (0.4% per rounding), fp16 11 (0.05%). On the CPU's autocast the first
# step differed by 0.24% (bf16) and 0.017% (fp16): these allow 8x and 30x that.
AMP_LOSS_TOLERANCE = {"bf16": 0.02, "fp16": 0.005}
# predict in fp16 against fp32: fp32 detections scoring >= FP16_MIN_SCORE that fp16 finds
# with the same label, every box side within FP16_BOX_PX pixels and the score within
# FP16_SCORE: at least FP16_SHARE of them.
FP16_MIN_SCORE, FP16_BOX_PX, FP16_SCORE, FP16_SHARE = 0.05, 1.0, 0.01, 0.98


def biased_ssd300(seed: int = 0):
    """``ssd300_voc`` with random weights and the background logit raised by 7, so that its
    scores look like a trained model's (a few hundred candidates per class above 0.01)."""
    torch.manual_seed(seed)
    model = singleshot.build_model("ssd300_voc").eval()
    with torch.no_grad():
        for conv in model.head.conf:
            conv.bias.view(-1, model.num_classes)[:, 0] += 7.0
    return model


def smooth_images(count: int, seed: int = 3):
    """uint8 (3, 375, 500) images: blurred noise, VOC-sized."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 24, 32, generator=g) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)
    noisy = fine + torch.randn(count, 3, 375, 500, generator=g) * 8
    return list(noisy.clamp(0, 255).to(torch.uint8))


def share_found(reference, got, min_score, box_px, score_tol):
    """Share of ``reference``'s detections scoring >= min_score that ``got`` has: same label,
    box sides within box_px, score within score_tol. (share, how many were compared)."""
    found = total = 0
    for ref, det in zip(reference, got):
        keep = ref["scores"] >= min_score
        boxes, scores, labels = ref["boxes"][keep], ref["scores"][keep], ref["labels"][keep]
        total += len(scores)
        if not len(scores) or not len(det["scores"]):
            continue
        close = (boxes[:, None] - det["boxes"][None]).abs().amax(-1) <= box_px
        close &= (scores[:, None] - det["scores"][None]).abs() <= score_tol
        close &= labels[:, None] == det["labels"][None]
        found += int(close.any(1).sum())
    return found / max(total, 1), total


@contextmanager
def full_fp32():
    """TF32 off (cuDNN and matmul) inside the block, restored after it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def fp32_loss(trainer, batch):
    """The (loc, conf) loss of ``batch`` at the trainer's current weights, in full fp32."""
    x, targets = batch
    with full_fp32(), torch.no_grad():
        loc, conf = trainer.model(x.to(CUDA))
        return [t.item() for t in trainer.criterion(loc, conf, trainer.model.priors, targets)]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps_are_finite_and_close_to_fp32(tmp_path, amp):
    """4 steps of SSD300 (no BatchNorm: an extra forward changes nothing) under AMP; each step's
    loss terms against fp32's at the same weights. (Comparing with a separate fp32 run would
    compare trajectories: the GradScaler skips fp16's first steps while it lowers its scale.)"""
    config = tiny_config(tmp_path, model="ssd300_voc", device="cuda", amp=amp)
    config.optimizer.lr = 1e-4
    transform = partial(resize_flip, size=300)
    trainer = Trainer(config, ShapesDataset(8), transform=transform, progress=False)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    trainer.start, trainer.budget_s = 0.0, float("inf")
    batches = iter(make_train_loader(trainer.train_dataset, transform, 4, seed=0))
    for step in range(4):
        batch = next(batches)
        reference = fp32_loss(trainer, batch)
        trainer.batches = iter([batch])
        trainer.iteration = step
        trainer.run_step()
        assert trainer.step_losses is not None, (amp, step)  # finite
        for mixed, exact in zip(trainer.step_losses, reference):
            assert abs(mixed - exact) <= AMP_LOSS_TOLERANCE[amp] * abs(exact), (amp, step, mixed, exact)


def test_predict_in_fp16_finds_the_fp32_detections():
    images = smooth_images(4)
    model = biased_ssd300().to(CUDA)
    with full_fp32():
        reference = model.predict(images)
    half = biased_ssd300().to(CUDA).half()
    got = half.predict(images)
    share, compared = share_found(reference, got, FP16_MIN_SCORE, FP16_BOX_PX, FP16_SCORE)
    assert compared >= 20  # the comparison has something to compare
    assert share >= FP16_SHARE, (share, compared)
    assert all(torch.isfinite(d["scores"]).all() and torch.isfinite(d["boxes"]).all() for d in got)


def test_channels_last_gives_the_outputs_of_nchw():
    x = torch.randn(4, 3, 300, 300, generator=torch.Generator().manual_seed(0)).to(CUDA) * 60
    model = biased_ssd300().to(CUDA)
    with full_fp32(), torch.no_grad():
        model.channels_last = False
        nchw = model(x)
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
        last = model(x)
    for a, b in zip(last, nchw):
        # another cuDNN algorithm: the convolutions' sums in another order, through 15+ layers
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=0, atol=reduction(4608, scale) * 15)


def test_loss_on_cuda_equals_the_cpus():
    loc, conf, priors, targets = make_case(9, (3, 0, 5, 1), num_priors=400, num_classes=6)
    results = {}
    for device in ("cpu", "cuda"):
        l = loc.to(device).requires_grad_(True)
        c = conf.to(device).requires_grad_(True)
        loss_l, loss_c = MultiBoxLoss(6)(l, c, priors.to(device), targets)  # host targets, as the trainer
        (loss_l + loss_c).backward()
        results[device] = [t.detach().cpu() for t in (loss_l, loss_c, l.grad, c.grad)]
    (cpu_l, cpu_c, cpu_gl, cpu_gc), (gpu_l, gpu_c, gpu_gl, gpu_gc) = results["cpu"], results["cuda"]
    # the same positives and mined negatives: the same rows receive gradients
    assert torch.equal(cpu_gl != 0, gpu_gl != 0) and torch.equal(cpu_gc != 0, gpu_gc != 0)
    rows = loc.shape[0] * loc.shape[1]
    assert gpu_l.item() == pytest.approx(cpu_l.item(), rel=2 * reduction(4 * rows, 1.0))
    assert gpu_c.item() == pytest.approx(cpu_c.item(), rel=2 * reduction(rows, 1.0))
    # elementwise gradients; exp and log may differ by an ulp between the two libraries
    torch.testing.assert_close(gpu_gl, cpu_gl, rtol=4e-6, atol=1e-9)
    torch.testing.assert_close(gpu_gc, cpu_gc, rtol=4e-6, atol=1e-9)


def test_post_processing_on_cuda_equals_the_cpus():
    g = torch.Generator().manual_seed(4)
    model = singleshot.build_model("ssd300_voc")
    loc = torch.randn(2, len(model.priors), 4, generator=g) * 0.5
    logits = torch.randn(2, len(model.priors), 21, generator=g) * 2
    logits[..., 0] += 4.0
    scores = logits.softmax(-1)
    settings = {"score_threshold": 0.01, "nms_threshold": 0.45, "pre_nms_top_k": 200, "max_detections": 200}
    on_cpu = detect(loc, scores, model.priors, **settings)
    on_gpu = detect(loc.to(CUDA), scores.to(CUDA), model.priors.to(CUDA), **settings)
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert len(cpu["scores"]) > 100
        assert torch.equal(gpu["labels"].cpu(), cpu["labels"])
        assert torch.equal(gpu["scores"].cpu(), cpu["scores"])
        torch.testing.assert_close(gpu["boxes"].cpu(), cpu["boxes"], rtol=0, atol=1e-6)  # decode's exp


def test_resume_on_cuda_is_exact_with_the_deterministic_setting(tmp_path):
    def run(out, **kwargs):
        config = tiny_config(out, device="cuda", amp="fp16", iterations=6, deterministic=True)
        return train(config, ShapesDataset(10), transform=resize_flip, progress=False, **kwargs)

    whole = run(tmp_path / "whole")
    run(tmp_path / "split", stop_at=3)
    resumed = run(tmp_path / "split", resume=tmp_path / "split" / "last.pt")
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in whole.history][-1] == [r["loss"] for r in resumed.history][-1]


def test_ddp_with_nccl_under_torchrun_equals_a_plain_run(tmp_path):
    """One process under torchrun, its process group on NCCL: the step's all-reduce, the
    evaluation's gather and broadcast, and a DDP-wrapped step run on NCCL."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, TMPDIR=str(tmp_path))  # torchrun's folders
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(TESTS / "ddp_cuda_worker.py"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from ddp_cuda_worker import cuda_config

    plain = train(cuda_config(tmp_path / "plain"), ShapesDataset(12), ShapesDataset(5, seed=3),
                  transform=resize_flip, progress=False)  # fmt: skip
    under_nccl = torch.load(tmp_path / "nccl.pt", weights_only=True)
    assert under_nccl.pop("_map").item() == plain.metrics["map"]
    assert under_nccl.pop("_ddp_step_equal").item()
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor.cpu(), under_nccl[name]), name


@pytest.mark.parametrize(("amp", "reads"), [("bf16", 1), ("fp16", 2)])
def test_a_training_step_syncs_with_the_host_as_stated(tmp_path, amp, reads):
    """One read per step (loss terms, non-finite flag, time spent); fp16 adds the GradScaler's
    check for inf gradients."""
    config = tiny_config(tmp_path, device="cuda", amp=amp)
    trainer = Trainer(config, ShapesDataset(8), transform=resize_flip, progress=False)
    loader = make_train_loader(trainer.train_dataset, resize_flip, 4, seed=0, pin_memory=True)
    trainer.batches = iter(loader)
    trainer.start, trainer.budget_s = 0.0, float("inf")
    trainer.run_step()  # warm-up: cuDNN and the allocator settle
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.run_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == reads, syncs


def test_optimize_for_inference_on_the_gpu_keeps_the_detections():
    """On CUDA the copy gets no Winograd and no folding unless asked, and the memory format of
    a trial on the GPU; in fp32 (TF32 off) its detections are the model's to rounding, and with
    ``dtype=torch.float16`` they find fp32's as a plain ``.half()`` model does."""
    images = smooth_images(2)
    model = biased_ssd300().to(CUDA)
    fast = model.optimize_for_inference(batch_size=2)
    report = fast.optimizations
    assert report.device.startswith("cuda") and report.winograd_convs == () and report.fused_batch_norms == ()
    assert report.layout.source in ("measured", "cached") and report.layout.trial_batch == 2
    with pytest.raises(ValueError, match="winograd=True: Winograd convolutions are for float32 on the CPU"):
        model.optimize_for_inference(winograd=True)
    with full_fp32():
        reference = model.predict(images)
        got = fast.predict(images)
    # cuDNN may pick other algorithms per layout: float32 sums in another order
    share, compared = share_found(reference, got, FP16_MIN_SCORE, 0.05, 1e-3)
    assert compared >= 10 and share >= FP16_SHARE, (share, compared)
    half = model.optimize_for_inference(dtype=torch.float16, batch_size=2)
    assert next(half.parameters()).dtype == torch.float16 and half.optimizations.dtype == "torch.float16"
    share, compared = share_found(reference, half.predict(images), FP16_MIN_SCORE, FP16_BOX_PX, FP16_SCORE)
    assert compared >= 10 and share >= FP16_SHARE, (share, compared)


def test_a_torchscript_export_with_postprocessing_made_on_cuda_runs_there(tmp_path):
    """export_torchscript exports on the model's device: the graph's decoder constants and the
    NMS table must live there too; its detections are the CPU export's to rounding."""
    from singleshot.export import TorchScriptDetector, export_torchscript

    model = biased_ssd300()
    images = smooth_images(2)
    on_cpu = TorchScriptDetector(export_torchscript(model, tmp_path / "cpu.pt", with_postprocess=True))
    path = export_torchscript(model.to(CUDA), tmp_path / "cuda.pt", with_postprocess=True)
    on_gpu = TorchScriptDetector(path, device="cuda")
    with full_fp32():
        reference, got = on_cpu.predict(images), on_gpu.predict(images)
    got = [{name: d[name].cpu() for name in ("boxes", "scores", "labels")} for d in got]
    assert sum(len(d["scores"]) for d in reference) >= 10
    share, compared = share_found(reference, got, FP16_MIN_SCORE, 0.05, 1e-3)
    assert compared >= 10 and share >= FP16_SHARE, (share, compared)
