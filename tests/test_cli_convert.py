"""``singleshot convert``: foreign weight files -> singleshot checkpoints that describe themselves."""

import pytest
import torch

import singleshot
from singleshot import weights
from singleshot.cli import main


@pytest.fixture(scope="module")
def ssd300_coco91():
    torch.manual_seed(0)
    return singleshot.build_model("ssd300_coco", num_classes=91).state_dict()


def test_convert_torchvision_file(ssd300_coco91, tmp_path):
    source = tmp_path / "ssd300_vgg16_coco.pth"
    torch.save(weights.to_source(ssd300_coco91, "torchvision"), source)
    out = tmp_path / "converted.pt"
    assert main(["convert", "--from", "torchvision", str(source), str(out)]) == 0
    model = singleshot.load(out)
    assert (model.preset, model.num_classes, model.prior_config.clip) == ("ssd300_coco", 91, "size")
    assert model.class_names[:3] == ["__background__", "person", "bicycle"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ssd300_coco91.items())


def test_convert_ssd_pytorch_file_with_classes(tmp_path):
    torch.manual_seed(1)
    original = singleshot.build_model("ssd300_voc")
    source = tmp_path / "ssd300_mAP_77.43_v2.pth"
    theirs = weights.to_source(original.state_dict(), "ssd.pytorch")
    torch.save({f"module.{k}": v for k, v in theirs.items()}, source)  # saved from DataParallel
    names = [f"thing{i}" for i in range(20)]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n\n")
    out = tmp_path / "voc.pt"
    assert main(["convert", "--from", "ssd.pytorch", str(source), str(out), "--classes", str(classes)]) == 0
    model = singleshot.load(out)
    assert model.preset == "ssd300_voc" and model.prior_config.clip == "center"
    assert model.class_names == ["__background__"] + names
    assert torch.equal(model.backbone.l2norm.weight, original.backbone.l2norm.weight)
    assert torch.equal(model.head.conf[3].weight, original.head.conf[3].weight)


def test_convert_vgg16_checkpoint_and_backbone_only(tmp_path):
    torch.manual_seed(2)
    donor = singleshot.build_model("ssd300_voc")
    reduced = {
        f"{index}.{param}": tensor
        for key, tensor in weights.to_source(donor.state_dict(), "ssd.pytorch").items()
        if key.startswith("vgg.")
        for _, index, param in [key.split(".")]
    }
    source = tmp_path / "vgg16_reducedfc.pth"
    torch.save(reduced, source)

    out = tmp_path / "init.pt"
    assert (
        main(["convert", "--from", "vgg16", str(source), str(out), "--num-classes", "4", "--seed", "3"]) == 0
    )
    model = singleshot.load(out)
    assert model.preset == "ssd300_voc" and model.num_classes == 4
    assert torch.equal(model.backbone.to_conv7.conv6.weight, donor.backbone.to_conv7.conv6.weight)
    assert torch.equal(model.backbone.l2norm.weight, torch.full((512,), 20.0))
    assert not torch.equal(model.extras[0].reduce.weight, donor.extras[0].reduce.weight)

    backbone = tmp_path / "backbone.pth"
    assert main(["convert", "--from", "vgg16", "--backbone-only", str(source), str(backbone)]) == 0
    written = torch.load(backbone, weights_only=True)
    assert written.keys() == reduced.keys()
    assert all(torch.equal(written[k], reduced[k]) for k in reduced)


def test_convert_errors_name_the_problem(ssd300_coco91, tmp_path, capsys):
    text = tmp_path / "readme.pth"
    text.write_text("not weights")
    assert main(["convert", "--from", "torchvision", str(text), str(tmp_path / "o.pt")]) == 1
    assert "readme.pth: not a PyTorch file" in capsys.readouterr().err

    source = tmp_path / "tv.pth"
    torch.save(weights.to_source(ssd300_coco91, "torchvision"), source)
    classes = tmp_path / "three.txt"
    classes.write_text("a\nb\nc\n")
    assert (
        main(
            [
                "convert",
                "--from",
                "torchvision",
                str(source),
                str(tmp_path / "o.pt"),
                "--classes",
                str(classes),
            ]
        )
        == 1
    )
    assert "4 class names for a model with 91 classes" in capsys.readouterr().err

    assert main(["convert", "--from", "ssd.pytorch", str(source), str(tmp_path / "o.pt")]) == 1
    assert "tv.pth: not in the ssd.pytorch SSD layout: unexpected keys backbone." in capsys.readouterr().err
    assert (
        main(["convert", "--from", "torchvision", "--backbone-only", str(source), str(tmp_path / "o.pt")])
        == 1
    )
    assert "apply to --from vgg16 only" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
