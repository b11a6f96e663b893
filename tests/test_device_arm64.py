"""arm64 on its own kernels: the cpu-arm64 and ort-mobile artifacts verified, run and served by an aarch64 Python
(Debian's, under qemu-aarch64 10 -cpu neoverse-n1) with the aarch64 onnxruntime wheel of this venv's version (so
the model.ort it wrote loads), against the x86 run. Run by .ci/device_arm64.sh."""

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
PROMPT = "What does the assert statement do?"


@pytest.fixture(scope="module")
def arm64():
    python = aarch64_python()
    if python is None:
        pytest.skip("no aarch64 Python under qemu-aarch64 (.ci/device_arm64.sh fetches bookworm-backports' qemu, "
                    "debootstraps Debian arm64 and the aarch64 wheels into ~/.cache/edgeqwen-ci/arm64)")
    return python


@pytest.fixture(scope="module", params=["cpu-arm64-int4", "ort-mobile-int4"])
def artifact(request, artifacts, trained_qwen2):
    return artifacts.get(f"tiny-qwen2/{request.param}", trained_qwen2)


def test_artifact_runs_on_arm64_kernels_as_on_x86(arm64, artifact, tmp_path, request):
    toks, logits, meta, _ = greedy_dump(arm64, artifact, tmp_path / "arm.npz", *ARGS, env=aarch64_env())
    assert meta["machine"] == "aarch64" and meta["onnxruntime"] == ARM64_ORT and meta["providers"][0] == "CPUExecutionProvider"
    ref_toks, ref_logits, ref_meta, _ = greedy_dump([sys.executable], artifact, tmp_path / "x86.npz", *ARGS)
    agreement = compare_runs(ref_logits[0], ref_toks[0], logits[0], toks[0], INT8_ACTIVATION_TOL)
    print(f"{request.node.callspec.id} on arm64 (qemu, onnxruntime {meta['onnxruntime']}, {meta['generate_s']:.1f} s) "
          f"vs x86: {agreement.summary()}; same text: {meta['texts'] == ref_meta['texts']}")
    assert agreement.ok, agreement.summary()


def test_artifact_verifies_and_serves_on_arm64(arm64, artifact, request):
    proc = subprocess.run([*arm64, "-m", "edgeqwen", "verify", str(artifact)], capture_output=True, text=True,
                          timeout=600, env=aarch64_env(True))
    assert proc.returncode == 0 and "runs here on CPUExecutionProvider" in proc.stdout, proc.stdout + proc.stderr
    lone = Runner(artifact)
    rows, ref = step_logits(lone.stream(lone.encode(lone.apply_chat_template([{"role": "user", "content": PROMPT}])),
                                        Sampling(max_new_tokens=16, ignore_eos=True, keep_logits=True)))
    t0 = time.perf_counter()
    text = _served_answer(arm64, artifact)
    agreement = compare_text(rows, ref, text, lone.decode, INT8_ACTIVATION_TOL)
    print(f"{request.node.callspec.id} served on arm64 in {time.perf_counter() - t0:.1f} s: {text!r}; "
          f"{agreement.summary()}")
    assert agreement.ok, agreement.summary()


def _served_answer(arm64, artifact) -> str:
    """`edgeqwen serve` under qemu-aarch64, one greedy chat request through the openai client; the answer's text."""
    import openai

    server = subprocess.Popen([*arm64, "-m", "edgeqwen", "serve", str(artifact), "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=aarch64_env(True))
    try:
        line = server.stdout.readline()  # "edgeqwen serving NAME at URL/v1" once it listens
        assert " at http://" in line, line
        name, url = line.split()[2], line.split(" at ")[1].strip()
        answer = openai.OpenAI(base_url=url, api_key="none", timeout=300).chat.completions.create(
            model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0)
        return answer.choices[0].message.content
    finally:
        server.terminate()
        server.wait(timeout=30)
