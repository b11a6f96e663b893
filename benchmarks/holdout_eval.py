"""Quality by default on trained models no recipe was tuned on: every CPU-evaluable Qwen recipe × every trained model,
beside onnxruntime-genai's builder defaults on the same model.

    python benchmarks/holdout_eval.py                       # all recipes below × the four trained models
    python benchmarks/holdout_eval.py --models holdout-qwen3-3l --recipes qwen3-0.6b/cpu-x86_64-int4

Trained models (`python -m edgeqwen.train`, cached): the two embedded tiny models and two shapes no recipe was
tuned on (edgeqwen/train.py HOLDOUT: Qwen2 tied 6 layers hidden 192; Qwen3 untied 3 layers hidden 160, one KV
head, vocabulary 3000). Eval text: the held-out tenth of the training corpus (never calibration text: that is a
third of the training split). Anchors: the builder's `-p int4 -e cpu` default (fp32 table) and with
`int4_op_types_to_quantize=MatMul/Gather` (int4 table), scored with `edgeqwen eval --reference`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import write_results  # noqa: E402

MODELS = ["tiny-qwen2", "tiny-qwen3", "holdout-qwen2-6l", "holdout-qwen3-3l"]
RECIPES = [  # one of each distinct quantization (the Qwen2.5 and Qwen3 recipes of a target share theirs)
    "qwen2.5-0.5b-instruct/cpu-x86_64-int4", "qwen2.5-0.5b-instruct/cpu-x86_64-fast-int4",
    "qwen2.5-0.5b-instruct/cpu-x86_64-speed-int4", "qwen2.5-0.5b-instruct/ort-mobile-int4",
    "qwen2.5-0.5b-instruct/cpu-x86_64-portable-int4", "qwen2.5-0.5b-instruct/cpu-x86_64-int8",
    "qwen2.5-0.5b-instruct/qnn-npu-int8", "qwen3-4b/cpu-arm64-int4",
]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", EDGEQWEN_QUIET="1")


def model_path(name: str) -> Path:
    from edgeqwen.checkpoint import embedded_dir
    from edgeqwen.train import trained

    embedded = embedded_dir() / name
    return embedded if embedded.is_dir() else trained(name)


def weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".ort")) / 1e6


def run_recipe(recipe: str, model: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeqwen", "build", recipe, "--model", str(model), "-o", str(out),
                           "--force", "--keep-failed"], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if proc.returncode == 1:  # gate missed: nothing published; the kept work folder holds the last attempt's report
        kept = sorted(out.parent.glob(f".{out.name}.building-*/artifact-*/accuracy.json"), key=lambda p: p.stat().st_mtime)
        if kept:
            out = kept[-1].parent
    if not (out / "accuracy.json").exists():
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "build_s": wall}
    acc = json.loads((out / "accuracy.json").read_text())
    plan = json.loads((out / "manifest.json").read_text())["export"]["plan"] if (out / "manifest.json").exists() else {}
    mixed = plan.get("mixed") or {}
    return {"mb": weights_mb(out), "ppl_ratio": acc["ppl_ratio"], "kld": acc["kld_mean"], "kld_p99": acc["kld_p99"],
            "top1": acc["top1"], "gate": acc["status"], "build_s": wall, "bpw": mixed.get("bits_per_weight")}


def run_anchor(model: Path, out: Path, table_int4: bool) -> dict:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out), "-p", "int4",
           "-e", "cpu"]
    if table_int4:
        cmd += ["--extra_options", "int4_op_types_to_quantize=MatMul/Gather"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    wall = time.perf_counter() - t0
    report = out.parent / (out.name + "-eval")
    subprocess.run([sys.executable, "-m", "edgeqwen", "eval", str(out), "--reference", str(model), "-o", str(report)],
                   check=True, capture_output=True, env=ENV)
    acc = json.loads((report / "accuracy.json").read_text())
    return {"mb": weights_mb(out), "ppl_ratio": acc["ppl_ratio"], "kld": acc["kld_mean"], "kld_p99": acc["kld_p99"],
            "top1": acc["top1"], "gate": "–", "build_s": wall, "bpw": None}


def table(rows: list[tuple[str, str, dict]]) -> str:
    lines = ["| model | recipe / anchor | model MB | bits/weight (layers) | PPL ratio | KLD mean | KLD p99 | top-1 | gate | build s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, what, r in rows:
        if "error" in r:
            lines.append(f"| {model} | {what} | error: {' '.join(r['error'])[:80]} | | | | | | | {r['build_s']:.0f} |")
            continue
        bpw = f"{r['bpw']:.2f}" if r.get("bpw") else ""
        lines.append(f"| {model} | {what} | {r['mb']:.2f} | {bpw} | {r['ppl_ratio']:.4f} | {r['kld']:.4f} | "
                     f"{r['kld_p99']:.3f} | {r['top1'] * 100:.1f} % | {r['gate']} | {r['build_s']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--name", default="holdout-quality")
    args = ap.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="holdout-"))
    try:
        for name in args.models.split(","):
            model = model_path(name)
            if not args.skip_anchor:
                for table_int4 in (False, True):
                    label = f"builder default int4{' + int4 table' if table_int4 else ''} (anchor)"
                    rows.append((name, label, run_anchor(model, work / f"{name}-anchor{int(table_int4)}", table_int4)))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
            for recipe in args.recipes.split(","):
                rows.append((name, recipe, run_recipe(recipe, model, work / f"{name}-{recipe.replace('/', '-')}")))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = (f"Quality on trained models ({', '.join(args.models.split(','))}), eval text: the held-out split, "
            f"2 cores\n" + table(rows))
    write_results(args.out, args.name, text, [{"model": m, "what": w, **r} for m, w, r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
