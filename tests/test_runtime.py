"""The torch-free runner: parity with PyTorch and onnxruntime-genai, streaming, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeqwen.runtime import Runner, RunnerError, Sampling
from edgeqwen.runtime.agreement import FP32_TOL, compare_runs, step_logits
from edgeqwen.runtime.runner import Detokenizer

from .helpers.genai import genai_generate

PROMPTS = ["The assert statement", "Class definitions", "A for loop iterates over", "Exceptions are raised when"]


def test_runtime_imports_without_torch_transformers_or_genai():
    code = ("import sys, edgeqwen.runtime; bad = [m for m in ('torch', 'transformers', 'onnxruntime_genai') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_greedy_matches_pytorch_on_fp32(family, request, artifacts):
    """Every step's logits within FP32_TOL of PyTorch's, and the same greedy tokens wherever the top-2 margin exceeds
    2 x FP32_TOL (two fp32 implementations round differently, and each differently per CPU ISA: a closer tie may
    part them; see edgeqwen.runtime.agreement)."""
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = request.getfixturevalue(f"trained_{family}")
    path = artifacts.get(f"tiny-{family}/cpu-x86_64-fp32", ckpt)
    runner = Runner(path)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = runner.encode(prompt)
        rows, ours = step_logits(runner.stream(ids, Sampling(max_new_tokens=16, ignore_eos=True, keep_logits=True)))
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16,
                                 eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        ref, ref_rows = out.sequences[0, len(ids):].tolist(), [row[0].numpy() for row in out.logits]
        agreement = compare_runs(ref_rows, ref, rows, ours, FP32_TOL)
        assert agreement.ok, (prompt, agreement.summary())


def test_greedy_matches_genai_on_int4(trained_qwen3, artifacts):
    path = artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3)
    runner = Runner(path)
    for prompt in PROMPTS:
        ids = runner.encode(prompt)
        assert runner.generate(ids, Sampling(max_new_tokens=24, ignore_eos=True)).token_ids == genai_generate(path, ids, 24)


def test_pruned_head_scores_every_position_through_lm_head_onnx(trained_qwen3, artifacts, tmp_path):
    """The decoder graph computes the last position's logits only; score() reads every position through lm_head.onnx
    (the head alone, over model.onnx.data's bytes): each row equals the pruned logits of a fresh prefill of that
    prefix. Decoding never loads it."""
    import onnx

    path = artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3)
    head = onnx.load(str(path / "lm_head.onnx"), load_external_data=False)
    assert [n.op_type for n in head.graph.node] == ["MatMulNBits"] and head.graph.input[0].name == "hidden_states"
    assert {e.value for t in head.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    assert (path / "lm_head.onnx").stat().st_size < 10_000  # no weight bytes of its own
    runner = Runner(path)
    ids = runner.encode("The assert statement is a convenient way to insert debugging assertions")
    runner.generate(ids, Sampling(max_new_tokens=4, ignore_eos=True))
    assert runner.last_position_only and not runner.scoring_head_loaded
    every = runner.score(ids)
    assert runner.scoring_head_loaded
    prefixes = []
    for i in range(len(ids)):
        runner.reset()
        prefixes.append(runner.step(ids[:i + 1]))
    assert every.shape == (len(ids), runner.vocab_size) and np.abs(every - np.stack(prefixes)).max() < 1e-4
    copy = tmp_path / "no-head"
    shutil.copytree(path, copy)
    (copy / "lm_head.onnx").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["lm_head.onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    headless = Runner(copy)
    assert headless.generate(ids, Sampling(max_new_tokens=4, ignore_eos=True)).token_ids  # decoding needs no head file
    with pytest.raises(RunnerError, match="last position only .* no lm_head.onnx"):
        headless.score(ids)


def test_streaming_detokenizer_never_splits_utf8(trained_qwen2, artifacts):
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    text = "你好，世界 😀🚀 naïve café — 日本語のテキスト 👩‍👩‍👧"
    ids = runner.encode(text)
    assert len(ids) > len(text) // 2  # byte-level pieces: many characters span several tokens
    detok = Detokenizer(runner.tokenizer)
    pieces = [detok.add(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stream_records_and_stop_strings(trained_qwen2, artifacts):
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    ids = runner.encode("The assert statement")
    full = runner.generate(ids, Sampling(max_new_tokens=24, ignore_eos=True))
    assert full.finish_reason == "length" and len(full.token_ids) == 24
    recs = list(runner.stream(ids, Sampling(max_new_tokens=24, ignore_eos=True)))
    assert [r.finish_reason for r in recs[:-1]] == [None] * 23 and recs[-1].finish_reason == "length"
    assert recs[-1].ttft_s > 0 and recs[-1].decode_tps > 0
    stop = full.text.strip()[6:10]
    assert stop
    cut = runner.generate(ids, Sampling(max_new_tokens=24, stop=(stop,), ignore_eos=True))
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)


def test_sampling_is_seeded_and_varies(trained_qwen2, artifacts):
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    ids = runner.encode("The assert statement")
    s = dict(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.1, ignore_eos=True)
    a = runner.generate(ids, Sampling(seed=1, **s)).token_ids
    assert a == runner.generate(ids, Sampling(seed=1, **s)).token_ids
    assert any(runner.generate(ids, Sampling(seed=k, **s)).token_ids != a for k in range(2, 6))


def test_thinking_is_reported_separately(trained_qwen3, artifacts):
    runner = Runner(artifacts.get("tiny-qwen3/cpu-x86_64-fp32", trained_qwen3))
    off = runner.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = runner.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n")
    ids = runner.encode(on + "<think>\n")
    think = runner.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True), enable_thinking=None)
    assert think.text and not think.reasoning  # a plain prompt string is not treated as open thinking
    recs = list(runner.stream(ids, Sampling(max_new_tokens=8, ignore_eos=True), thinking_open=True))
    assert "".join(r.reasoning for r in recs) and not "".join(r.text for r in recs)
    close = runner.tokenizer.token_to_id("</think>")
    recs = list(runner.stream(ids + [close], Sampling(max_new_tokens=8, ignore_eos=True), thinking_open=False))
    assert "".join(r.text for r in recs) and not "".join(r.reasoning for r in recs)


def test_runner_py_ships_in_artifact_and_runs_alone(trained_qwen2, artifacts, tmp_path):
    art = tmp_path / "device"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2), art)
    proc = subprocess.run([sys.executable, "runner.py", "--prompt", "What is a class?", "--max-new-tokens", "12"],
                          cwd=art, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "finish=" in proc.stderr and proc.stdout.strip()


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1.0), "temperature must be 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(top_k=-3), "top_k must be >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
])
def test_invalid_sampling_values(bad, match, trained_qwen2, artifacts):
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    with pytest.raises(RunnerError, match=match):
        runner.generate("hello", Sampling(**bad))


def test_empty_and_too_long_prompts(trained_qwen2, artifacts):
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    with pytest.raises(RunnerError, match="the prompt is empty"):
        runner.generate("")
    with pytest.raises(RunnerError, match=r"context is 1024"):
        runner.generate(list(np.arange(1100) % 500))


def test_tampered_and_missing_files_are_refused(trained_qwen2, artifacts, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2), art)
    data = art / "model.onnx.data"
    good = data.read_bytes()
    blob = bytearray(good)
    blob[100] ^= 1
    data.write_bytes(bytes(blob))
    with pytest.raises(RunnerError, match="model.onnx.data was modified"):
        Runner(art)
    data.write_bytes(good)
    (art / "tokenizer.json").unlink()
    with pytest.raises(RunnerError, match="tokenizer.json is missing"):
        Runner(art, verify=False)
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "-p", "hi"], capture_output=True, text=True)
    assert proc.returncode == 2 and "tokenizer.json is missing" in proc.stderr


def test_run_cli_prompt_and_chat_loop(trained_qwen3, artifacts):
    path = artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3)
    one = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(path), "-p", "What is a class?", "--no-think",
                          "--max-new-tokens", "8"], capture_output=True, text=True)
    assert one.returncode == 0 and one.stdout.strip() and "8 generated" in one.stderr
    chat = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "run", str(path), "--chat", "--max-new-tokens", "6"],
                          input="What is a class?\nAnd a module?\n", capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and chat.stdout.count("> ") == 3  # two answered turns, then end of input


def test_sampling_without_a_full_sort_keeps_the_distribution():
    """top-k/top-p by partial selection: the nucleus and its probabilities are those of a full sort."""
    from edgeqwen.runtime.runner import sample_token

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(300) * 2).astype(np.float32)
    s = Sampling(temperature=0.8, top_p=0.9, top_k=0)
    probs = np.exp(logits.astype(np.float64) / 0.8 - (logits / 0.8).max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1]
    want = np.zeros_like(probs)
    want[nucleus] = probs[nucleus] / probs[nucleus].sum()
    draws = np.bincount([sample_token(logits, s, np.random.default_rng(i)) for i in range(20000)], minlength=300)
    assert set(np.nonzero(draws)[0]) <= set(nucleus.tolist())  # never outside the nucleus
    assert np.abs(draws / draws.sum() - want).max() < 0.01
    assert sample_token(logits, Sampling(temperature=1.0, top_k=1), rng) == int(np.argmax(logits))
    big = (rng.standard_normal(151936) * 3).astype(np.float32)  # Qwen's vocabulary size: pools widen until covered
    tok = sample_token(big, Sampling(temperature=0.7, top_p=0.95), np.random.default_rng(1))
    p = np.exp(big.astype(np.float64) / 0.7 - big.max() / 0.7)
    assert p[tok] >= np.sort(p)[::-1][int(np.searchsorted(np.cumsum(np.sort(p)[::-1]) / p.sum(), 0.95))]


def test_repetition_penalty_from_kept_distinct_ids_equals_the_plain_rule():
    """Decoding keeps the history's distinct ids (one insertion per token): the same tokens as np.unique of the whole
    history each step, and greedy picks the argmax of the penalized row (positive logits / p, negative x p)."""
    from edgeqwen.runtime.runner import sample_token

    rng = np.random.default_rng(5)
    for trial in range(20):
        row = (rng.standard_normal(151936) * 3).astype(np.float32)
        hist = rng.integers(0, 151936, 300).tolist() + [int(np.argmax(row))]
        seen = np.unique(np.asarray(hist))
        pen = row.copy()
        pen[seen] = np.where(row[seen] > 0, row[seen] / np.float32(1.3), row[seen] * np.float32(1.3))
        assert sample_token(row, Sampling(temperature=0.0, repetition_penalty=1.3), rng, hist, seen) == int(np.argmax(pen))
        s = Sampling(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
        a = sample_token(row, s, np.random.default_rng(trial), hist)
        assert a == sample_token(row, s, np.random.default_rng(trial), hist, seen)


def test_top_k_and_nucleus_equal_a_full_sort_on_qwen_sized_rows():
    from edgeqwen.runtime.runner import nucleus, top_k_indices

    rng = np.random.default_rng(3)
    for scale, top_p, k in [(3.0, 0.95, 20), (0.3, 0.8, 50), (12.0, 0.5, 1), (1.0, 0.99, 100)]:  # flat .. peaked
        logits = (rng.standard_normal(151936) * scale).astype(np.float32)
        assert np.array_equal(np.sort(logits[top_k_indices(logits, k)]), np.sort(logits)[-k:])
        scaled = logits / np.float32(0.7)
        scaled -= scaled.max()
        probs = np.exp(scaled)
        order = np.argsort(-probs, kind="stable")
        full = order[: int(np.searchsorted(np.cumsum(probs[order], dtype=np.float64), top_p * probs.sum(dtype=np.float64))) + 1]
        assert set(nucleus(scaled, probs, top_p).tolist()) == set(full.tolist()), (scale, top_p)


def test_kv_cache_sized_to_the_work_and_grown_in_place(trained_qwen2, artifacts):
    """The in-place KV cache starts at the request's size and grows (keeping what it holds) past it: the logits are
    those of a cache allocated at the full context."""
    path = artifacts.get("tiny-qwen2/cpu-x86_64-int8", trained_qwen2)
    small, full = Runner(path), Runner(path)
    full.reset()
    full.reserve(full.context_length)
    small.reset()
    assert small.kv_capacity == 256 and full.kv_capacity == full.context_length == 1024
    ids = small.encode(" ".join(["The assert statement is a convenient way"] * 40))[:250]
    a, b = small.step(ids, all_logits=True), full.step(ids, all_logits=True)
    for t in range(30):  # one token at a time across the 256-position boundary
        a = np.vstack([a, small.step([ids[t]])[None]])
        b = np.vstack([b, full.step([ids[t]])[None]])
    assert small.kv_capacity == 512 and np.abs(a - b).max() < 1e-4
    res = small.generate(ids[:20], Sampling(max_new_tokens=8, ignore_eos=True))
    assert small.kv_capacity == 512 and len(res.token_ids) == 8  # a short request reuses what is there
