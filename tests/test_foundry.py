"""Every CPU artifact also loads and chats in Foundry Local's own runtime (foundry-local-sdk)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.agreement import FP32_TOL, compare_text, step_logits

from .helpers.artifacts import REPO

FOUNDRY_PYTHON = os.environ.get("EDGEQWEN_FOUNDRY_PYTHON")
pytestmark = pytest.mark.skipif(
    not FOUNDRY_PYTHON,
    reason="set EDGEQWEN_FOUNDRY_PYTHON to the python of a venv with foundry-local-sdk==2.2.1 (.ci/run makes one); "
    "it pins its own onnxruntime, so it cannot share edgeqwen's environment",
)
PROMPT = "What does the assert statement do?"


def foundry_chat(artifact: Path, max_tokens: int = 24) -> dict:
    proc = subprocess.run([FOUNDRY_PYTHON, "-m", "edgeqwen.interop.foundry_check", str(artifact), "--prompt", PROMPT,
                           "--max-tokens", str(max_tokens)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_foundry_local_matches_our_runner_on_fp32(family, request, artifacts):
    path = artifacts.get(f"tiny-{family}/cpu-x86_64-fp32", request.getfixturevalue(f"trained_{family}"))
    got = foundry_chat(path)
    runner = Runner(path)
    prompt = runner.apply_chat_template([{"role": "user", "content": PROMPT}])  # what generate(chat=True) sends
    recs = list(runner.stream(runner.encode(prompt), Sampling(max_new_tokens=24, keep_logits=True),
                              thinking_open=prompt.rstrip().endswith("<think>")))
    ours = "".join(r.text for r in recs)
    assert got["model_id"] == "edgeqwen-artifact:1" and ours.strip()
    if got["text"] != ours:  # Foundry's own onnxruntime rounds otherwise: a near-tie may part the greedy texts
        agreement = compare_text(*step_logits(recs), got["text"], runner.decode, FP32_TOL)
        assert agreement.ok and agreement.diverged_at is not None, (agreement.summary(), got["text"], ours)


@pytest.mark.parametrize("recipe", ["tiny-qwen2/cpu-x86_64-int4", "tiny-qwen2/cpu-x86_64-int8",
                                    "tiny-qwen3/cpu-x86_64-int4", "tiny-qwen3/cpu-x86_64-int8"])
def test_foundry_local_loads_and_chats_quantized(recipe, request, artifacts):
    family = "qwen3" if "qwen3" in recipe else "qwen2"
    got = foundry_chat(artifacts.get(recipe, request.getfixturevalue(f"trained_{family}")))
    assert got["text"].strip() and got["completion_tokens"] > 0
