"""Decode-speed trials on one artifact: what the session and the graph's kernels could change, each against the
artifact as built, every run a fresh process (benchmarks/ab_decode.py's worker: in one process the second-loaded
session decodes faster, which would bias in-process trials), rounds interleaved (same machine, same run, medians).

    python benchmarks/decode_trials.py ARTIFACT [--other NAME=ARTIFACT ...] [--threads 2] [--rounds 5]

Variants of the same artifact (the weights untouched):
- `spinning off`: `session.intra_op.allow_spinning = 0` (worker threads sleep between runs instead of spinning);
- `affinity`: the intra-op worker threads pinned to their own cores (`session.intra_op_thread_affinities`);
- `accuracy_level 1` / `accuracy_level 4`: every MatMulNBits node's `accuracy_level` attribute set to 1 (fp32
  activations) or 4 (activations quantized to int8 per block: VNNI / AVX-512 dot products where the CPU has them)
  in a copy of the graph that shares the artifact's weights file; `accuracy_level 1, 4-bit nodes`: the 4-bit ones
  only (onnxruntime has no fast fp32-activation kernel for 8-bit weights).
Other artifacts (`--other block32=DIR`, e.g. the same recipe built with `block_size: 32`) run in the same rounds.

Each round runs every variant once (a fresh process: warm-up, prompt, then `--gen` greedy tokens) in a rotating order;
the table gives each variant's median decode tok/s and the median over rounds of its ratio to the artifact as built.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import write_results  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402


def with_accuracy_level(artifact: Path, level: int, work: Path, bits: int | None = None) -> Path:
    """A copy of the artifact whose decoder graph has every MatMulNBits (with `bits`: every one of that width) at
    `level` (its weights file hard-linked, not copied, where the filesystem allows)."""
    import json

    import onnx

    out = work / f"accuracy-level-{level}-{bits or 'all'}"
    out.mkdir()
    for p in artifact.iterdir():  # hard links: onnxruntime refuses external data behind a symlink out of the folder
        if p.is_file():
            try:
                os.link(p, out / p.name)
            except OSError:  # another filesystem
                shutil.copy2(p, out / p.name)
    genai = json.loads((artifact / "genai_config.json").read_text())
    name = genai["model"]["decoder"]["filename"]
    (out / name).unlink()
    model = onnx.load(str(artifact / name), load_external_data=False)
    changed = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and (bits is None or any(a.name == "bits" and a.i == bits
                                                                       for a in node.attribute)):
            attrs = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*attrs, onnx.helper.make_attribute("accuracy_level", level)])
            changed += 1
    onnx.save(model, str(out / name))
    if not changed:
        raise SystemExit(f"{artifact}: no MatMulNBits node to change")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--other", action="append", default=[], help="NAME=ARTIFACT run in the same rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--name", default="decode-trials")
    args = ap.parse_args()
    artifact = Path(args.artifact)
    work = Path(tempfile.mkdtemp(prefix="edgeqwen-trials-"))
    cores = sorted(os.sched_getaffinity(0))
    try:
        variants = {"as built": (artifact, {}),
                    "spinning off": (artifact, {"session.intra_op.allow_spinning": "0"}),
                    # the calling thread runs one share of the work; the workers (threads - 1) each get a core of their own
                    "affinity": (artifact, {"session.intra_op_thread_affinities":
                                            ";".join(str(c + 1) for c in cores[1:args.threads])}),
                    "accuracy_level 1": (with_accuracy_level(artifact, 1, work), {}),
                    "accuracy_level 1, 4-bit nodes": (with_accuracy_level(artifact, 1, work, bits=4), {}),
                    "accuracy_level 4": (with_accuracy_level(artifact, 4, work), {})}
        for spec in args.other:
            name, _, path = spec.partition("=")
            variants[name] = (Path(path), {})
        from ab_decode import run_once

        got: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for k in range(args.rounds):
            for name in names[k % len(names):] + names[:k % len(names)]:
                path, entries = variants[name]
                got[name].append(run_once(str(path), args.threads, args.gen, runs=1, prompt=args.prompt_len,
                                          entries=entries)["decode_tps"])
            print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in got.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = got["as built"]
    lines = [f"Decode trials on {artifact.name}: {args.prompt_len}-token prompt, {args.gen} greedy tokens, {args.threads} "
             f"threads, CPU {cpu_isa()}, {args.rounds} interleaved rounds, every run a fresh process; medians, and the median over rounds "
             "of each run's ratio to the same round's artifact as built",
             "| variant | decode tok/s (median) | range | vs as built |", "|---|---|---|---|"]
    rows = []
    for name, values in got.items():
        med, ratio = statistics.median(values), statistics.median(v / b for v, b in zip(values, base))
        rows.append({"variant": name, "decode_tps": values, "median": med, "ratio": ratio})
        lines.append(f"| {name} | {med:.1f} | {min(values):.1f}–{max(values):.1f} | {ratio:.2f}x |")
    write_results(args.out, args.name, "\n".join(lines), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
