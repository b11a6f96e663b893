"""arm64 on its own kernels: the cpu-arm64 and ort-mobile artifacts verified, run and served by an aarch64 Python
(Debian's, under qemu-aarch64 10 -cpu neoverse-n1) with the aarch64 onnxruntime wheel of this venv's version (so
the model.ort it wrote loads), against the x86 run. Run by .ci/device_arm64.sh."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.agreement import INT8_ACTIVATION_TOL, compare_runs, compare_text, step_logits

from .helpers.artifacts import kv16_recipe
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


def test_fp16_kv_cache_runs_on_arm64_kernels_as_on_x86(arm64, artifacts, trained_qwen2, recipe_dir, tmp_path):
    """`kv_cache: fp16` on cpu-arm64 (phones, where the cache's memory counts most): onnxruntime's aarch64 attention in
    fp16 against x86's."""
    artifact = artifacts.get(kv16_recipe(recipe_dir, "cpu-arm64"), trained_qwen2)
    toks, logits, meta, _ = greedy_dump(arm64, artifact, tmp_path / "arm.npz", *ARGS, env=aarch64_env())
    assert meta["machine"] == "aarch64"
    ref_toks, ref_logits, _, _ = greedy_dump([sys.executable], artifact, tmp_path / "x86.npz", *ARGS)
    agreement = compare_runs(ref_logits[0], ref_toks[0], logits[0], toks[0], INT8_ACTIVATION_TOL)
    print(f"fp16 KV cache on arm64 (qemu, {meta['generate_s']:.1f} s) vs x86: {agreement.summary()}")
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


def test_shortlist_head_ranks_on_arm64_kernels_as_on_x86(arm64, artifacts, recipe_dir):
    """A shortlist artifact (tests/test_shortlist.py's recipe) on arm64: TopK, GatherBlockQuantized and the 4-bit
    ranking copy on NEON keep the full head's top-1 among the candidates, score them as the full head does (within the
    int8-activation tolerance), and decode greedily as on x86 where no near-tie parts them."""
    import json

    from .helpers.artifacts import SHORTLIST_K, shortlist_recipe
    from .helpers.devices import REPO

    art = artifacts.get(shortlist_recipe(recipe_dir, "tiny-qwen2"))
    script = str(REPO / "tests" / "helpers" / "shortlist_check.py")
    out = {}
    for name, python, env in (("arm64", arm64, aarch64_env()), ("x86", [sys.executable], None)):
        proc = subprocess.run([*python, script, str(art)], capture_output=True, text=True, timeout=900,
                              env=None if env is None else {**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    arm, x86 = out["arm64"], out["x86"]
    print(f"shortlist on arm64: recall {arm['recall']:.3f} (x86 {x86['recall']:.3f}), candidates' max |diff| vs the "
          f"full head {arm['max_diff']:.3f}, greedy {'equal' if arm['greedy'] == x86['greedy'] else 'parted'}")
    assert arm["machine"] == "aarch64" and arm["k"] == SHORTLIST_K and arm["candidates"] == [SHORTLIST_K]
    assert arm["recall"] >= 0.99 and arm["max_diff"] < INT8_ACTIVATION_TOL
    same = next((i for i, (a, b) in enumerate(zip(arm["greedy"], x86["greedy"])) if a != b), len(arm["greedy"]))
    assert same >= 4, (arm["greedy"], x86["greedy"])  # the first tokens: no near-tie on this trained model's prompt

