"""Probe, not a feature: a decode graph whose int8 lm_head is replaced by a shortlist head — an int4 copy of the head
scores the whole vocabulary, onnxruntime's TopK keeps K candidates, their rows of the shared int8 table
(GatherBlockQuantized) are scored exactly against the hidden state, and every other logit is -3e38.

    python benchmarks/shortlist_head_probe.py ARTIFACT OUT_DIR [--k 64]
    python benchmarks/ab_decode.py base=ARTIFACT shortlist=OUT_DIR      # the speed, fresh processes

It writes OUT_DIR (a copy of the artifact with the edited model.onnx, its manifest's sizes and hashes refreshed),
prints the weight bytes each decoded token reads (int4 head: about half the int8 head's), and, over the hidden states
of a random-token prompt, how often the int8 head's argmax falls outside the int4 head's top K (recall). What stands
between this probe and a build option: the grammar-constrained decoder needs the full head (lm_head.onnx over
hidden_states) on constrained steps; logprobs renormalize over K tokens; sampling without top-k loses the tail; the
accuracy stage scores lm_head.onnx, so a recall check on the eval text belongs in the gate; and the int4 copy adds
its bytes to the file and to RAM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytes_per_token import onnx_bytes_per_token  # noqa: E402


def rewrite(src: Path, dst: Path, k: int) -> dict:
    import onnx
    from onnx import helper, numpy_helper

    from edgeqwen.export.graph_edit import node_attrs
    from edgeqwen.quantize.graph_quant import ort_block_dequant, ort_block_quant

    model = onnx.load(str(src / "model.onnx"))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    head = next(n for n in g.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    table = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
    a = node_attrs(head)
    if a["bits"] != 8 or len(head.input) > 3 or table.input[2] != head.input[2]:
        raise SystemExit("the probe needs a symmetric int8 head sharing its bytes with the table (the CPU default)")
    q8, scale = numpy_helper.to_array(inits[head.input[1]]), numpy_helper.to_array(inits[head.input[2]])
    w = ort_block_dequant(q8, scale.reshape(q8.shape[0], -1), None, 8, a["block_size"], True, a["K"])  # [K, V]
    packed, s4, _ = ort_block_quant(w, 4, a["block_size"], symmetric=True)  # onnxruntime's own quantizer
    s4 = s4.reshape(-1)
    g.initializer.extend([numpy_helper.from_array(packed, "shortlist.w4"), numpy_helper.from_array(s4, "shortlist.s4"),
                          numpy_helper.from_array(np.array([k], np.int64), "shortlist.k"),
                          numpy_helper.from_array(np.array([-1], np.int64), "shortlist.axis"),
                          numpy_helper.from_array(np.array([-3.0e38], np.float32), "shortlist.fill")])
    h, out = head.input[0], head.output[0]
    nodes = [
        helper.make_node("MatMulNBits", [h, "shortlist.w4", "shortlist.s4"], ["shortlist/coarse"], domain="com.microsoft",
                         K=a["K"], N=a["N"], bits=4, block_size=a["block_size"], accuracy_level=a.get("accuracy_level", 0)),
        helper.make_node("TopK", ["shortlist/coarse", "shortlist.k"], ["shortlist/v", "shortlist/ids"], axis=-1, sorted=0),
        helper.make_node("GatherBlockQuantized", [table.input[0], "shortlist/ids", table.input[2]], ["shortlist/rows"],
                         domain="com.microsoft", **node_attrs(table)),
        helper.make_node("Unsqueeze", [h, "shortlist.axis"], ["shortlist/col"]),
        helper.make_node("MatMul", ["shortlist/rows", "shortlist/col"], ["shortlist/exact4"]),
        helper.make_node("Squeeze", ["shortlist/exact4", "shortlist.axis"], ["shortlist/exact"]),
        helper.make_node("Shape", ["shortlist/coarse"], ["shortlist/shape"]),
        helper.make_node("Expand", ["shortlist.fill", "shortlist/shape"], ["shortlist/filled"]),
        helper.make_node("ScatterElements", ["shortlist/filled", "shortlist/ids", "shortlist/exact"], [out], axis=-1),
    ]
    at = list(g.node).index(head)
    g.node.remove(head)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data"))
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
    manifest = json.loads((dst / "manifest.json").read_text())
    for rel, info in manifest["files"].items():
        p = dst / rel
        info["size"] = p.stat().st_size
        info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {"w": w, "w4": ort_block_dequant(packed, s4.reshape(packed.shape[0], -1), None, 4, a["block_size"], True,
                                            a["K"]), "w4_bytes": packed.nbytes + s4.nbytes, "int8_bytes": q8.nbytes + scale.nbytes}


def recall(src: Path, w: np.ndarray, w4: np.ndarray, k: int, tokens: int = 256) -> float:
    """Share of positions whose int8-head argmax is among the int4 head's top k (hidden states of a random prompt)."""
    from edgeqwen.runtime.runner import Runner

    r = Runner(src, verify=False)
    ids = np.random.default_rng(0).integers(100, r.vocab_size - 100, tokens).tolist()
    hidden = r.session.run(["hidden_states"], {  # one pass over an empty KV cache
        "input_ids": np.array([ids]), "attention_mask": np.ones((1, tokens), np.int64),
        **({"position_ids": np.arange(tokens)[None]} if "position_ids" in r.input_names else {}),
        **{name: np.zeros((1, r.kv_heads, 0, r.head_size), r.kv_dtype) for name in r.input_names
           if name.startswith("past_key_values")}})[0][0]
    exact = np.argmax(hidden @ w, axis=-1)  # [K, V] weights as MatMulNBits computes with them
    coarse = np.argpartition(-(hidden @ w4), k, axis=-1)[:, :k]
    return float(np.mean([e in c for e, c in zip(exact, coarse)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--k", type=int, default=64)
    a = ap.parse_args()
    made = rewrite(a.artifact, a.out, a.k)
    before = onnx_bytes_per_token(a.artifact)["bytes_per_token"]
    int8_head = made["int8_bytes"]
    after = before - int8_head + made["w4_bytes"]  # the int8 rows are read K at a time now, like the table's
    print(f"weight MB read per token: {before / 1e6:.1f} -> {after / 1e6:.1f} (the int8 head's {int8_head / 1e6:.0f} MB "
          f"read whole -> the int4 copy's {made['w4_bytes'] / 1e6:.0f} MB and {a.k} int8 rows); file "
          f"{sum(p.stat().st_size for p in a.artifact.iterdir() if p.is_file()) / 1e6:.0f} -> "
          f"{sum(p.stat().st_size for p in a.out.iterdir() if p.is_file()) / 1e6:.0f} MB")
    print(f"recall of the int8 head's argmax in the int4 head's top {a.k}: {recall(a.artifact, made['w'], made['w4'], a.k):.3f} "
          "(random-token prompt)")
    print(f"speed: python benchmarks/ab_decode.py base={a.artifact} shortlist={a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
