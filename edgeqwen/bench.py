"""`edgeqwen bench ARTIFACT`: prefill/decode tok/s, TTFT and peak RSS, side by side.

Each engine runs in its own process (so peak RSS is its own) on the same token ids:
this runner, onnxruntime-genai on the same artifact, and with --reference the PyTorch eager model.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .runtime.isa import cpu_isa

ENGINES = ("edgeqwen", "onnxruntime-genai", "pytorch")


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(10, min(vocab, 1000), size=n).tolist()


def peak_rss_mb() -> float:
    """This process's own RSS high-water mark (VmHWM). ru_maxrss is not used: after fork+exec it still
    carries the parent's resident size at fork time, which inflates a small worker forked from a big parent."""
    from .memory import proc_kb_as_mb

    hwm = proc_kb_as_mb("/proc/self/status", "VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# the "sampled" row: the artifact's own generation settings (Qwen's generation_config: temperature 0.7, top-p 0.8,
# top-k 20, repetition penalty 1.05), seeded. (Top-p alone on random weights keeps ~95 % of a flat vocabulary, which
# a trained model never does: ~2 ms per token of sampling that says nothing about a real model.)
SAMPLED = {"seed": 0}
PROVIDER_ENV = "EDGEQWEN_BENCH_PROVIDER"  # bench --provider, passed to the runner's worker processes


def run_edgeqwen(artifact: str, ids: list[int], gen: int, threads: int, sampling: dict | None = None) -> dict:
    from .runtime.runner import Runner, Sampling

    runner = Runner(artifact, threads=threads, verify=False, providers=os.environ.get(PROVIDER_ENV) or None)
    def settings(n: int) -> Sampling:
        return Sampling(max_new_tokens=n, ignore_eos=True) if sampling is None else runner.default_sampling(
            max_new_tokens=n, ignore_eos=True, temperature=runner.generation["temperature"] or 0.7, **sampling)

    # warm-up at full size with the measured settings: kernels, arenas, and what only sampling loads (a head file)
    runner.generate(ids, settings(4))
    last = None
    s = settings(gen)
    for last in runner.stream(ids, s):
        pass
    return {"ttft_s": last.ttft_s, "prefill_tps": last.prefill_tps, "decode_tps": last.decode_tps,
            "generated": last.generated_tokens, "providers": runner.providers, "provider_notes": runner.provider_notes}


def _bench_image(artifact: str):
    """The largest image the artifact takes (its max_pixels, 4:3), seeded noise: the encoder's worst case."""
    from PIL import Image

    from .runtime.vision import VisionConfig

    cfg = VisionConfig.load(Path(artifact) / "vision_config.json")
    w = int((cfg.max_pixels * 4 / 3) ** 0.5)
    h = cfg.max_pixels // w
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)), cfg


