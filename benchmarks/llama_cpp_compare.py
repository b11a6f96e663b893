"""edgeqwen vs llama.cpp on the same checkpoint, same cores, one run.

    python benchmarks/llama_cpp_compare.py --llama-python VENV/bin/python --llama-src SDIST_DIR [--threads 2]

llama.cpp is benchmark-only, never a dependency: install `llama-cpp-python==0.3.36` (builds from source,
~15 min on 2 cores) in its own venv, and unpack its sdist (`pip download --no-binary :all: --no-deps
llama-cpp-python==0.3.36`) for llama.cpp's own `convert_hf_to_gguf.py` and `gguf-py`. The GGUF is made
from the same random-weight checkpoint with that converter (its tokenizer check is bypassed: the
tokenizer does not change speed), then quantized with llama.cpp's quantizer (Q4_0, Q4_K_M).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytes_per_token import gguf_bytes_per_token, onnx_bytes_per_token  # noqa: E402
from shapes import add_speed_args, ensure_artifact, shape_dir  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402

from edgeqwen.bench import bench  # noqa: E402

CONVERT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r} + "/gguf-py"); sys.path.insert(0, {src!r})
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"  # speed-only: any BPE pre-tokenizer will do
    def no_sentencepiece(self):
        raise FileNotFoundError("byte-level BPE tokenizer")  # Qwen's converter then takes its GPT-2 BPE path
    conversion.base.TextModel._set_vocab_sentencepiece = no_sentencepiece
    import convert_hf_to_gguf as c
    sys.argv = ["convert", {ckpt!r}, "--outfile", {out!r}, "--outtype", "f16"]
    c.main()
""")

LLAMA = textwrap.dedent("""
    import json, sys, time, numpy as np, llama_cpp
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "quantize":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(sys.argv[4]); params.nthread = 2
        rc = llama_cpp.llama_model_quantize(path.encode(), sys.argv[3].encode(), params)
        sys.exit(rc)
    n_prompt, n_gen, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    llm = llama_cpp.Llama(path, n_ctx=n_prompt + n_gen + 8, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    prompt = np.random.default_rng(0).integers(10, 1000, n_prompt).tolist()
    def last():  # the last position's logits (llm.scores holds n_batch rows: a longer prompt's last is not there)
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
    def once(p, n):
        llm.reset()
        t0 = time.perf_counter(); llm.eval(p); t1 = time.perf_counter()
        tok = int(np.argmax(last()))
        for _ in range(n - 1):
            llm.eval([tok]); tok = int(np.argmax(last()))
        return t1 - t0, time.perf_counter() - t1
    once(prompt, 4)
    pre, dec = once(prompt, n_gen)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    print("RESULT " + json.dumps({"ttft_s": pre, "prefill_tps": n_prompt / pre, "decode_tps": (n_gen - 1) / dec, "peak_rss_mb": hwm}))
""")

FTYPES = {"Q4_0": 2, "Q4_K_M": 15}


def _median(rs: list[dict]) -> dict:
    """One row from repeated runs: the median of each speed, and the decode range across runs."""
    import statistics

    out = dict(rs[0])
    for key in ("prefill_tps", "decode_tps", "peak_rss_mb"):
        out[key] = statistics.median(r[key] for r in rs)
    out["decode_range"] = (min(r["decode_tps"] for r in rs), max(r["decode_tps"] for r in rs))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True)
    ap.add_argument("--llama-src", required=True, help="folder holding convert_hf_to_gguf.py and gguf-py")
    add_speed_args(ap)
    ap.add_argument("--also", action="append", default=[], help="more edgeqwen recipes in the same run (repeatable)")
    ap.add_argument("--name", help="results file stem (default llama-cpp-SHAPE)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every engine, interleaved; the table has medians")
    args = ap.parse_args()
    ckpt, art = ensure_artifact(args.shape, args.recipe)
    gguf_dir = shape_dir(args.shape).with_name(f"{args.shape}-gguf")
    gguf_dir.mkdir(parents=True, exist_ok=True)
    f16 = gguf_dir / "model-f16.gguf"
    if not f16.exists():
        subprocess.run([sys.executable, "-c", CONVERT.format(src=args.llama_src, ckpt=str(ckpt), out=str(f16))], check=True)
    arts = {recipe: ensure_artifact(args.shape, recipe)[1] for recipe in [args.recipe, *args.also]}  # builds first
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # engines interleaved, so a noisy minute hits all of them alike
        for name, ftype in FTYPES.items():
            q = gguf_dir / f"model-{name}.gguf"
            if not q.exists():
                subprocess.run([args.llama_python, "-c", LLAMA, "quantize", str(f16), str(q), str(ftype)], check=True)
            proc = subprocess.run([args.llama_python, "-c", LLAMA, "bench", str(q), str(args.prompt_len),
                                   str(args.gen_len), str(args.threads)], capture_output=True, text=True, check=True)
            runs.setdefault(f"llama.cpp {name}", []).append({
                **json.loads(proc.stdout.split("RESULT ", 1)[1]), "size_mb": q.stat().st_size / 1e6,
                **gguf_bytes_per_token(q, Path(args.llama_src) / "gguf-py")})
        for recipe, art in arts.items():
            rep = bench(art, args.prompt_len, args.gen_len, args.threads)
            size = sum(p.stat().st_size for p in art.iterdir() if p.is_file()) / 1e6
            weights = onnx_bytes_per_token(art)
            for engine, r in rep["results"].items():
                if "error" in r:
                    raise SystemExit(f"{engine} on {art} failed: {r['error']}")
                runs.setdefault(f"{engine} ({Path(recipe).stem if recipe.endswith('.yaml') else recipe.split('/')[-1]})",
                                []).append({**r, "size_mb": size, **weights})
    rows = {name: _median(rs) for name, rs in runs.items()}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runtime_bench import read_bandwidth_gbs

    bandwidth = read_bandwidth_gbs(args.threads)
    q40, qkm = rows["llama.cpp Q4_0"], rows["llama.cpp Q4_K_M"]
    lines = [f"{args.shape} shape, random weights, prompt {args.prompt_len}, generate {args.gen_len}, {args.threads} "
             f"threads, CPU {cpu_isa()}; memory read bandwidth {bandwidth:.1f} GB/s (numpy, {args.threads} threads, "
             f"same run); median of {args.repeats} interleaved runs; weight MB read per token counted from the tensors "
             "(benchmarks/bytes_per_token.py)",
             "| engine / artifact | size MB | weight MB read per token | prefill tok/s | decode tok/s (range) "
             "| decode GB/s (% of bandwidth) | peak RSS MB | prefill vs Q4_0 | prefill vs Q4_K_M | decode vs Q4_0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        gbs = r["bytes_per_token"] * r["decode_tps"] / 1e9
        lo, hi = r["decode_range"]
        lines.append(f"| {name} | {r['size_mb']:.0f} | {r['bytes_per_token'] / 1e6:.0f} | {r['prefill_tps']:.1f} | "
                     f"{r['decode_tps']:.1f} ({lo:.1f}–{hi:.1f}) | {gbs:.1f} ({100 * gbs / bandwidth:.0f} %) | "
                     f"{r['peak_rss_mb']:.0f} | "
                     f"{r['prefill_tps'] / q40['prefill_tps']:.2f}x | {r['prefill_tps'] / qkm['prefill_tps']:.2f}x | "
                     f"{r['decode_tps'] / q40['decode_tps']:.2f}x |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name or 'llama-cpp-' + args.shape}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
