"""Memory fit: estimate before building, refuse what cannot fit, and check the estimate against reality."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.checkpoint import inspect_checkpoint
from edgeqwen.errors import EdgeQwenError
from edgeqwen.memory import estimate
from edgeqwen.planner import plan
from edgeqwen.recipe import load_recipe
from edgeqwen.tiny import TinySpec, create_tiny_qwen

QWEN25_3B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=2048, intermediate_size=11008,
                 num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                 max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)


def config_only_checkpoint(tmp_path, random_qwen2, config):
    """A folder that passes checkpoint inspection but holds no real weights: plan and refusal need only the config."""
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    (d / "model.safetensors").write_bytes(b"")
    shutil.copy(random_qwen2 / "tokenizer.json", d / "tokenizer.json")
    return d


def test_recipe_that_cannot_fit_is_refused_before_any_work(tmp_path, random_qwen2):
    ckpt = config_only_checkpoint(tmp_path, random_qwen2, QWEN25_3B)
    recipe = tmp_path / "long.yaml"
    recipe.write_text("version: 1\nmodel: Qwen/Qwen2.5-3B-Instruct\ntarget: cpu-arm64\nprecision: int8\ncontext_length: 32768\n")
    with pytest.raises(EdgeQwenError) as info:
        build(BuildOptions(str(recipe), tmp_path / "out", model=str(ckpt), evaluate=False))
    msg = str(info.value)
    assert "does not fit target cpu-arm64" in msg and "budget 4096 MB" in msg
    assert "KV cache at 32768 tokens" in msg and "lower context_length" in msg
    assert not (tmp_path / "out").exists()


def test_estimate_scales_with_precision(tmp_path, random_qwen2):
    """(Context scaling is table-tested in test_plan.py.)"""
    ckpt = inspect_checkpoint(config_only_checkpoint(tmp_path, random_qwen2, QWEN25_3B))

    def est(name):
        r = load_recipe(name)
        return estimate(plan(r, ckpt), r, ckpt.config)

    int4, int8 = est("qwen2.5-3b-instruct/cpu-x86_64-int4"), est("qwen2.5-3b-instruct/cpu-x86_64-int8")
    assert int4.weights_mb < int8.weights_mb < 2 * int4.weights_mb
    assert int4.kv_cache_mb == pytest.approx(2 * 36 * 2 * 128 * 4096 * 4 / 2**20)


def test_plan_cli_prints_the_estimate():
    proc = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "plan", "tiny-qwen3/cpu-x86_64-int4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "KV cache at 1024 tokens" in proc.stdout and "fits" in proc.stdout and "plan: embeddings" in proc.stdout


@pytest.mark.slow
def test_estimate_within_25_percent_of_measured_peak_rss(tmp_path):
    spec = TinySpec(family="qwen2", vocab_size=32768, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    ckpt = create_tiny_qwen(tmp_path / "mid", spec)
    out = build(BuildOptions("qwen2.5-0.5b-instruct/cpu-x86_64-int4", tmp_path / "art", model=str(ckpt), evaluate=False))
    est = json.loads((out / "manifest.json").read_text())["memory_estimate_mb"]["total"]
    code = ("import numpy as np\nfrom edgeqwen.bench import peak_rss_mb\nfrom edgeqwen.runtime import Runner, Sampling\n"
            f"r = Runner({str(out)!r}, threads=2)\nids = list(np.random.default_rng(0).integers(10, 1000, 128))\n"
            "r.generate(ids, Sampling(max_new_tokens=32, ignore_eos=True))\n"
            "print(peak_rss_mb())\n")
    measured = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.75 <= measured / est <= 1.25, (measured, est)
