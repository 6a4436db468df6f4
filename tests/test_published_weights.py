"""Published weights by name, end to end through a loopback server: ``singleshot.load(NAME)``,
``singleshot detect --model NAME``, ``train --backbone-weights NAME``, concurrent processes.

The files are fabricated (torchvision's SSDLite and MobileNetV3 layouts, random weights) and
listed under names of their own through ``$SINGLESHOT_WEIGHTS_REGISTRY``, with their real
hashes; ``$SINGLESHOT_WEIGHTS_MIRROR`` points at the server, the origins at a closed port.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import singleshot
from loopback import LoopbackServer, closed_port_url, sha256
from singleshot.cli import main
from singleshot.pipeline import predict_files
from singleshot.weights import coco_names_91, convert_file

DETECTOR, BACKBONE = "tiny_ssdlite_coco", "tiny_mobilenet_v3"
PERSON = 1  # COCO's category id and torchvision's label


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{URL path on the mirror: bytes}: an SSDLite whose first box of every cell says "person",
    and an ImageNet MobileNetV3-Large (both torchvision's layouts)."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    folder = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    detector = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    with torch.no_grad():
        for level in detector.head.classification_head.module_list:
            level[1].bias.view(-1, 91)[0, PERSON] += 8.0  # channels are (anchor, class)
    torch.save(detector.state_dict(), folder / "detector.pth")
    torch.save(mobilenet_v3_large(weights=None).state_dict(), folder / "backbone.pth")
    return {"/mirror/tiny_ssdlite.pth": (folder / "detector.pth").read_bytes(),
            "/mirror/mobilenet-tiny.pth": (folder / "backbone.pth").read_bytes()}  # fmt: skip


@pytest.fixture
def server(files):
    with LoopbackServer() as running:
        running.files.update(files)
        yield running


@pytest.fixture
def env(server, files, tmp_path, monkeypatch):
    """The variables a user sets (cache, mirror, their own registry), here and for subprocesses."""
    origin = closed_port_url() + "/models"
    entries = [
        {"name": DETECTOR, "kind": "detector", "source": "torchvision", "preset": "ssdlite320_coco",
         "url": f"{origin}/tiny_ssdlite.pth", "sha256": sha256(files["/mirror/tiny_ssdlite.pth"])},
        {"name": BACKBONE, "kind": "backbone", "source": "torchvision", "preset": "ssdlite320_voc",
         "url": f"{origin}/mobilenet-tiny.pth", "sha256": sha256(files["/mirror/mobilenet-tiny.pth"])},
    ]  # fmt: skip
    (tmp_path / "registry.json").write_text(json.dumps(entries))
    variables = {
        "SINGLESHOT_CACHE": str(tmp_path / "cache"),
        "SINGLESHOT_WEIGHTS_REGISTRY": str(tmp_path / "registry.json"),
        "SINGLESHOT_WEIGHTS_MIRROR": f"{server.url}/mirror",
    }
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **variables}


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """The singleshot model `convert_file` makes of the fabricated detector."""
    path = tmp_path_factory.mktemp("reference") / "tiny_ssdlite.pth"
    path.write_bytes(files["/mirror/tiny_ssdlite.pth"])
    return convert_file(path, "torchvision")


def cached(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache" / "weights").iterdir() if not p.name.endswith(".lock"))


def assert_same_weights(model, reference):
    assert model.preset == "ssdlite320_coco" and model.class_names == coco_names_91()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_load_by_name_converts_once_then_loads_the_cached_checkpoint(env, server, reference, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    assert_same_weights(singleshot.load(DETECTOR), reference)
    assert server.requests == ["/mirror/tiny_ssdlite.pth"]
    assert cached(tmp_path) == ["tiny_ssdlite.pth", "tiny_ssdlite.singleshot.pt"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("singleshot.weights.build.convert_file", no_conversion)
    (tmp_path / "cache" / "weights" / "tiny_ssdlite.pth").unlink()  # the checkpoint is enough
    assert_same_weights(singleshot.load(DETECTOR), reference)
    assert server.requests == ["/mirror/tiny_ssdlite.pth"]


def test_unknown_names_and_kinds_are_refused_listing_the_names(env):
    known = f"\\(ssd300_vgg16_coco, .*, {DETECTOR}\\)"
    with pytest.raises(
        ValueError, match="ssd300: no such checkpoint file, nor the name of published weights " + known
    ):
        singleshot.load("ssd300")
    with pytest.raises(ValueError, match=f"{BACKBONE} is backbone weights, not a detector"):
        singleshot.load(BACKBONE)
    with pytest.raises(ValueError, match="runs/last.pt: no such checkpoint file$"):
        singleshot.load("runs/last.pt")


def write_image(path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (60, 90, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
    return path


def detect_args(model_option, image, out):
    return ["detect", model_option, DETECTOR, str(image), "--out", str(out), "--threshold", "0.5",
            "--no-fast", "--no-winograd", "--no-progress"]  # fmt: skip


def test_detect_model_name_end_to_end(env, server, reference, tmp_path):
    image = write_image(tmp_path / "street.png")
    command = [sys.executable, "-m", "singleshot.cli", *detect_args("--model", image, tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    [expected] = [item.detections for item in predict_files(reference, [image], score_threshold=0.5)]
    assert len(results) == len(expected["scores"]) > 0
    assert {r["category_id"] for r in results} == {PERSON}  # COCO's id, by the class name
    for result, score, box in zip(results, expected["scores"].tolist(), expected["boxes"].tolist()):
        x0, y0, x1, y1 = box
        assert result["score"] == pytest.approx(score, abs=1e-4)
        assert result["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.05)
    assert (tmp_path / "out" / "street.png").is_file()
    # --checkpoint is the same option; the cached checkpoint is used, nothing fetched again
    assert main(detect_args("--checkpoint", image, tmp_path / "again")) == 0
    assert json.loads((tmp_path / "again" / "detections.json").read_text()) == results
    assert server.requests == ["/mirror/tiny_ssdlite.pth"]


def test_a_file_failing_the_hash_is_refused_by_detect_and_deleted(env, server, tmp_path, capsys):
    server.files["/mirror/ssd300_vgg16_coco-b556d3b4.pth"] = b"not the published file"
    image = write_image(tmp_path / "a.png")
    assert main(["detect", "--model", "ssd300_vgg16_coco", str(image), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert f"{server.url}/mirror/ssd300_vgg16_coco-b556d3b4.pth: the downloaded file's SHA-256 is " in error
    assert f"{sha256(b'not the published file')}, expected SHA-256 starting b556d3b4" in error
    assert cached(tmp_path) == []


LOAD_WHEN_TOLD = """
import pathlib, sys, time
import singleshot
ready, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
model = singleshot.load(sys.argv[1])
print(sum(float(t.double().sum()) for t in model.state_dict().values()))
"""


def test_concurrent_processes_download_once_and_all_get_the_model(env, server, reference, tmp_path):
    server.chunk_delay = 0.003  # about 0.7 s for the file: the other process asks while it downloads
    go, count = tmp_path / "go", 2
    processes = [
        subprocess.Popen([sys.executable, "-c", LOAD_WHEN_TOLD, DETECTOR, str(tmp_path / f"ready{i}"),
                          str(go)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(count)
    ]  # fmt: skip
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(count)):
            assert all(p.poll() is None for p in processes), "a process ended before loading"
        go.touch()  # all ask for the model at once
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [0] * count, [err[-2000:] for _, err in outputs]
    expected = sum(float(t.double().sum()) for t in reference.state_dict().values())
    assert [float(out) for out, _ in outputs] == [pytest.approx(expected, rel=1e-12)] * count
    assert server.requests == ["/mirror/tiny_ssdlite.pth"]
    assert cached(tmp_path) == ["tiny_ssdlite.pth", "tiny_ssdlite.singleshot.pt"]


def training_config(*options):
    from singleshot.cli import build_parser
    from singleshot.cli.train import build_config

    config, _ = build_config(build_parser().parse_args(["train", *options]))
    return config


def test_train_backbone_weights_by_name(env, server):
    from singleshot.training.setup import build_training_model

    config = training_config("--model", "ssdlite320_voc", "--backbone-weights", BACKBONE)
    model = build_training_model(config, ["__background__", "cat", "dog"])
    assert server.requests == ["/mirror/mobilenet-tiny.pth"]
    path = os.environ["SINGLESHOT_CACHE"] + "/weights/mobilenet-tiny.pth"
    source = torch.load(path, weights_only=True)
    ours = model.state_dict()
    features = [key for key in source if key.startswith("features.")]
    assert len(features) > 200 and all(torch.equal(ours[f"backbone.{k}"], source[k]) for k in features)


def test_train_init_from_a_published_detector(env, server, reference):
    from singleshot.training.setup import build_training_model

    config = training_config("--model", "ssdlite320_coco", "--init-from", DETECTOR)
    model = build_training_model(config, coco_names_91())
    assert server.requests == ["/mirror/tiny_ssdlite.pth"]
    theirs = reference.state_dict()
    assert all(torch.equal(tensor, theirs[key]) for key, tensor in model.state_dict().items())


def test_your_own_singleshot_checkpoint_by_name(server, tmp_path, monkeypatch):
    from singleshot.checkpoint import save_checkpoint

    torch.manual_seed(1)
    mine = singleshot.build_model("ssd160_compact", class_names=["__background__", "part"])
    data = save_checkpoint(tmp_path / "parts.pt", mine).read_bytes()
    server.files["/models/parts-v3.pt"] = data
    entry = {"name": "acme_parts", "kind": "detector", "source": "singleshot",
             "url": f"{server.url}/models/parts-v3.pt", "sha256": sha256(data)}  # fmt: skip
    (tmp_path / "registry.json").write_text(json.dumps([entry]))
    monkeypatch.setenv("SINGLESHOT_WEIGHTS_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("SINGLESHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SINGLESHOT_WEIGHTS_MIRROR", raising=False)
    loaded = singleshot.load("acme_parts")
    assert loaded.class_names == ["__background__", "part"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), mine.state_dict().values()))
    assert singleshot.load("acme_parts").class_names == loaded.class_names
    assert server.requests == ["/models/parts-v3.pt"] and cached(tmp_path) == ["parts-v3.pt"]


def test_model_and_checkpoint_are_one_option_of_detect_and_eval():
    from singleshot.cli import build_parser

    parser = build_parser()
    for command, rest in (("detect", ["photo.jpg"]), ("eval", [])):
        for option in ("--model", "--checkpoint"):
            assert parser.parse_args([command, option, DETECTOR, *rest]).checkpoint == DETECTOR