def run_edgeqwen_vision(artifact: str, ids: list[int], gen: int, threads: int) -> dict:
    """Vision artifacts: one largest image through preprocessing + the encoder (best of 3), then an image+text
    prompt's time to first token."""
    from .runtime.runner import Runner, Sampling

    image, _ = _bench_image(artifact)
    runner = Runner(artifact, threads=threads, verify=False)
    times = []
    for _ in range(3):
        runner.vision.encode([image])
        times.append(runner.vision.encode_s)
    placeholder = [runner.tokenizer.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")]
    prompt = placeholder + ids[:32]
    last = None
    for last in runner.stream(prompt, Sampling(max_new_tokens=gen, ignore_eos=True), images=[image]):
        pass
    return {"encode_ms": min(times) * 1000, "patches": runner.vision.patches, "image_tokens": runner.vision.patches // 4,
            "ttft_s": last.ttft_s, "decode_tps": last.decode_tps}


def run_pytorch_vision(reference: str, ids: list[int], gen: int, threads: int, artifact: str = "") -> dict:
    import torch

    from .architectures import load_reference
    from .export.vision_export import reference_image_processor

    if threads:
        torch.set_num_threads(threads)
    image, cfg = _bench_image(artifact)
    model = load_reference(reference)
    inputs = reference_image_processor(cfg)(images=[image], return_tensors="pt")
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            model.model.visual(inputs["pixel_values"], inputs["image_grid_thw"])
            times.append(time.perf_counter() - t0)
    return {"encode_ms": min(times) * 1000, "patches": int(inputs["pixel_values"].shape[0]),
            "image_tokens": int(inputs["pixel_values"].shape[0]) // 4}


def run_genai(artifact: str, ids: list[int], gen: int, threads: int) -> dict:
    import onnxruntime_genai as og

    cfg = og.Config(artifact)
    if threads:
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(cfg)

    def once(p, n):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(p) + n, do_sample=False, min_length=len(p) + n)
        g = og.Generator(model, params)
        t0 = time.perf_counter()
        g.append_tokens(p)
        g.generate_next_token()
        t1 = time.perf_counter()
        k = 1
        while not g.is_done():
            g.generate_next_token()
            k += 1
        return t1 - t0, time.perf_counter() - t1, k

    once(ids, 4)  # warm-up at full size, as for the other engines
    ttft, dec, k = once(ids, gen)
    return {"ttft_s": ttft, "prefill_tps": len(ids) / ttft, "decode_tps": (k - 1) / dec if dec > 0 else 0.0, "generated": k}


def run_pytorch(reference: str, ids: list[int], gen: int, threads: int) -> dict:
    import torch

    from .architectures import load_reference

    if threads:
        torch.set_num_threads(threads)
    model = load_reference(reference)
    with torch.inference_mode():
        def once(p, n):
            t0 = time.perf_counter()
            out = model(torch.tensor([p]), use_cache=True)
            tok = int(out.logits[0, -1].argmax())
            t1 = time.perf_counter()
            for _ in range(n - 1):
                out = model(torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
                tok = int(out.logits[0, -1].argmax())
            return t1 - t0, time.perf_counter() - t1

        once(ids, 4)
        ttft, dec = once(ids, gen)
    return {"ttft_s": ttft, "prefill_tps": len(ids) / ttft, "decode_tps": (gen - 1) / dec, "generated": gen}


def worker(argv: list[str]) -> int:
    engine, target, n_prompt, gen, threads, vocab = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    ids = prompt_ids(n_prompt, vocab)
    fn = {"edgeqwen": run_edgeqwen, "onnxruntime-genai": run_genai, "pytorch": run_pytorch,
          "edgeqwen-sampled": lambda *a: run_edgeqwen(*a, sampling=SAMPLED), "edgeqwen-vision": run_edgeqwen_vision,
          "pytorch-vision": lambda *a: run_pytorch_vision(*a, artifact=argv[6])}[engine]
    result = fn(target, ids, gen, threads)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))
    return 0


