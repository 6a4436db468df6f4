"""`singleshot.weights.build`: what ``singleshot convert`` does, called from Python."""

import pytest
import torch

import singleshot
from singleshot import weights
from singleshot.cli import main


@pytest.fixture(scope="module")
def donor():
    torch.manual_seed(2)
    return singleshot.build_model("ssd300_voc")


@pytest.fixture(scope="module")
def reduced(donor):
    """The donor's base network in the vgg16_reducedfc.pth layout ("0.weight" ... "33.bias")."""
    return {
        f"{index}.{param}": tensor
        for key, tensor in weights.to_source(donor.state_dict(), "ssd.pytorch").items()
        if key.startswith("vgg.")
        for _, index, param in [key.split(".")]
    }


def test_model_from_vgg16_is_seeded_and_leaves_the_rng_alone(donor, reduced, tmp_path):
    source = tmp_path / "vgg16_reducedfc.pth"
    torch.save(reduced, source)
    before = torch.get_rng_state()
    model = weights.model_from_vgg16(source, num_classes=4, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.preset == "ssd300_voc" and model.num_classes == 4
    assert torch.equal(model.backbone.to_conv7.conv6.weight, donor.backbone.to_conv7.conv6.weight)
    # the same seed: the same extras and heads, as the command writes them
    out = tmp_path / "cli.pt"
    args = ["convert", "--from", "vgg16", str(source), str(out), "--num-classes", "4", "--seed", "3"]
    assert main(args) == 0
    written = singleshot.load(out).state_dict()
    assert all(torch.equal(written[key], value) for key, value in model.state_dict().items())
    other = weights.model_from_vgg16(reduced, num_classes=4, seed=4)  # a state dict works too
    assert not torch.equal(other.extras[0].reduce.weight, model.extras[0].reduce.weight)
    assert torch.equal(other.backbone.to_conv7.conv6.weight, model.backbone.to_conv7.conv6.weight)


def test_reduced_vgg16_backbone_keeps_a_reduced_file_and_names_bad_ones(reduced, tmp_path):
    source = tmp_path / "prefixed.pth"
    torch.save({f"module.{key}": value for key, value in reduced.items()}, source)
    got = weights.reduced_vgg16_backbone(source)
    assert got.keys() == reduced.keys()
    assert all(torch.equal(got[key], reduced[key]) for key in reduced)

    bad = dict(reduced, **{"31.weight": torch.zeros(1024, 512, 1, 1)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: .*31\.weight has shape \(1024, 512, 1, 1\), expected"):
        weights.reduced_vgg16_backbone(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing\.pth: no such file"):
        weights.reduced_vgg16_backbone(tmp_path / "missing.pth")


def test_convert_file_names_the_file(tmp_path):
    source = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, source)
    with pytest.raises(ValueError, match=r"other\.pth: not in the ssd\.pytorch SSD layout"):
        weights.convert_file(source, "ssd.pytorch")
    with pytest.raises(ValueError, match=r"other\.pth: unknown weights source 'caffe'"):
        weights.convert_file(source, "caffe")


def test_class_names_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\n dog \n")
    assert weights.read_class_names_with_background(path) == ["__background__", "cat", "dog"]
    path.write_text("__background__\ncat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"classes\.txt: duplicate class names: cat"):
        weights.read_class_names_with_background(path)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=r"classes\.txt: no class names"):
        weights.read_class_names_with_background(path)
