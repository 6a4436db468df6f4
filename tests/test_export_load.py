"""Opening what a user deploys: `load_detector` tells checkpoints and exports apart, OpenVINO IR
carries the metadata, and `eval` / `detect` refuse or explain what an exported file cannot do."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import singleshot
from ci import openvino_runs, require
from singleshot.checkpoint import save_checkpoint
from singleshot.cli import main
from singleshot.export import (
    OnnxDetector,
    OpenVinoDetector,
    TorchScriptDetector,
    export_onnx,
    export_openvino,
    export_torchscript,
    load_detector,
    model_format,
    onnx_to_openvino,
    runtime_of,
)
from singleshot.export.openvino import read_metadata
from singleshot.models import SSD
from test_cli_eval import CLASSES, write_voc


@pytest.fixture(scope="module")
def model():
    """ssd160_compact (classes cat, dog), confident enough somewhere to detect above 0.5."""
    torch.manual_seed(0)
    model = singleshot.build_model("ssd160_compact", num_classes=3, class_names=CLASSES)
    with torch.no_grad():
        for conv in model.head.conf:
            conv.bias.view(-1, 3)[:, 1:] += 3.0
    return model.eval()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    return {
        "checkpoint": save_checkpoint(folder / "model.pt", model),
        "script": export_torchscript(model, folder / "script.pt"),
        # NMS inside, built with a threshold higher than the model's own 0.01
        "onnx-0.5": export_onnx(model, folder / "high.onnx", with_postprocess=True, score_threshold=0.5),
    }


def test_model_format_tells_torchscript_from_a_checkpoint_by_content(files, tmp_path):
    renamed = tmp_path / "script.ts"
    renamed.write_bytes(files["script"].read_bytes())
    assert model_format(files["checkpoint"]) == "checkpoint"
    assert model_format(files["script"]) == model_format(renamed) == "torchscript"
    assert model_format(tmp_path / "model.onnx") == "onnx" and model_format("model.XML") == "openvino"
    assert model_format("ssd300_vgg16_coco") == "checkpoint"  # a name: singleshot.load's to resolve

    checkpoint = load_detector(files["checkpoint"])
    assert isinstance(checkpoint, SSD) and checkpoint.class_names == CLASSES
    script = load_detector(renamed)
    assert isinstance(script, TorchScriptDetector) and runtime_of(script) == runtime_of(checkpoint) == "torch"
    assert (script.class_names, script.num_classes, script.image_size) == (CLASSES, 3, 160)
    assert script.postprocess == checkpoint.postprocess and not script.with_postprocess


def test_load_detector_refuses_what_a_format_cannot_do(files, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"script.pt: a torchscript file runs with torch, not openvino"):
        load_detector(files["script"], runtime="openvino")
    with pytest.raises(ValueError, match=r"model.xml: a openvino file runs with openvino, not onnxruntime"):
        load_detector(tmp_path / "model.xml", runtime="onnxruntime")
    with pytest.raises(ValueError, match=r"model.bin: OpenVINO IR weights; give the .xml file beside it"):
        load_detector(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match=r"missing.onnx: no such file"):
        load_detector(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"garbage.onnx: not a loadable ONNX model"):
        load_detector(garbage)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(plain))
    with pytest.raises(ValueError, match=r"plain.pt: not a singleshot export \(no singleshot.json inside\)"):
        load_detector(plain)
    with pytest.raises(ValueError, match=r"device cuda:0: OpenVINO runs"):
        load_detector(files["onnx-0.5"], runtime="openvino", device="cuda:0")

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # as if neither runtime were installed
        return None if name in ("onnxruntime", "openvino") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(
        ValueError, match=r"high.onnx: running it with onnxruntime needs the 'onnxruntime'"
    ) as error:
        load_detector(files["onnx-0.5"])
    assert "pip install onnxruntime (or pip install 'singleshot[export]')" in str(error.value)
    with pytest.raises(ValueError, match=r"needs the 'openvino' package") as error:
        load_detector(files["onnx-0.5"], runtime="openvino")
    assert "pip install openvino (or pip install 'singleshot[openvino]')" in str(error.value)


def test_openvino_ir_carries_the_metadata_and_float32_weights(model, files, tmp_path):
    require(importlib.util.find_spec("openvino") is not None, "openvino")
    import onnx
    import openvino as ov

    onnx_metadata = json.loads(
        {p.key: p.value for p in onnx.load(str(files["onnx-0.5"])).metadata_props}["singleshot"]
    )
    xml = onnx_to_openvino(files["onnx-0.5"], tmp_path / "converted.xml")
    core = ov.Core()
    ir = core.read_model(str(xml))
    assert json.loads(ir.get_rt_info(["singleshot"]).astype(str)) == onnx_metadata
    # the weights stay float32: the .bin holds 4 bytes per parameter, plus the priors' table
    # and a few constants (float16 weights would make it half that)
    parameters = sum(p.numel() for p in model.parameters())
    size = xml.with_suffix(".bin").stat().st_size
    assert 4 * parameters <= size < 4 * (parameters + 5 * model.priors.numel())
    # an IR a user converted with OpenVINO alone keeps the ONNX entry under "framework"
    own = tmp_path / "own.xml"
    ov.save_model(core.read_model(str(files["onnx-0.5"])), str(own))
    assert read_metadata(core.read_model(str(own)), own) == onnx_metadata

    with pytest.raises(ValueError, match=r"model.onnx: an OpenVINO IR file name ends in .xml"):
        export_openvino(model, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=r"high.onnx: an ONNX file converts as it is"):
        export_openvino(files["onnx-0.5"], tmp_path / "again.xml", with_postprocess=True)
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    with pytest.raises(ValueError, match=r"garbage\.onnx: OpenVINO cannot convert it: "):
        onnx_to_openvino(tmp_path / "garbage.onnx", tmp_path / "garbage.xml")
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx: no such file"):
        onnx_to_openvino(tmp_path / "absent.onnx", tmp_path / "absent.xml")
    assert not (tmp_path / "garbage.xml").exists() and not (tmp_path / "absent.xml").exists()
    if openvino_runs():
        for path in (xml, own, files["onnx-0.5"]):
            detector = OpenVinoDetector(path)
            assert runtime_of(detector) == "openvino" and detector.postprocess.score_threshold == 0.5
            assert detector.class_names == CLASSES and detector.with_postprocess


def test_export_cli_writes_openvino_ir_and_verifies_it(files, tmp_path, capsys):
    require(importlib.util.find_spec("openvino") is not None, "openvino")
    out = tmp_path / "ir" / "model.xml"
    verify = ["--verify"] if openvino_runs() else []
    export = ["export", "--checkpoint", str(files["checkpoint"]), "--format", "openvino"]
    code = main([*export, str(out), *verify])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"wrote {out}: ssd160_compact network (loc, conf)" in printed
    assert out.with_suffix(".bin").is_file()
    if verify:
        assert "verified: loc and conf match PyTorch" in printed
    assert main([*export, str(tmp_path / "m.ir")]) == 1
    assert "m.ir: an OpenVINO IR file name ends in .xml" in capsys.readouterr().err


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_applies_what_an_export_was_built_with(files, tmp_path, capsys):
    data = write_voc(tmp_path / "VOCsmall")
    base = ["eval", "--data", str(data), "--workers", "0", "--no-progress"]
    exported = [*base, "--checkpoint", str(files["onnx-0.5"])]
    code, _, err = run_cli([*exported, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "high.onnx has NMS inside, built with score threshold 0.5 (its model's own is 0.01)" in err
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["score_threshold"] == 0.5

    for flags, message in [
        (
            ["--score-threshold", "0.01"],
            "high.onnx: NMS is inside this graph and keeps only scores above 0.5",
        ),
        (["--fast"], f"--fast: for checkpoints only; {files['onnx-0.5']} is an exported file (onnx)"),
        (["--winograd"], "--winograd: for checkpoints only"),
    ]:
        code, _, err = run_cli([*exported, "--out", str(tmp_path / "b"), *flags], capsys)
        assert code == 1 and message in err, err
    assert not (tmp_path / "b").exists()  # nothing written
    checkpoint = [*base, "--checkpoint", str(files["checkpoint"]), "--out", str(tmp_path / "c")]
    code, _, err = run_cli([*checkpoint, "--runtime", "openvino"], capsys)
    assert code == 1 and "--runtime openvino: for ONNX files only; " in err and "is a checkpoint" in err


def test_detect_keeps_an_exports_built_in_threshold(files, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    argv = ["detect", "--checkpoint", str(files["onnx-0.5"]), str(folder), "--out", str(out)]
    code, printed, err = run_cli([*argv, "--threshold", "0.3", "--no-draw", "--no-progress"], capsys)
    assert code == 0, err
    assert (
        "high.onnx has NMS inside, built with score threshold 0.5: it outputs no detection scoring 0.3" in err
    )
    results = json.loads((out / "detections.json").read_text())
    expected = OnnxDetector(files["onnx-0.5"]).predict([folder / "a.png", folder / "b.png"])
    assert len(results) == sum(len(d["scores"]) for d in expected) > 0
    assert min(r["score"] for r in results) > 0.5 and "(score > 0.5)" in printed


DROP_IN_ANOTHER_THREAD = """
import gc, signal, subprocess, sys, threading
import torch
from singleshot.export import OpenVinoDetector

detectors = [OpenVinoDetector(sys.argv[1])]
detectors[0].predict(torch.zeros(3, 160, 160, dtype=torch.uint8))
# the last reference goes in another thread, as when the garbage collector runs there
dropper = threading.Thread(target=lambda: (detectors.clear(), gc.collect()))
dropper.start()
dropper.join()
# a Python signal handler runs on this thread's alternate signal stack
signal.signal(signal.SIGCHLD, lambda number, frame: None)
subprocess.run([sys.executable, "-c", "pass"], check=True)
print("still running")
"""


def test_an_openvino_detector_dropped_in_another_thread_leaves_signal_handling_working(files):
    if not openvino_runs():
        pytest.skip("OpenVINO's CPU plugin does not run with oneDNN forced down to SSE4.1")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", DROP_IN_ANOTHER_THREAD, str(files["onnx-0.5"])],
                            env=environment, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "still running"
