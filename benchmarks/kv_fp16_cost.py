"""What the KV cache in fp16 (`kv_cache: fp16`, export/kv_fp16.py) costs and saves, beside the fp32 cache.

Two parts, same machine, same run:
  1. one GroupQueryAttention node, decode step (one new token over a past of L positions), fp32 vs fp16 (cast in and
     out as the edited graph does), the Qwen2.5-0.5B, Qwen3-0.6B and Qwen3-4B attention shapes, L = 256 / 1024 / 4000,
     every case shuffled and interleaved, minima (a shared machine's noise only adds time) — times the layer count is
     the attention's share of a decode step;
  2. with an ARTIFACT: the whole decode step, the artifact against a copy with its KV cache in fp16 (the same edit the
     build makes, applied to model.onnx; the weights file is shared), each run a fresh process, alternated, at prompts
     of 256 / 1024 / 3000 tokens — decode tok/s, greedy tokens equal, and the KV cache's bytes.

    python benchmarks/kv_fp16_cost.py [ARTIFACT] [--rounds 3] [--tokens 32] [--name NAME]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# heads, KV heads, head size, layers
SHAPES = {"qwen2.5-0.5b": (14, 2, 64, 24), "qwen3-0.6b": (16, 8, 128, 28), "qwen3-4b": (32, 8, 128, 36)}
PASTS = (256, 1024, 4000)
PROMPTS = (256, 1024, 3000)


def attention_graph(heads: int, kv_heads: int, head_size: int, slots: int, fp16: bool):
    """One decode-step GroupQueryAttention over an in-place cache of `slots` positions, packed q/k/v in fp32 (the
    builder's layout); `fp16`: cast to fp16 before it and back after it, cache and rotary caches fp16."""
    from onnx import TensorProto, helper, numpy_helper

    kv_type, dt = (TensorProto.FLOAT16, np.float16) if fp16 else (TensorProto.FLOAT, np.float32)
    width = (heads + 2 * kv_heads) * head_size
    cache = [1, kv_heads, slots, head_size]
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, "S", width]),
              helper.make_tensor_value_info("past_k", kv_type, cache),
              helper.make_tensor_value_info("past_v", kv_type, cache),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    rng = np.random.default_rng(0)
    rotary = [numpy_helper.from_array(f(rng.random((slots, head_size // 2))).astype(dt), name)
              for f, name in ((np.cos, "cos"), (np.sin, "sin"))]
    nodes, q, out = [], "qkv", "out"
    if fp16:
        nodes.append(helper.make_node("Cast", ["qkv"], ["qkv16"], to=TensorProto.FLOAT16))
        q, out = "qkv16", "out16"
    nodes.append(helper.make_node("GroupQueryAttention", [q, "", "", "past_k", "past_v", "seqlens_k", "total", "cos",
                                                          "sin"], [out, "present_k", "present_v"],
                                  domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, do_rotary=1,
                                  scale=head_size ** -0.5))
    if fp16:
        nodes.append(helper.make_node("Cast", ["out16"], ["out"], to=TensorProto.FLOAT))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "S", heads * head_size]),
               helper.make_tensor_value_info("present_k", kv_type, cache),
               helper.make_tensor_value_info("present_v", kv_type, cache)]
    graph = helper.make_graph(nodes, "attention", inputs, outputs, rotary)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def attention_costs(threads: int, rounds: int) -> list[dict]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    rows = []
    for shape, (heads, kv_heads, head_size, layers) in SHAPES.items():
        slots = max(PASTS) + 16
        runs = {}
        for fp16 in (False, True):
            model = attention_graph(heads, kv_heads, head_size, slots, fp16)
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            dt = np.float16 if fp16 else np.float32
            k, v = (ort.OrtValue.ortvalue_from_numpy(np.random.rand(1, kv_heads, slots, head_size).astype(dt))
                    for _ in range(2))
            runs[fp16] = (sess, k, v)
        qkv = np.random.rand(1, 1, (heads + 2 * kv_heads) * head_size).astype(np.float32)
        order = [(fp16, past) for fp16 in (False, True) for past in PASTS] * rounds
        random.Random(0).shuffle(order)
        times: dict = {key: [] for key in order}
        for fp16, past in [(f, p) for f in (False, True) for p in PASTS] + order:  # a warm-up of each, then timed
            sess, k, v = runs[fp16]
            io = sess.io_binding()
            io.bind_cpu_input("qkv", qkv)
            io.bind_ortvalue_input("past_k", k)
            io.bind_ortvalue_input("past_v", v)
            io.bind_ortvalue_output("present_k", k)
            io.bind_ortvalue_output("present_v", v)
            io.bind_output("out", "cpu")
            io.bind_cpu_input("seqlens_k", np.array([past], np.int32))
            io.bind_cpu_input("total", np.array(past + 1, np.int32))
            t0 = time.perf_counter()
            sess.run_with_iobinding(io)
            times[(fp16, past)].append(time.perf_counter() - t0)
        for past in PASTS:
            a, b = (min(times[(f, past)][1:]) * 1000 for f in (False, True))
            rows.append({"shape": shape, "past": past, "layers": layers, "fp32_ms": a, "fp16_ms": b,
                         "kv_mb_fp32": 2 * layers * kv_heads * head_size * past * 4 / 2**20})
    return rows


def fp16_copy(artifact: Path, into: Path) -> Path:
    """`artifact` with its KV cache in fp16: the build's edit (export/kv_fp16.py) on model.onnx alone — its rotary
    caches read into it, every other tensor still read from the same weights file by offset."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor

    from edgeqwen.export.kv_fp16 import ROTARY_INPUTS, kv_cache_fp16
    from edgeqwen.package import add_to_manifest

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    rotary = {n.input[i] for n in model.graph.node if n.op_type == "GroupQueryAttention" for i in ROTARY_INPUTS}
    for t in model.graph.initializer:  # read before the weights file gets a second link (onnx then refuses to read it)
        if t.name in rotary and t.external_data:
            load_external_data_for_tensor(t, str(artifact))
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    if not kv_cache_fp16(model):
        raise SystemExit(f"{artifact}: no fp32 GroupQueryAttention cache to put in fp16")
    out = into / (artifact.name + "-kv16")
    shutil.copytree(artifact, out, ignore=shutil.ignore_patterns("*.data"))
    for data in artifact.glob("*.data"):  # a hard link where it can (onnxruntime refuses a symlink out of the folder)
        try:
            os.link(data, out / data.name)
        except OSError:
            shutil.copy2(data, out / data.name)
    onnx.save(model, str(out / "model.onnx"))
    add_to_manifest(out, ["model.onnx"])
    return out


KV_WORKER = """
import json, sys, numpy as np
from edgeqwen.runtime.runner import Runner, Sampling
art, threads, tokens, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = Runner(art, threads=threads, verify=False)
ids = np.random.default_rng(0).integers(100, r.vocab_size - 100, prompt).tolist()
r.generate(ids[:64], Sampling(max_new_tokens=4, ignore_eos=True))
out = [r.generate(ids, Sampling(max_new_tokens=tokens, ignore_eos=True))]  # one: a 3000-token prefill is long
kv = 2 * r.num_layers * r.kv_heads * r.head_size * np.dtype(r.kv_dtype).itemsize  # what the runner allocates a position
print("RESULT " + json.dumps({"decode_tps": max(x.decode_tps for x in out), "tokens": out[-1].token_ids,
                              "kv_bytes_per_token": kv, "kv_dtype": str(np.dtype(r.kv_dtype))}))
"""


def decode_costs(artifact: Path, threads: int, rounds: int, tokens: int) -> list[dict]:
    from ab_decode import run_worker

    import json

    from edgeqwen.runtime.runner import context_of

    context = context_of(json.loads((artifact / "genai_config.json").read_text()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        half = fp16_copy(artifact, Path(tmp))
        for prompt in [p for p in PROMPTS if p + tokens <= context]:  # the prompts the artifact's context takes
            got: dict = {"fp32": [], "fp16": []}
            for i in range(rounds):
                pair = [("fp32", artifact), ("fp16", half)]
                for name, art in (pair if i % 2 == 0 else pair[::-1]):
                    got[name].append(run_worker(KV_WORKER, [art, threads, tokens, prompt], str(art)))
            a, b = (statistics.median(x["decode_tps"] for x in got[n]) for n in ("fp32", "fp16"))
            ratios = [y["decode_tps"] / x["decode_tps"] for x, y in zip(got["fp32"], got["fp16"])]
            rows.append({"prompt": prompt, "fp32_tps": a, "fp16_tps": b, "paired": statistics.median(ratios),
                         "same_tokens": got["fp32"][-1]["tokens"] == got["fp16"][-1]["tokens"],
                         "kv_kb_per_token": {n: got[n][-1]["kv_bytes_per_token"] / 1024 for n in got}})
    return rows


def tables(attention: list[dict], decode: list[dict] | None, artifact: Path | None, threads: int) -> str:
    from edgeqwen.runtime.isa import cpu_isa

    lines = [f"GroupQueryAttention, one decode step over a past of L positions, fp32 vs fp16 cache, {threads} threads, "
             f"CPU {cpu_isa()}, minima of shuffled interleaved runs; x layers = the attention's share of a step",
             "| shape | L | fp32 ms | fp16 ms | fp16 / fp32 | x layers: fp32 / fp16 ms | KV at L, fp32 / fp16 MB |",
             "|---|---|---|---|---|---|---|"]
    for r in attention:
        lines.append(f"| {r['shape']} | {r['past']} | {r['fp32_ms']:.3f} | {r['fp16_ms']:.3f} | "
                     f"{r['fp16_ms'] / r['fp32_ms']:.2f}x | {r['fp32_ms'] * r['layers']:.1f} / "
                     f"{r['fp16_ms'] * r['layers']:.1f} | {r['kv_mb_fp32']:.0f} / {r['kv_mb_fp32'] / 2:.0f} |")
    if decode:
        lines += ["", f"Whole decode step: {artifact.name} against its copy with the KV cache in fp16, fresh processes "
                      "alternated, medians", "| prompt tokens | fp32 KV tok/s | fp16 KV tok/s | fp16 / fp32 (paired) | "
                      "greedy tokens equal | KV KB per token, fp32 / fp16 |", "|---|---|---|---|---|---|"]
        for r in decode:
            kv = r["kv_kb_per_token"]
            lines.append(f"| {r['prompt']} | {r['fp32_tps']:.1f} | {r['fp16_tps']:.1f} | {r['paired']:.2f}x | "
                         f"{'yes' if r['same_tokens'] else 'no'} | {kv['fp32']:.1f} / {kv['fp16']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", type=Path, help="also the whole decode step of this artifact (fp32 KV)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="fresh-process pairs per prompt length (part 2)")
    ap.add_argument("--attention-rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--name", help="also write benchmarks/results/NAME.md and .json")
    a = ap.parse_args()
    attention = attention_costs(a.threads, a.attention_rounds)
    decode = decode_costs(a.artifact, a.threads, a.rounds, a.tokens) if a.artifact else None
    text = tables(attention, decode, a.artifact, a.threads)
    if a.name:
        from shapes import write_results

        write_results(Path(__file__).resolve().parent / "results", a.name, text,
                      {"attention": attention, "decode": decode, "artifact": str(a.artifact) if a.artifact else None})
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
