"""arm64 on its own kernels: the cpu-arm64 and ort-mobile artifacts verified, run and served by an aarch64 Python
(Debian's, under qemu-aarch64) with the aarch64 onnxruntime wheel, against the x86 run. Run by .ci/device_arm64.sh."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.agreement import INT8_ACTIVATION_TOL, compare_runs, compare_text, step_logits

from .helpers.devices import ARM64_ORT, aarch64_env, aarch64_python, greedy_dump

pytestmark = [pytest.mark.device, pytest.mark.arm64]
ARGS = ("--prompts", "1", "--tokens", "16")


@pytest.fixture(scope="module")
def arm64():
    python = aarch64_python()
    if python is None:
        pytest.skip("no aarch64 Python under qemu-aarch64 (.ci/device_arm64.sh installs qemu-user-static, debootstraps "
                    "Debian arm64 and the aarch64 wheels into ~/.cache/edgeqwen-ci/arm64)")
    return python


@pytest.fixture(scope="module")
def arm_int4(artifacts, trained_qwen2):
    return artifacts.get("tiny-qwen2/cpu-arm64-int4", trained_qwen2)


def _qemu(python, *args, timeout=600, **kw):
    return subprocess.run([*python, *args], capture_output=True, text=True, timeout=timeout, env=aarch64_env(True), **kw)


def test_cpu_arm64_artifact_runs_on_arm64_kernels_as_on_x86(arm64, arm_int4, tmp_path):
    toks, logits, meta, _ = greedy_dump(arm64, arm_int4, tmp_path / "arm.npz", *ARGS, env=aarch64_env())
    assert meta["machine"] == "aarch64" and meta["onnxruntime"] == ARM64_ORT and meta["providers"][0] == "CPUExecutionProvider"
    ref_toks, ref_logits, ref_meta, _ = greedy_dump([sys.executable], arm_int4, tmp_path / "x86.npz", *ARGS)
    agreement = compare_runs(ref_logits[0], ref_toks[0], logits[0], toks[0], INT8_ACTIVATION_TOL)
    print(f"arm64 (qemu, onnxruntime {meta['onnxruntime']}, {meta['generate_s']:.1f} s) vs x86: {agreement.summary()}; "
          f"same text: {meta['texts'] == ref_meta['texts']}")
    assert agreement.ok, agreement.summary()


def test_cpu_arm64_artifact_verifies_and_serves_on_arm64(arm64, arm_int4):
    proc = _qemu(arm64, "-m", "edgeqwen", "verify", str(arm_int4))
    assert proc.returncode == 0 and "runs here on CPUExecutionProvider" in proc.stdout, proc.stdout + proc.stderr
    lone = Runner(arm_int4)
    prompt = "What does the assert statement do?"
    rows, ref = step_logits(lone.stream(lone.encode(lone.apply_chat_template([{"role": "user", "content": prompt}])),
                                        Sampling(max_new_tokens=16, ignore_eos=True, keep_logits=True)))
    server = subprocess.Popen([*arm64, "-m", "edgeqwen", "serve", str(arm_int4), "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=aarch64_env(True))
    try:
        line = server.stdout.readline()  # "edgeqwen serving NAME at URL/v1" once it listens
        assert " at http://" in line, line
        name, url = line.split()[2], line.split(" at ")[1].strip()
        import openai

        t0 = time.perf_counter()
        answer = openai.OpenAI(base_url=url, api_key="none", timeout=300).chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
        text = answer.choices[0].message.content
    finally:
        server.terminate()
        server.wait(timeout=30)
    agreement = compare_text(rows, ref, text, lone.decode, INT8_ACTIVATION_TOL)
    print(f"served on arm64 in {time.perf_counter() - t0:.1f} s: {text!r}; {agreement.summary()}")
    assert agreement.ok, agreement.summary()


def test_ort_mobile_artifact_states_its_floor_on_arm64(arm64, artifacts, trained_qwen2):
    """model.ort written by this build's onnxruntime needs that onnxruntime (the ORT format stores its default
    attributes); the aarch64 wheel that imports under qemu 7.2 is older, so the runner and verify refuse it with the
    floor and what to install — on the arm64 runtime itself."""
    art = artifacts.get("tiny-qwen2/ort-mobile-int4", trained_qwen2)
    import onnxruntime

    proc = _qemu(arm64, str(art / "runner.py"), "-p", "hi", "--max-new-tokens", "2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"needs onnxruntime >= {onnxruntime.__version__}; found {ARM64_ORT}" in proc.stderr
    proc = _qemu(arm64, "-m", "edgeqwen", "verify", str(art))
    assert proc.returncode == 1 and f"needs onnxruntime >= {onnxruntime.__version__}" in proc.stdout
