"""The registry of published weights: every fact checked against its source, names, the
registry file, and ``singleshot models``."""

import json
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import singleshot
from singleshot.cli import main
from singleshot.weights.registry import (
    REGISTRY,
    parse_name,
    published,
    published_names,
    registry,
)

TORCHVISION_ENUMS = {
    "ssd300_vgg16_coco": ("detection", "SSD300_VGG16_Weights", "COCO_V1", "COCO-val2017", "box_map"),
    "ssdlite320_mobilenet_v3_large_coco": (
        "detection", "SSDLite320_MobileNet_V3_Large_Weights", "COCO_V1", "COCO-val2017", "box_map",
    ),
    "mobilenet_v3_large_imagenet": ("", "MobileNet_V3_Large_Weights", "IMAGENET1K_V1", "ImageNet-1K",
                                    "acc@1"),
    "vgg16_imagenet": ("", "VGG16_Weights", "IMAGENET1K_V1", "ImageNet-1K", "acc@1"),
}  # fmt: skip


def test_the_names_users_depend_on_are_there():
    assert published_names("detector") == [
        "ssd300_vgg16_coco", "ssdlite320_mobilenet_v3_large_coco", "ssd300_voc0712_ssdpytorch",
    ]  # fmt: skip
    assert published_names("backbone") == ["vgg16_reducedfc", "mobilenet_v3_large_imagenet", "vgg16_imagenet"]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_is_sane(name):
    entry = REGISTRY[name]
    assert entry.preset in singleshot.available_models()
    assert entry.url.startswith("https://") and entry.url.endswith("/" + entry.file_name)
    stated = re.search(r"-([0-9a-f]{8,})\.pth$", entry.file_name)
    if entry.source == "torchvision":  # the hash prefix is the file name's, as torch.hub reads it
        assert stated and entry.sha256 == stated[1] and entry.hash_is_prefix
        assert "the start of the SHA-256" in entry.checksum
    else:  # ssd.pytorch publishes none
        assert entry.sha256 is None and not stated and "none published" in entry.checksum
    if entry.metric is None:
        assert name == "vgg16_reducedfc"  # a base network without its classifier: nothing to score
    else:
        assert entry.metric.source and entry.metric.url.startswith("https://")
        assert entry.metric.project in ("torchvision", "ssd.pytorch")
    assert entry.licence in ("BSD-3-Clause", "MIT") and entry.licence_note
    names = entry.class_names()
    if entry.kind == "detector":
        assert names[0] == "__background__"
        assert len(names) == {"coco91": 91, "voc21": 21}[entry.classes]
    else:
        assert names is None and entry.classes == "imagenet1k"


def test_published_facts_equal_torchvisions_own():
    import torchvision

    for name, (module, enum, member, dataset, key) in TORCHVISION_ENUMS.items():
        where = getattr(torchvision.models, module) if module else torchvision.models
        weights = getattr(getattr(where, enum), member)
        entry = REGISTRY[name]
        assert entry.url == weights.url
        assert entry.metric.value == weights.meta["_metrics"][dataset][key]
        assert entry.params == weights.meta["num_params"]
        assert entry.mult_adds == weights.meta["_ops"]


def multiply_adds(module, size):
    """Billions of multiply-adds of one forward at size x size (FLOPs / 2), counted on "meta"."""
    with torch.device("meta"):
        x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize("name", [*published_names("detector"), "vgg16_reducedfc"])
def test_counts_are_those_of_the_singleshot_model_the_file_becomes(name):
    entry = REGISTRY[name]
    num_classes = len(entry.class_names()) if entry.kind == "detector" else 21
    with torch.device("meta"):
        model = singleshot.build_model(entry.preset, num_classes=num_classes).eval()
    network = model if entry.kind == "detector" else model.backbone
    params = [p for n, p in network.named_parameters() if entry.kind == "detector" or "l2norm" not in n]
    assert sum(p.numel() for p in params) == entry.params
    assert round(multiply_adds(network, model.image_size), 3) == entry.mult_adds


def test_names_with_a_confirmed_hash():
    digest = "ab" * 32
    assert parse_name("vgg16_reducedfc") == (REGISTRY["vgg16_reducedfc"], None)
    assert parse_name(f"vgg16_reducedfc@sha256:{digest.upper()}") == (REGISTRY["vgg16_reducedfc"], digest)
    good = "b556d3b4" + "0" * 56
    assert parse_name(f"ssd300_vgg16_coco@sha256:{good}")[1] == good
    with pytest.raises(ValueError, match="contradicts the published one"):
        parse_name(f"ssd300_vgg16_coco@sha256:{digest}")
    for bad in ("md5:" + digest[:32], "sha256:" + digest[:63], "sha256:" + "g" * 64):
        with pytest.raises(ValueError, match="confirmed hash as vgg16_reducedfc@sha256:<64 hex digits>"):
            parse_name(f"vgg16_reducedfc@{bad}")
    with pytest.raises(ValueError, match="no published weights named 'ssd300'; known: ssd300_vgg16_coco, "):
        published("ssd300")


def own_entry(**changes):
    item = {"name": "acme_parts", "kind": "detector", "source": "singleshot",
            "url": "https://models.acme.internal/parts-v3.pt", "sha256": "0123abcd" * 8}  # fmt: skip
    return {**item, **changes}


