"""Accuracy stage: metric math, fp32/int8/int4 on the trained tiny models, gate, bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.errors import AccuracyGateError, EdgeQwenError
from edgeqwen.evaluate import metrics
from edgeqwen.evaluate.core import EvalConfig, evaluate
from edgeqwen.package import verify_artifact
from edgeqwen.recipe import load_recipe
from edgeqwen.runtime.agreement import FP32_TOL
from edgeqwen.tiny import TinySpec, create_tiny_qwen


def test_metrics_match_hand_computation():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    cand = np.array([[1.0, 2.0, 0.0], [0.0, 0.5, 3.0]])
    targets = np.array([0, 2])

    def softmax(row):
        e = [math.exp(x) for x in row]
        return [x / sum(e) for x in e]

    p = [softmax(r) for r in ref]
    q = [softmax(r) for r in cand]
    kl = [sum(pi * math.log(pi / qi) for pi, qi in zip(p[i], q[i])) for i in range(2)]
    assert np.allclose(metrics.token_kld(ref, cand), kl)
    nll_ref = [-math.log(p[0][0]), -math.log(p[1][2])]
    assert math.isclose(metrics.perplexity(ref, targets), math.exp(sum(nll_ref) / 2))
    assert metrics.top1_agreement(ref, cand) == 0.5
    assert metrics.greedy_match([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    s = metrics.summarize(ref, cand, targets)
    assert math.isclose(s["ppl_ratio"], s["ppl_candidate"] / s["ppl_reference"])
    assert math.isclose(s["ppl_reference"], math.exp(sum(nll_ref) / 2)) and s["top1"] == 0.5
    assert math.isclose(s["kld_mean"], sum(kl) / 2)
    assert metrics.token_kld(ref, ref).max() == 0.0


def test_window_by_window_scoring_equals_scoring_all_at_once():
    """The evaluation scores each window apart and drops its logits (memory): row chunks and windows concatenated give
    the whole-array metrics."""
    rng = np.random.default_rng(0)
    ref, cand = rng.normal(size=(2, 100, 300)) * 3
    targets = rng.integers(0, 300, size=100)
    whole = metrics.summarize(ref, cand, targets)
    parts = [metrics.token_stats(ref[a:b], cand[a:b], targets[a:b], rows=7) for a, b in ((0, 37), (37, 100))]
    split = metrics.summarize_tokens({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    assert split.keys() == whole.keys()
    for k in whole:
        assert math.isclose(split[k], whole[k], rel_tol=1e-12), k
    assert np.allclose(metrics.token_stats(ref, cand, targets)["kld"], metrics.token_kld(ref, cand))


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_fp32_artifact_matches_reference(family, request, artifacts):
    ckpt = request.getfixturevalue(f"trained_{family}")
    path = artifacts.get(f"tiny-{family}/cpu-x86_64-fp32", ckpt, evaluate=True)
    acc = json.loads((path / "accuracy.json").read_text())
    assert acc["kld_mean"] < 1e-4 and acc["top1"] > 0.995 and abs(acc["ppl_ratio"] - 1) < 1e-3
    # greedy continuations equal to PyTorch's, unless one parts where the reference's top two are within 2 x FP32_TOL
    # (two fp32 implementations round differently, and each differently per CPU ISA; measured: never here)
    assert acc["greedy_match"] == 1.0 or all(m is None or m <= 2 * FP32_TOL for m in acc["greedy_parting_margins"]), acc
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["accuracy"]["kld_mean"] == acc["kld_mean"]  # the manifest carries the report's numbers
    assert manifest["files"]["accuracy.json"]["sha256"]  # the report is hashed with the artifact


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_default_recipes_pass_their_gates(family, precision, request, artifacts):
    ckpt = request.getfixturevalue(f"trained_{family}")
    path = artifacts.get(f"tiny-{family}/cpu-x86_64-{precision}", ckpt, evaluate=True)
    acc = json.loads((path / "accuracy.json").read_text())
    gate = acc["gate"]
    assert gate == load_recipe(f"tiny-{family}/cpu-x86_64-{precision}").recipe.accuracy.thresholds()
    assert acc["kld_mean"] <= gate["max_kld"] and acc["ppl_ratio"] <= gate["max_ppl_ratio"]
    assert acc["top1"] >= gate["min_top1"]
    assert 0 < acc["kld_mean"] and acc["top1"] < 1.0  # really quantized, really measured
    if precision == "int8":
        assert acc["kld_mean"] < 0.002


def test_bad_quantization_is_caught_by_the_gate(trained_qwen2, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: int4\n"
                      "context_length: 1024\nquantization: {block_size: 256, symmetric: true}\n"
                      "accuracy: {max_ppl_ratio: 1.08, max_kld: 0.09, min_top1: 0.80}\n")
    out = tmp_path / "out"
    with pytest.raises(AccuracyGateError) as info:
        build(BuildOptions(str(recipe), out, model=str(trained_qwen2)))
    msg = str(info.value)
    assert "mean KLD: measured" in msg and "allowed <= 0.09" in msg and "nothing was published" in msg
    assert "block_size" in msg
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def test_reference_that_does_not_match_is_refused(trained_qwen2, artifacts, tmp_path):
    path = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)
    other_vocab = create_tiny_qwen(tmp_path / "v", TinySpec(family="qwen2", vocab_size=2048, num_hidden_layers=1))
    with pytest.raises(EdgeQwenError, match=r"reference vocabulary \(2048\) does not match the artifact's \(1024\)"):
        evaluate(path, other_vocab, EvalConfig())
    other_arch = create_tiny_qwen(tmp_path / "a", TinySpec(family="qwen2", num_hidden_layers=2))
    with pytest.raises(EdgeQwenError, match=r"reference architecture \(2 layers"):
        evaluate(path, other_arch, EvalConfig())


def test_empty_and_short_eval_text(trained_qwen2, artifacts, tmp_path):
    path = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(EdgeQwenError, match="eval text is empty"):
        evaluate(path, trained_qwen2, EvalConfig(eval_text=empty))
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(EdgeQwenError, match=r"eval text has \d+ tokens, shorter than one window of 512"):
        evaluate(path, trained_qwen2, EvalConfig(eval_text=short))
    with pytest.raises(EdgeQwenError, match="eval text not found"):
        evaluate(path, trained_qwen2, EvalConfig(eval_text=tmp_path / "nope.txt"))


def test_eval_cli_writes_report(trained_qwen2, artifacts, tmp_path, monkeypatch):
    from edgeqwen.cli import main

    path = artifacts.get("tiny-qwen2/cpu-x86_64-int8", trained_qwen2)
    art = tmp_path / "art"
    shutil.copytree(path, art)
    rc = main(["eval", str(art), "--reference", str(trained_qwen2), "--max-windows", "2", "-o", str(tmp_path / "rep")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "accuracy.json").read_text())
    assert rep["windows"] == 2 and rep["status"] == "pass"
    assert (tmp_path / "rep" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.chdir(art)  # `cd ART && edgeqwen eval .` must not write its report into the artifact
    assert main(["eval", ".", "--reference", str(trained_qwen2), "--max-windows", "1"]) == 2
    assert not any(verify_artifact(art).values())


def test_eval_scores_the_builders_own_output_as_the_int4_anchor(trained_qwen2, artifacts, tmp_path, capsys):
    """`edgeqwen eval` on a plain onnxruntime-genai folder (no manifest): the model builder's default INT4 with
    int4 embeddings, the size/accuracy anchor the INT4 defaults are compared against (README, Accuracy)."""
    import subprocess
    import sys

    from edgeqwen.cli import main

    out = tmp_path / "builder-default"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(trained_qwen2), "-o", str(out),
                    "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "cache"), "--extra_options",
                    "int4_op_types_to_quantize=MatMul/Gather", "hf_remote=false"], check=True, capture_output=True)
    assert main(["eval", str(out)]) == 2
    assert "no manifest.json naming its source model" in capsys.readouterr().err
    assert main(["eval", str(out), "--reference", str(trained_qwen2), "--max-windows", "3", "-o", str(tmp_path / "rep")]) == 0
    assert "gate: no gate" in capsys.readouterr().out
    anchor = json.loads((tmp_path / "rep" / "accuracy.json").read_text())
    assert anchor["status"] == "no gate" and anchor["gate"] == {}  # not "pass": nothing was checked
    ours = json.loads((artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2, evaluate=True) / "accuracy.json").read_text())
    assert anchor["kld_mean"] > 4 * ours["kld_mean"], (anchor["kld_mean"], ours["kld_mean"])  # 0.104 vs 0.014


def test_low_memory_reference_scores_a_bf16_checkpoint_exactly_as_its_fp32_model(trained_qwen3, artifacts, tmp_path,
                                                                                   monkeypatch):
    """A bf16 checkpoint's reference kept in bf16 with each decoder layer taken to fp32 for its forward gives the fp32
    model's numbers (every metric, the greedy continuations); the evaluation takes it by itself when the fp32 model
    would not fit the memory available, and says so."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import edgeqwen.memory as memory

    art = artifacts.get("tiny-qwen3/cpu-x86_64-int4", trained_qwen3)
    ref = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(trained_qwen3, dtype=torch.bfloat16).save_pretrained(ref)
    AutoTokenizer.from_pretrained(trained_qwen3).save_pretrained(ref)
    cfg = dict(window=128, max_windows=3)
    fp32 = evaluate(art, ref, EvalConfig(**cfg, low_memory=False))
    low = evaluate(art, ref, EvalConfig(**cfg, low_memory=True))
    assert low.pop("reference_low_memory") and not fp32.pop("reference_low_memory")
    assert low == fp32  # every metric, bit for bit
    config = json.loads((ref / "config.json").read_text())
    need, small = (memory.evaluate_peak_mb(config, 128, 3, low_memory=flag) for flag in (False, True))
    assert small < need
    monkeypatch.setattr(memory, "available_mb", lambda: (need + small) / 2 / 0.9)  # only the low-memory path fits
    chosen = evaluate(art, ref, EvalConfig(**cfg))
    assert chosen.pop("reference_low_memory") and chosen == fp32