def bench(artifact: Path, prompt_len: int, gen_len: int, threads: int, reference: str | None = None,
          provider: str | None = None) -> dict:
    cfg = json.loads((Path(artifact) / "genai_config.json").read_text())
    vocab = cfg["model"]["vocab_size"]
    jobs = [("edgeqwen", str(artifact)), ("edgeqwen-sampled", str(artifact)), ("onnxruntime-genai", str(artifact))]
    if reference:
        jobs.append(("pytorch", reference))
    if "vision" in cfg["model"]:  # the image side: encoder time per largest image and its peak RSS
        jobs.append(("edgeqwen-vision", str(artifact)))
        if reference:
            jobs.append(("pytorch-vision", reference))
    results = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or ""), HF_HUB_OFFLINE="1") if threads else dict(os.environ)
    env[PROVIDER_ENV] = provider or ""
    for engine, target in jobs:
        proc = subprocess.run([sys.executable, "-m", "edgeqwen.bench", "--worker", engine, target, str(prompt_len),
                               str(gen_len), str(threads), str(vocab), str(artifact)], capture_output=True, text=True,
                              env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            results[engine] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        else:
            results[engine] = json.loads(line[7:])
    data = Path(artifact) / "model.onnx.data"
    return {"artifact": str(artifact), "size_mb": sum(p.stat().st_size for p in Path(artifact).iterdir() if p.is_file()) / 1e6,
            "weights_mb": data.stat().st_size / 1e6 if data.exists() else None,
            "prompt_len": prompt_len, "gen_len": gen_len, "threads": threads, "cpu_isa": cpu_isa(),
            "onnxruntime": _ort_version(), "results": results}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def format_bench(report: dict) -> str:
    res = report["results"]
    anchor = res.get("onnxruntime-genai", {})
    ran_on = next((r["providers"][0] for r in res.values() if r.get("providers")), "?")
    lines = [f"{report['artifact']}  ({report['size_mb']:.1f} MB, prompt {report['prompt_len']}, "
             f"generate {report['gen_len']}, threads {report['threads'] or 'default'}, CPU {report.get('cpu_isa', '?')}, "
             f"onnxruntime {report.get('onnxruntime', '?')}, edgeqwen on {ran_on})",
             f"{'engine':<18} {'prefill tok/s':>13} {'decode tok/s':>12} {'TTFT ms':>8} {'peak RSS MB':>11} {'decode vs genai':>16}"]
    for engine, r in res.items():
        if "error" in r:
            lines.append(f"{engine:<18} error: {r['error']}")
            continue
        if "encode_ms" in r:
            continue
        ratio = r["decode_tps"] / anchor["decode_tps"] if anchor.get("decode_tps") else float("nan")
        lines.append(f"{engine:<18} {r['prefill_tps']:>13.1f} {r['decode_tps']:>12.1f} {r['ttft_s'] * 1000:>8.0f} "
                     f"{r['peak_rss_mb']:>11.0f} {ratio:>15.2f}x")
    notes = {n for r in res.values() for n in r.get("provider_notes") or ()}
    lines.extend(f"note: {n}" for n in sorted(notes))  # a declared fallback: these figures are not its provider's
    vision = {e: r for e, r in res.items() if "encode_ms" in r}
    if vision:
        torch_ms = vision.get("pytorch-vision", {}).get("encode_ms")
        lines.append(f"{'image encoder':<18} {'patches':>8} {'image tokens':>12} {'ms / image':>10} {'peak RSS MB':>11} "
                     f"{'vs PyTorch':>10}")
        for engine, r in vision.items():
            ratio = f"{torch_ms / r['encode_ms']:.2f}x" if torch_ms else "-"
            lines.append(f"{engine:<18} {r['patches']:>8} {r['image_tokens']:>12} {r['encode_ms']:>10.1f} "
                         f"{r['peak_rss_mb']:>11.0f} {ratio:>10}")
    return "\n".join(lines)


def _check_bench_args(args) -> None:
    """Numbers in range and a verified artifact, before any worker starts (was: a hang at --threads 99999, raw worker
    errors and exit 0 at --prompt-len -5, a traceback on a non-artifact folder, a tampered artifact benchmarked)."""
    from .checkpoint import looks_like_hub_id
    from .errors import EdgeQwenError
    from .runtime.runner import RunnerError, check_artifact

    most_threads = max(64, 4 * (os.cpu_count() or 1))
    for flag, value, lo, hi in (("--threads", args.threads, 0, most_threads), ("--prompt-len", args.prompt_len, 1, 1 << 20),
                                ("--gen-len", args.gen_len, 1, 1 << 20), ("--repeats", args.repeats, 1, 1000)):
        if not lo <= value <= hi:
            raise EdgeQwenError(f"{flag} {value} must be in {lo}-{hi}", where=flag,
                                hint="--threads 0 is the library default" if flag == "--threads" else None)
    if not args.speculate:
        for flag, value, default in (("--repeats", args.repeats, 3), ("--prompt-file", args.prompt_file, None)):
            if value != default:
                raise EdgeQwenError(f"{flag} is for --speculate runs", where=flag,
                                    hint="add --speculate lookup (or draft=ARTIFACT), or drop " + flag)
    ref = Path(args.reference).expanduser() if args.reference else None
    hub_id = ref is not None and looks_like_hub_id(args.reference) and not ref.exists()  # the PyTorch row downloads it
    if ref is not None and not hub_id and not (ref / "config.json").is_file():
        raise EdgeQwenError(f"no checkpoint at {args.reference} (no config.json)", where="--reference",
                            hint="the Hugging Face checkpoint folder the artifact was built from")
    try:
        check_artifact(Path(args.artifact), full_hash=True)
    except RunnerError as exc:
        raise EdgeQwenError(f"cannot benchmark {args.artifact}: {exc}", where=str(args.artifact),
                            hint="benchmark an artifact folder made by `edgeqwen build`, as built") from None
    context = _context_length(Path(args.artifact))
    if not args.speculate and context and args.prompt_len + args.gen_len > context:  # every row would fail on it
        raise EdgeQwenError(f"--prompt-len {args.prompt_len} + --gen-len {args.gen_len} = "
                            f"{args.prompt_len + args.gen_len} positions, over the artifact's context of {context}",
                            where="--prompt-len", hint=f"keep the two within {context} (the recipe's context_length)")


def _context_length(artifact: Path) -> int | None:
    """The artifact's context as its runner reads it (runner.context_of), or None where its config lacks one."""
    from .runtime.runner import context_of

    try:
        return context_of(json.loads((artifact / "genai_config.json").read_text()))
    except (OSError, KeyError, TypeError, ValueError):
        return None


def cmd_bench(args) -> int:
    _check_bench_args(args)
    if args.speculate:
        from . import bench_speculate

        if args.prompt_file and not Path(args.prompt_file).is_file():
            from .errors import EdgeQwenError

            raise EdgeQwenError(f"prompt file not found: {args.prompt_file}", where="--prompt-file",
                                hint="a UTF-8 text file whose answer repeats much of it (an edit, a summary)")
        report = bench_speculate.bench(Path(args.artifact), args.speculate, args.gen_len, args.threads, args.prompt_file,
                                       args.repeats)
        print(json.dumps(report, indent=2) if args.json else bench_speculate.format_report(report))
        return 0
    report = bench(Path(args.artifact), args.prompt_len, args.gen_len, args.threads, args.reference, args.provider)
    print(json.dumps(report, indent=2) if args.json else format_bench(report))
    failed = [engine for engine, r in report["results"].items() if "error" in r]
    if failed:  # a row asked for and not measured is a failed benchmark, not a result
        print(f"error: {len(failed)} of {len(report['results'])} rows failed ({', '.join(failed)}): see their lines "
              "above", file=sys.stderr)
        return 1
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="tokens/s, TTFT and peak RSS: this runner vs onnxruntime-genai (vs PyTorch)")
    p.add_argument("artifact")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = library default)")
    p.add_argument("--reference", help="source checkpoint for a PyTorch eager row")
    p.add_argument("--provider", help="execution provider of this runner's rows (default: the artifact's own)")
    p.add_argument("--speculate", metavar="lookup|draft=ARTIFACT", help="speculative vs plain greedy decoding, same "
                   "process and prompt: speedup, acceptance, tokens per verify step, identical text")
    p.add_argument("--prompt-file", help="with --speculate: the prompt (default: an edit-style prompt from the "
                   "packaged eval text)")
    p.add_argument("--repeats", type=int, default=3, help="with --speculate: interleaved plain/speculative runs (the "
                   "speedup is the median of each run's ratio to the plain run beside it; more on a noisy machine)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    sys.exit(worker(sys.argv[2:]))
