"""Execution providers come from the artifact (with a declared CPU fallback, printed); each artifact records the
oldest onnxruntime it loads in, and the runner refuses an older one with what to install."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

from edgeqwen.ortfloor import vkey
from edgeqwen.runtime import Runner, RunnerError
from edgeqwen.runtime.runner import EXECUTION_PROVIDERS
from edgeqwen.targets import ExecutionProvider, known_targets, load_target

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def int4(artifacts, trained_qwen2):
    return artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)


def _copy_with_runtime(src: Path, dst: Path, **runtime) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["runtime"] = {**manifest["runtime"], **runtime}
    (dst / "manifest.json").write_text(json.dumps(manifest))  # manifest.json is not among its own hashed files
    return dst


def test_every_target_provider_has_a_wheel():
    for name in known_targets():
        ep = load_target(name).execution_provider.value
        assert ep in EXECUTION_PROVIDERS, f"target {name}: provider {ep} has no entry (onnxruntime name, wheel)"
    assert {e.value for e in ExecutionProvider} <= set(EXECUTION_PROVIDERS)


def test_manifest_records_providers_and_the_runtime_floor(int4):
    runtime = json.loads((int4 / "manifest.json").read_text())["runtime"]
    assert runtime["providers"] == ["cpu"] and runtime["fallback"] == "cpu"
    assert runtime["min_onnxruntime"] == "1.23.0"  # GatherBlockQuantized's `bits` (1.22.1 refuses it; checked)
    assert any("GatherBlockQuantized attribute bits" in why for why in runtime["min_onnxruntime_why"])
    floor = re.search(r'"onnxruntime>=([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert vkey(floor) >= vkey(runtime["min_onnxruntime"]), "the runtime profile's floor must load what build writes"
    assert Runner(int4).providers[0] == "CPUExecutionProvider"


def test_missing_provider_falls_back_to_the_declared_cpu_with_a_message(int4, tmp_path, capfd):
    if "WebGpuExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the WebGPU provider: nothing is missing")
    art = _copy_with_runtime(int4, tmp_path / "a", providers=["webgpu"])
    runner = Runner(art)
    assert runner.providers[0] == "CPUExecutionProvider"
    assert "pip install onnxruntime-webgpu" in runner.provider_notes[0]
    assert "declared fallback" in capfd.readouterr().err
    with pytest.raises(RunnerError, match="pip install onnxruntime-webgpu"):
        Runner(art, providers="webgpu")  # asked for explicitly: no silent fallback
    with pytest.raises(RunnerError, match="known: cpu, webgpu"):
        Runner(art, providers="tpu")
    proc = subprocess.run([sys.executable, str(art / "runner.py"), "-p", "hi", "--max-new-tokens", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "onnxruntime-webgpu" in proc.stderr and "on CPUExecutionProvider" in proc.stderr


def test_an_older_onnxruntime_is_refused_with_the_floor(int4, tmp_path):
    art = _copy_with_runtime(int4, tmp_path / "a", min_onnxruntime="99.1.0", min_onnxruntime_why=["a test"])
    with pytest.raises(RunnerError, match=r"needs onnxruntime >= 99\.1\.0; found " + re.escape(onnxruntime.__version__)):
        Runner(art)
    proc = subprocess.run([sys.executable, "-m", "edgeqwen", "verify", str(art)], capture_output=True, text=True)
    assert proc.returncode == 1 and "needs onnxruntime >= 99.1.0" in proc.stdout


def test_the_plan_knows_whether_webgpu_needs_shader_f16(trained_qwen2):
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.planner import plan
    from edgeqwen.recipe import load_recipe

    ckpt = inspect_checkpoint(trained_qwen2)
    f16, f32 = plan(load_recipe("tiny-qwen2/webgpu-int4"), ckpt), plan(load_recipe("tiny-qwen2/webgpu-fp32-int4"), ckpt)
    assert (f16.shader_f16, f16.builder_ep) == (True, "webgpu")
    assert (f32.shader_f16, f32.builder_ep, f32.accuracy_level) == (False, "cpu", 0)  # fp32 graph: every adapter
    assert any(d.code == "webgpu.shader_f16" and "every WebGPU adapter" in d.message for d in f32.decisions)
    ov = plan(load_recipe("tiny-qwen2/openvino-cpu-int4"), ckpt)
    assert (ov.execution_provider, ov.builder_ep) == ("openvino", "cpu")


def _graph(tmp_path, nodes, opset=21):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "model.onnx")
    return tmp_path


@pytest.mark.parametrize("node, opset, ort_format, want", [
    (("MatMulNBits", {"bits": 4}), 21, False, "1.20.1"),
    (("MatMulNBits", {"bits": 8}), 21, False, "1.22.0"),
    (("GatherBlockQuantized", {"bits": 4}), 21, False, "1.23.0"),
    (("GroupQueryAttention", {"softcap": 0.0}), 21, False, "1.20.1"),
    (("SomeFutureOp", {}), 21, False, "9.9.9"),  # not in the table: the building onnxruntime's version
    (("MatMulNBits", {"future_attr": 1}), 21, False, "9.9.9"),
    (("MatMulNBits", {"bits": 4}), 22, False, "1.21.1"),
    (("MatMulNBits", {"bits": 4}), 21, True, "9.9.9"),  # model.ort: the writer's default attributes
])
def test_runtime_floor_rules(tmp_path, node, opset, ort_format, want):
    from onnx import helper

    from edgeqwen.ortfloor import artifact_floor

    op, attrs = node
    folder = _graph(tmp_path, [helper.make_node(op, [], [], domain="com.microsoft", **attrs)], opset)
    assert artifact_floor(folder, "9.9.9", ort_format=ort_format).version == want