def test_a_registry_file_adds_entries(monkeypatch, tmp_path):
    path = tmp_path / "models.json"
    metric = {"value": 81.2, "name": "mAP (11-point)", "dataset": "parts test", "source": "card", "url": "u"}
    path.write_text(json.dumps([own_entry(metric=metric, params=123, preset="ssd300_voc")]))
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_REGISTRY", str(path))
    entry = published("acme_parts")
    assert list(registry()) == [*REGISTRY, "acme_parts"]
    assert entry.file_name == "parts-v3.pt" and entry.sha256 == "0123abcd" * 8 and not entry.hash_is_prefix
    assert entry.classes == "own" and entry.class_names() is None and entry.params == 123
    assert str(entry.metric) == "81.2 mAP (11-point), parts test" and entry.mult_adds is None
    assert entry.licence == "not stated"


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ("{", "cannot read the published-weights registry"),
        ({"name": "x"}, "expected a JSON list"),
        ([own_entry(sha256="b556d3b4")], "entry 0: sha256 must be the file's 64 hex digits"),
        ([own_entry(kind="whole")], "entry 0: kind 'whole' is not one of detector, backbone"),
        ([own_entry(), own_entry(source="caffe")], "entry 1: source 'caffe' is not one of"),
        ([own_entry(url="ftp://host/x.pt")], "expected an http, https or file URL ending in a file name"),
        ([own_entry(licnece="MIT")], "unknown fields: licnece"),
        ([{"name": "x"}], "missing fields: kind, source, url, sha256"),
        ([own_entry(name="a@b")], "use letters, digits"),
        ([own_entry(classes="voc20")], "classes 'voc20' is not one of coco91, voc21"),
        ([own_entry(), own_entry()], "the name 'acme_parts' is given twice"),
        ([own_entry(name="ssd300_vgg16_coco")], "redefines built-in published weights: ssd300_vgg16_coco"),
        ([own_entry(metric={"value": 1})], "metric must be an object with exactly"),
        ([own_entry(params=-1)], "params must be a non-negative number"),
    ],
)
def test_a_bad_registry_file_is_refused_naming_it(monkeypatch, tmp_path, items, error):
    path = tmp_path / "models.json"
    path.write_text(items if isinstance(items, str) else json.dumps(items))
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_REGISTRY", str(path))
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + re.escape(error)):
        registry()


def table(out):
    """{name: {column: value}} of `singleshot models`' table (columns two or more spaces apart)."""
    lines = out.splitlines()
    header = re.split(r"\s{2,}", lines[0])
    rows = [re.split(r"\s{2,}", line) for line in lines[1 : lines.index("")]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_singleshot_models_prints_the_registry(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_MIRROR", "https://mirror.example/w")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    assert list(rows) == list(REGISTRY)
    assert rows["ssd300_vgg16_coco"] == {
        "name": "ssd300_vgg16_coco", "kind": "detector", "preset": "ssd300_coco", "source": "torchvision",
        "published metric (source)": "25.1 box AP, COCO val2017 (torchvision)", "params": "35.6M",
        "mult-adds": "34.9G", "licence": "BSD-3-Clause", "cached": "no",
    }  # fmt: skip
    assert rows["ssd300_voc0712_ssdpytorch"]["published metric (source)"] == (
        "77.43 mAP (11-point), VOC2007 test (ssd.pytorch)"
    )
    assert rows["vgg16_reducedfc"]["published metric (source)"] == "none published"
    assert f"cache: {tmp_path / 'cache' / 'weights'}   mirror: https://mirror.example/w" in out

    # cached: the file, then its conversion
    weights = tmp_path / "cache" / "weights"
    weights.mkdir(parents=True)
    (weights / "mobilenet_v3_large-8738ca79.pth").write_bytes(b"")
    (weights / "ssd300_vgg16_coco-b556d3b4.singleshot.pt").write_bytes(b"")
    assert main(["models"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["mobilenet_v3_large_imagenet"]["cached"] == "downloaded"
    assert rows["ssd300_vgg16_coco"]["cached"] == "converted"
    assert rows["vgg16_imagenet"]["cached"] == "no"

    assert main(["models", "ssd300_vgg16_coco"]) == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert fields["fetched from"] == "https://mirror.example/w/ssd300_vgg16_coco-b556d3b4.pth"
    assert fields["url"] == "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth"
    assert fields["sha256"].startswith("b556d3b4... (the start of the SHA-256 only")
    assert fields["file"] == str(weights / "ssd300_vgg16_coco-b556d3b4.pth")
    assert fields["cached"] == "converted"
    assert main(["models", "ssd300"]) == 1
    assert "no published weights named 'ssd300'" in capsys.readouterr().err


def test_the_readme_table_states_what_the_registry_does():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Published weights") :]
    for entry in REGISTRY.values():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{entry.name}`"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2].startswith(entry.source)
        if entry.metric is None:
            assert cells[3] == "none published"
        else:
            assert cells[3].startswith(f"{entry.metric.value:g} ") and entry.metric.dataset in cells[3]
        assert cells[4] == f"{entry.params / 1e6:.1f}M" and cells[5] == f"{entry.mult_adds:.3g}G"
        assert cells[6] == entry.licence
