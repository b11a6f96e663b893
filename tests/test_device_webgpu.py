"""WebGPU on its own kernels: the artifact's runner.py under onnxruntime-webgpu, over SwiftShader (a software Vulkan
adapter without shader-f16), against the CPU execution provider. A software adapter proves the graph and the WebGPU
kernels compute the right thing; it says nothing about speed. Run by .ci/device_webgpu.sh."""

from __future__ import annotations

import os
import sys

import pytest

from edgeqwen.runtime.agreement import compare_runs

from .helpers.devices import SWIFTSHADER_ICD, WEBGPU_VENV, greedy_dump, webgpu_env

pytestmark = [pytest.mark.device, pytest.mark.webgpu]
# fp32 activations on both sides (accuracy level 0): measured max |logit diff| 6e-6 on tiny-qwen2
WEBGPU_TOL = 1e-3


@pytest.fixture(scope="module")
def webgpu_python():
    python = WEBGPU_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no onnxruntime-webgpu venv at {WEBGPU_VENV} (.ci/device_webgpu.sh makes it)")
    if not SWIFTSHADER_ICD.exists():
        pytest.skip(f"no SwiftShader ICD at {SWIFTSHADER_ICD} (apt-get install chromium-common libvulkan1)")
    return str(python)


def test_webgpu_fp32_artifact_runs_on_the_webgpu_ep_as_on_the_cpu(webgpu_python, artifacts, trained_qwen2, tmp_path):
    art = artifacts.get("tiny-qwen2/webgpu-fp32-int4", trained_qwen2)
    args = ("--prompts", "1", "--tokens", "16")
    toks, logits, meta, _ = greedy_dump([webgpu_python], art, tmp_path / "wg.npz", *args, env=webgpu_env(tmp_path))
    # no --provider: the artifact names WebGPU and the runner takes it; a silent CPU fallback would show here
    assert meta["providers"][0] == "WebGpuExecutionProvider" and not meta["notes"], meta
    ref_toks, ref_logits, ref_meta, _ = greedy_dump([sys.executable], art, tmp_path / "cpu.npz", *args,
                                                    "--provider", "cpu")
    assert ref_meta["providers"][0] == "CPUExecutionProvider"
    for i in range(len(toks)):
        agreement = compare_runs(ref_logits[i], ref_toks[i], logits[i], toks[i], WEBGPU_TOL)
        print(f"WebGPU (SwiftShader, onnxruntime-webgpu {meta['onnxruntime']}) vs CPU: {agreement.summary()}; "
              f"{meta['generate_s']:.1f} s")
        assert agreement.ok, agreement.summary()
        # greedy text equal to the CPU run's, unless the tokens parted at a near-tie (the agreement says where)
        assert agreement.diverged_at is not None or meta["texts"][i] == ref_meta["texts"][i]


def test_webgpu_artifact_without_its_provider_says_what_to_install(artifacts, trained_qwen2, tmp_path):
    """Plain onnxruntime (this venv): the WebGPU artifact runs on the declared CPU fallback and says so."""
    import subprocess

    art = artifacts.get("tiny-qwen2/webgpu-fp32-int4", trained_qwen2)
    proc = subprocess.run([sys.executable, str(art / "runner.py"), "-p", "hi", "--max-new-tokens", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pip install onnxruntime-webgpu" in proc.stderr and "declared fallback" in proc.stderr
    assert "on CPUExecutionProvider" in proc.stderr


def test_shader_f16_artifact_on_an_adapter_without_it_says_what_to_build(webgpu_python, artifacts, trained_qwen2,
                                                                         tmp_path):
    """The webgpu target's fp16 graph on SwiftShader (no shader-f16): a message naming the fp32 target, not a
    shader compiler error."""
    import subprocess

    art = artifacts.get("tiny-qwen2/webgpu-int4", trained_qwen2)
    proc = subprocess.run([webgpu_python, str(art / "runner.py"), "-p", "hi", "--max-new-tokens", "2"],
                          capture_output=True, text=True, env={**os.environ, **webgpu_env(tmp_path)},
                          timeout=600)
    assert proc.returncode == 2 and "no shader-f16 feature; build the webgpu-fp32 target" in proc.stderr, proc.stderr
