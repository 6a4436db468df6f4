"""Host syncs: what the loss and a training step read back from the device.

On a GPU each read of a value (``.item()``, ``bool(t)``, a shape set by ``nonzero``) waits
for all the work queued before it. The loss and matching use forms without reads where
the values live on a device (masks instead of gathers, a stable sort instead of a
``topk`` of a read length, a choice made by ``torch.where``), and keep the faster forms
that read on the CPU, where a read costs nothing. Tested here: the device forms compute
what the CPU forms compute (run on the CPU with the choice forced), and on the ``meta``
device, which stands in for a GPU (see ``device_reads.py``), the loss reads nothing and a
training step reads once.
"""

import math
import time

import pytest
import torch

import singleshot.boxes as boxes_module
import singleshot.loss as loss_module
from device_reads import DeviceReads
from singleshot.boxes import cxcywh_to_xyxy, match_indices, pad_targets
from singleshot.loss import MultiBoxLoss, background_nll, mine_hard_negatives
from singleshot.training.data import make_train_loader
from singleshot.training.optim import build_optimizer
from singleshot.training.schedule import LRSchedule
from singleshot.training.trainer import Trainer
from test_loss import make_case
from tolerances import reduction
from train_fixtures import ShapesDataset, resize_flip, tiny_config


def force_device_forms(monkeypatch):
    """Run the forms the matching and the loss use on a GPU, here on the CPU."""
    for module in (boxes_module, loss_module):
        monkeypatch.setattr(module, "host_reads_are_free", lambda tensor: False)


@pytest.fixture
def device_forms(monkeypatch):
    force_device_forms(monkeypatch)


def test_matching_device_form_is_bitwise_the_cpu_form(monkeypatch):
    """Masked IoU over the padded rows against the gathered real rows: the same matches,
    with first-index ties and a prior shared as best by two ground truths."""
    g = torch.Generator().manual_seed(2)
    priors = torch.cat([torch.rand(300, 2, generator=g), 0.05 + 0.4 * torch.rand(300, 2, generator=g)], 1)
    boxes = []
    for n in (3, 0, 5, 1):
        centre, size = 0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        boxes.append(cxcywh_to_xyxy(torch.cat([centre, size], 1)))
    boxes[2][3] = boxes[2][1]  # two equal boxes: the same best prior, the later one wins it
    labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
    padded, _, valid = pad_targets(boxes, labels)
    priors_xyxy = cxcywh_to_xyxy(priors)
    expected = match_indices(padded, valid, priors_xyxy)
    force_device_forms(monkeypatch)
    got = match_indices(padded, valid, priors_xyxy)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert expected[1][2].sum() > 0 and not expected[1][1].any()


@pytest.mark.parametrize("kind", ["ordinary", "overflow", "underflow"])
def test_background_nll_device_form_is_bitwise_the_cpu_form(monkeypatch, kind):
    conf = 3 * torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(0))
    if kind == "overflow":
        conf[1, 7, 2] = 200.0  # exp overflows: the shifted form for every row
    if kind == "underflow":
        conf[2, 3] = -300.0  # a whole row underflows
    expected = background_nll(conf)
    force_device_forms(monkeypatch)
    assert torch.equal(background_nll(conf), expected)
    assert torch.isfinite(expected).all()


def test_mining_device_form_chooses_the_cpu_forms_negatives(monkeypatch):
    g = torch.Generator().manual_seed(1)
    background = torch.rand(4, 300, generator=g)  # no ties
    positive = torch.rand(4, 300, generator=g) < torch.tensor([0.0, 0.01, 0.05, 0.5])[:, None]
    expected = mine_hard_negatives(background, positive, 3)
    force_device_forms(monkeypatch)
    got = mine_hard_negatives(background, positive, 3)
    assert torch.equal(got, expected)
    counts = torch.minimum(3 * positive.sum(1), 300 - positive.sum(1))
    assert got.sum(1).tolist() == counts.tolist() and not (got & positive).any()


