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
