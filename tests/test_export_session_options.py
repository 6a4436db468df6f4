"""ONNX Runtime session settings: every session singleshot makes gets them from `session_options`,
read back here from the options and from the sessions themselves."""

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from singleshot.benchmark.formats import make_exports
from singleshot.export import OnnxDetector, load_detector, session_options
from singleshot.export.compare import onnx_session, time_onnx_files

SPINNING = "session.intra_op.allow_spinning"
STOP_SPINNING = "session.force_spinning_stop"


def write_identity_onnx(path):
    """A one-node ONNX file (float32 (B, 3, 8, 8) -> the same) with singleshot metadata."""
    shape = ["batch", 3, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"singleshot": json.dumps({"image_size": 8, "image_mean": [0, 0, 0]})})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def onnx_file(tmp_path):
    return write_identity_onnx(tmp_path / "identity.onnx")


def settings(options):
    """(intra-op threads, inter-op threads, spinning entry, stop-spinning entry, optimisation
    level, execution mode)."""
    return (
        options.intra_op_num_threads,
        options.inter_op_num_threads,
        options.get_session_config_entry(SPINNING),
        options.get_session_config_entry(STOP_SPINNING),
        options.graph_optimization_level,
        options.execution_mode,
    )


def expected(intra, spinning):
    # spinning threads always stop when a run returns, leaving the cores to PyTorch's between runs
    optimised, sequential = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.ExecutionMode.ORT_SEQUENTIAL
    return (intra, 1, spinning, "1", optimised, sequential)


@pytest.mark.parametrize(
    "kwargs, intra, spinning",
    [
        ({}, 0, "1"),
        ({"threads": 3}, 3, "1"),
        ({"threads": 2, "spin": False}, 2, "0"),
        ({"spin": False}, 0, "0"),
        ({"threads": np.int64(4)}, 4, "1"),
    ],
)
def test_options_read_back(kwargs, intra, spinning):
    assert settings(session_options(**kwargs)) == expected(intra, spinning)


def test_each_caller_gets_its_settings(onnx_file, tmp_path):
    benchmark = make_exports(onnx_file, ["onnx"], tmp_path, 2, say=str).detectors["onnx"]
    sessions = {
        "OnnxDetector, default": OnnxDetector(onnx_file).session,
        "OnnxDetector, 2 threads": OnnxDetector(onnx_file, threads=2).session,
        "OnnxDetector, no spin": OnnxDetector(onnx_file, threads=1, spin=False).session,
        "load_detector": load_detector(onnx_file, threads=2).session,
        "int8 report timing": onnx_session(onnx_file, 2),
        "int8 report timing, default threads": onnx_session(onnx_file, None),
        "singleshot benchmark": benchmark.session,
    }
    got = {name: settings(session.get_session_options()) for name, session in sessions.items()}
    assert got == {
        "OnnxDetector, default": expected(0, "1"),
        "OnnxDetector, 2 threads": expected(2, "1"),
        "OnnxDetector, no spin": expected(1, "0"),
        "load_detector": expected(2, "1"),
        # timed in turns, each warm with its threads spinning, as a deployment runs it
        "int8 report timing": expected(2, "1"),
        "int8 report timing, default threads": expected(0, "1"),
        "singleshot benchmark": expected(2, "1"),
    }


def test_sessions_made_with_the_options_run(onnx_file):
    x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    (out,) = onnx_session(onnx_file, 1).run(None, {"images": x})
    np.testing.assert_array_equal(out, x)
    (timing,) = time_onnx_files([onnx_file], [x], threads=1, repeats=2)
    assert timing.wall > 0 and timing.cpu >= 0


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_a_clear_error(onnx_file, threads):
    message = re.escape(f"ONNX Runtime threads must be an int >= 1 or None (its default), got {threads!r}")
    with pytest.raises(ValueError, match=message):
        session_options(threads)
    with pytest.raises(ValueError, match=message):
        OnnxDetector(onnx_file, threads=threads)
    with pytest.raises(ValueError, match=message):
        onnx_session(onnx_file, threads)