def test_mining_device_form_gives_equal_losses_to_the_lower_prior_index(device_forms):
    background = torch.tensor([[0.5, 0.7, 0.5, 0.5, 0.9, 0.5, 0.1]])
    positive = torch.tensor([[False, False, False, False, True, False, False]])
    # 3 negatives: 0.7, then two of the four 0.5s: the first two by index
    assert mine_hard_negatives(background, positive, 3).nonzero()[:, 1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("counts", [(2, 1, 3), (0, 4), (0, 0)])
def test_loss_device_form_has_the_cpu_forms_gradients_bit_for_bit(monkeypatch, counts):
    results = []
    for device_form in (False, True):
        if device_form:
            force_device_forms(monkeypatch)
        loc, conf, priors, targets = make_case(5, counts)
        loc.requires_grad_(True)
        conf.requires_grad_(True)
        loss_l, loss_c = MultiBoxLoss(4)(loc, conf, priors, targets)
        (loss_l + loss_c).backward()
        results.append((loss_l.detach(), loss_c.detach(), loc.grad, conf.grad))
    (cpu_l, cpu_c, cpu_gl, cpu_gc), (dev_l, dev_c, dev_gl, dev_gc) = results
    assert torch.equal(dev_gl, cpu_gl) and torch.equal(dev_gc, cpu_gc)
    # the sums add the same terms in another order (plus exact zeros)
    batch, priors = loc.shape[:2]
    assert dev_l.item() == pytest.approx(cpu_l.item(), rel=2 * reduction(4 * batch * priors, 1.0), abs=0)
    assert dev_c.item() == pytest.approx(cpu_c.item(), rel=2 * reduction(batch * priors, 1.0), abs=0)
    if sum(counts) == 0:
        assert dev_l.item() == dev_c.item() == 0.0


def test_the_loss_reads_nothing_from_the_device():
    loc, conf, priors, targets = make_case(3, (2, 0, 3))  # targets stay in host memory
    meta = torch.device("meta")
    loc, conf = loc.to(meta).requires_grad_(True), conf.to(meta).requires_grad_(True)
    with DeviceReads() as reads:
        loss_l, loss_c = MultiBoxLoss(4)(loc, conf, priors.to(meta), targets)
        (loss_l + loss_c).backward()
    assert reads.calls == []
    assert loc.grad.shape == loc.shape and conf.grad.device == meta


def test_the_loss_still_checks_host_targets_before_touching_the_device():
    loc, conf, priors, targets = make_case(2, (1, 2))
    targets[1]["labels"][0] = 9
    meta = torch.device("meta")
    with DeviceReads() as reads, pytest.raises(ValueError, match=r"image 1 of the batch: labels must be in"):
        MultiBoxLoss(4)(loc.to(meta), conf.to(meta), priors.to(meta), targets)
    assert reads.calls == []


def test_a_training_step_reads_the_device_once(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, ShapesDataset(8), transform=resize_flip, progress=False)
    batch = next(iter(make_train_loader(trainer.train_dataset, resize_flip, 4, seed=0)))
    trainer.model.to("meta")
    trainer.device = torch.device("meta")
    trainer.optimizer = build_optimizer(trainer.model, config.optimizer)  # over the moved parameters
    trainer.schedule = LRSchedule(trainer.optimizer, config.schedule, config.iterations)
    trainer.batches = iter([batch])
    trainer.start, trainer.budget_s = time.perf_counter(), math.inf
    with DeviceReads() as reads:
        trainer.run_step()
    # one copy of (non-finite flag, time spent, loss_loc, loss_conf) to the host
    assert reads.calls == ["aten._to_copy.default"]
    assert trainer.step_losses == (0.0, 0.0) and not trainer.over_budget
    momentum = [trainer.optimizer.state[p].get("momentum_buffer") for p in trainer.model.parameters()]
    assert all(m is not None and m.device.type == "meta" for m in momentum)  # the update ran
