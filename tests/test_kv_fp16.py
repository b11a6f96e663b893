"""`kv_cache: fp16`: the KV cache's memory halved on the CPU graphs, the model's outputs kept."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.recipe import load_recipe
from edgeqwen.runtime import Runner, Sampling

from .helpers.artifacts import kv16_recipe
from .helpers.devices import batch_comparison
from .helpers.genai import genai_generate
from .helpers.recipes import GOOD_RECIPE


@pytest.fixture(scope="module")
def kv16(recipe_dir, artifacts, trained_qwen2):
    return artifacts.get(kv16_recipe(recipe_dir), trained_qwen2, evaluate=True)


@pytest.fixture(scope="module")
def kv32(artifacts, trained_qwen2):
    return artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)


def test_the_cache_is_fp16_and_half_the_bytes(kv16, kv32):
    graph = onnx.load(str(kv16 / "model.onnx"), load_external_data=False).graph
    past = [v for v in graph.input if v.name.startswith("past_key_values.")]
    assert past and all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in past)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
               for v in graph.output if v.name.startswith("present."))
    a, b = Runner(kv32), Runner(kv16)
    for r in (a, b):
        r.generate(r.encode("hello there"), Sampling(max_new_tokens=4, ignore_eos=True))
    assert b.kv_dtype == np.float16 and a.kv_dtype == np.float32
    size = [sum(np.prod(k.shape()) * np.dtype(r.kv_dtype).itemsize for pair in r._kv for k in pair) for r in (a, b)]
    assert a.kv_capacity == b.kv_capacity and size[1] * 2 == size[0]
    manifest = json.loads((kv16 / "manifest.json").read_text())
    assert manifest["resolved"]["kv_cache"] == "fp16" and manifest["export"]["plan"]["kv_fp16"] is True
    assert any("GroupQueryAttention nodes run in fp16" in d for d in manifest["export"]["decisions"])


def test_outputs_stay_the_fp32_caches(kv16, kv32):
    """Against PyTorch (the build's gate) and against the same weights with an fp32 cache, position by position."""
    report = json.loads((kv16 / "accuracy.json").read_text())
    assert report["kld_mean"] < 1e-4 and report["top1"] > 0.99  # measured 2e-6 and 99.9 %
    a, b = Runner(kv32), Runner(kv16)
    ids = a.encode("The river runs to the sea, and the sea is never full. " * 12)
    la, lb = a.score(ids), b.score(ids)
    assert np.abs(la - lb).max() < 0.05 * np.abs(la).max()
    assert (la.argmax(-1) == lb.argmax(-1)).mean() > 0.98


def test_onnxruntime_genai_and_the_batch_engine_run_it(kv16):
    r = Runner(kv16)
    ids = r.encode(r.apply_chat_template([{"role": "user", "content": "Name three rivers."}]))
    mine = r.generate(ids, Sampling(max_new_tokens=12, temperature=0, repetition_penalty=1.0, ignore_eos=True))
    assert mine.token_ids == genai_generate(kv16, ids, 12)  # genai reads the cache's type from the graph
    rows = batch_comparison(kv16, sampled=False)
    assert all(row["ok"] for row in rows), [row["summary"] for row in rows]


def test_estimate_counts_half_the_cache(tmp_path, random_qwen2):
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.memory import estimate
    from edgeqwen.planner import plan

    ckpt = inspect_checkpoint(random_qwen2)
    est = {}
    for kv in ("fp32", "fp16"):
        path = tmp_path / f"{kv}.yaml"
        path.write_text(GOOD_RECIPE + f"kv_cache: {kv}\n")
        r = load_recipe(str(path))
        est[kv] = estimate(plan(r, ckpt), r, ckpt.config)
    assert est["fp16"].kv_cache_mb * 2 == pytest.approx(est["fp32"].kv_cache_mb)
    assert est["fp16"].weights_mb == est["fp32"].weights_mb


@pytest.mark.parametrize("change", [("target: cpu-x86_64", "target: webgpu"),
                                    ("precision: int4", "precision: int4\nexporter: portable")])
def test_refused_where_there_is_no_fp32_attention_to_cast(tmp_path, change):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD_RECIPE.replace(*change) + "kv_cache: fp16\n")
    with pytest.raises(EdgeQwenError) as info:
        load_recipe(str(path))
    assert info.value.where == f"{path}: kv_cache" and "CPU execution provider's builder graphs" in info.value.what


def test_olive_config_says_it_leaves_the_fp16_cache_out(recipe_dir, tmp_path):
    from edgeqwen.interop.olive_config import olive_workflow

    _, notes = olive_workflow(kv16_recipe(recipe_dir), None, str(tmp_path / "olive"))
    assert any("kv_cache fp16 left out" in n for n in notes)
