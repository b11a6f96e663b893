"""Build wall time per stage, peak RSS and artifact size: edgeqwen recipes vs the builder's default int4 (RTN) and
Olive's own GPTQ workflow on the same checkpoint, with the plan's time estimate beside what was measured.

    python benchmarks/build_bench.py [--shape qwen2.5-0.5b] [--modes normal,low-memory] [--skip-anchor] [--olive]
    python benchmarks/build_bench.py --shape qwen2.5-3b-bf16 --recipes cpu-x86_64-int4 --modes normal --keep DIR

Anchors (same machine, same run): `python -m onnxruntime_genai.models.builder -p int4 -e cpu` with its defaults
(block 32, fp32 embeddings, untied lm_head); with --olive, the recipe's `edgeqwen olive-config` workflow (Olive's Gptq
pass + ModelBuilder) run by `olive run`. Builds run with --no-eval (random weights: the gate is meaningless); the
evaluate stage is timed apart (`edgeqwen eval`, the same work the build's stage does). Peak RSS comes from wait4() on
each process tree (warm children off, so every worker is a waited-for descendant).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import ensure_shape, write_results  # noqa: E402


def timed(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", EDGEQWEN_QUIET="1", EDGEQWEN_WARM_CHILDREN="0", EDGEQWEN_GPTQ_CACHE="off",
               OLIVE_DISABLE_TELEMETRY="1", HF_DATASETS_OFFLINE="1")
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads while we wait4()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code not in ok:
            log.seek(0)
            raise Failed(f"failed: {' '.join(cmd)}\n{log.read().decode()[-2000:]}", code, wall, usage.ru_maxrss / 1024)
    return wall, usage.ru_maxrss / 1024


class Failed(SystemExit):
    """A timed command that failed: its exit code (negative: the signal that ended it), wall time and peak RSS."""

    def __init__(self, message: str, code: int, wall: float, rss: float):
        super().__init__(message)
        self.exit_code, self.wall, self.rss = code, wall, rss


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


STAGES = ("sensitivity", "gptq", "export", "evaluate")


def stages(artifact: Path) -> tuple[dict, dict, str]:
    """(measured seconds per stage, the plan's estimate per stage, calibration note) from the manifest."""
    import json

    m = json.loads((artifact / "manifest.json").read_text())
    bt = m.get("build_time", {})
    note = ""
    if "gptq" in m:
        note = f"{m['gptq']['samples']} × {m['gptq']['seq_len']} tokens, {m['gptq'].get('threads', 1)} threads"
    return dict(bt.get("measured_s", {})), dict(bt.get("estimate", {}).get("seconds", {})), note


def olive_anchor(recipe: str, ckpt: Path, work: Path) -> tuple[float, float, float]:
    """Olive's own GPTQ workflow for the recipe (edgeqwen olive-config → olive run): wall s, peak RSS MB, size MB."""
    cfg, out = work / "olive.json", work / "olive-out"
    subprocess.run([sys.executable, "-m", "edgeqwen.cli", "olive-config", recipe, "--model", str(ckpt), "-o", str(cfg),
                    "--olive-output", str(out)], check=True, capture_output=True)
    wall, rss = timed([sys.executable, "-m", "olive", "run", "--config", str(cfg)])
    size = size_mb(out)
    shutil.rmtree(out, ignore_errors=True)
    return wall, rss, size


def bench_recipe(recipe: str, flags: list[str], ckpt: Path, work: Path, keep_dir: Path | None = None) -> dict:
    """One edgeqwen build (--no-eval) and its evaluation stage timed apart; the artifact moved to keep_dir if given."""
    out = work / recipe.replace("/", "-")
    wall, rss = timed([sys.executable, "-m", "edgeqwen.cli", "build", recipe, "--model", str(ckpt), "-o", str(out),
                       "--no-eval", *flags])
    measured, estimate, note = stages(out)
    keep = Path(__file__).resolve().parent / "results" / f"manifest-{out.name}.json"
    shutil.copy(out / "manifest.json", keep)  # the stage times and the estimate, kept whatever happens next
    e_wall, e_rss = timed([sys.executable, "-m", "edgeqwen.cli", "eval", str(out), "--reference", str(ckpt), "-o",
                           str(work / "eval")], ok=(0, 1))  # 1: the gate missed, as it must on random weights
    measured["evaluate"] = e_wall

    row = dict(name=f"edgeqwen {recipe} {' '.join(flags)}".rstrip(), size=size_mb(out), wall=wall + e_wall,
               rss=max(rss, e_rss), stages=measured, estimate=estimate, note=note)
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(keep_dir / out.name, ignore_errors=True)
        shutil.move(str(out), keep_dir / out.name)
    else:
        shutil.rmtree(out)
    return row


def table(shape: str, rows: list[dict]) -> str:
    a_size = next((r["size"] for r in rows if r["size"] == r["size"]), 1.0)  # the first row with a size
    lines = [f"Build benchmark: {shape} shape, random weights, {os.cpu_count()} cores (build --no-eval, then `edgeqwen "
             "eval` for the evaluate stage)",
             "| build | size MB | size vs first | wall s | peak RSS MB | " + " | ".join(f"{s} s" for s in STAGES)
             + " | estimated s | measured / estimated | notes |",
             "|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|"]
    for r in rows:
        st, est = r.get("stages", {}), r.get("estimate", {})
        cells = [f"{st[s]:.0f}" if s in st else "" for s in STAGES]
        est_total = sum(est.values())
        estimated = f"{est_total:.0f} | {r['wall'] / est_total:.2f}" if est_total else " | "
        size = f"{r['size']:.0f} | {r['size'] / a_size:.2f}x" if r["size"] == r["size"] else "— | —"  # NaN: none made
        lines.append(f"| {r['name']} | {size} | {r['wall']:.0f} | {r['rss']:.0f} | "
                     + " | ".join(cells) + f" | {estimated} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--recipes", default="cpu-x86_64-int4,cpu-x86_64-int8")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--modes", default="normal,low-memory",
                    help="edgeqwen build modes to time: normal, low-memory (comma-separated)")
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--olive", action="store_true", help="also run Olive's GPTQ workflow for each gptq recipe")
    ap.add_argument("--keep", help="keep the built artifacts in this folder (for decode benchmarks on them)")
    args = ap.parse_args()
    ckpt = ensure_shape(args.shape)
    model_dir = {"qwen2.5-0.5b": "qwen2.5-0.5b-instruct", "qwen2.5-1.5b": "qwen2.5-1.5b-instruct",
                 "qwen2.5-3b": "qwen2.5-3b-instruct", "qwen3-0.6b": "qwen3-0.6b"}[args.shape.removesuffix("-bf16")]
    work = Path(tempfile.mkdtemp(prefix="edgeqwen-bench-"))
    rows = []
    try:
        if not args.skip_anchor:
            anchor = work / "builder-default"
            try:
                wall, rss = timed([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o",
                                   str(anchor), "-p", "int4", "-e", "cpu", "-c", str(work / "cache")])
                rows.append(dict(name="builder default int4, RTN (anchor)", size=size_mb(anchor), wall=wall, rss=rss))
            except Failed as exc:  # a row that says so (the 3B shape: killed by the OOM killer on a 24 GB machine)
                why = "killed (SIGKILL: out of memory)" if exc.exit_code == -9 else f"failed (exit {exc.exit_code})"
                rows.append(dict(name="builder default int4, RTN (anchor)", size=float("nan"), wall=exc.wall,
                                 rss=exc.rss, note=f"{why} after {exc.wall:.0f} s at {exc.rss:.0f} MB"))
            shutil.rmtree(anchor, ignore_errors=True)
        for r in args.recipes.split(","):
            recipe = f"{model_dir}/{r}"
            for flags in [[] if m == "normal" else ["--low-memory"] for m in args.modes.split(",")]:
                rows.append(bench_recipe(recipe, flags, ckpt, work, Path(args.keep) if args.keep else None))
            if args.olive and "int4" in r and "fast" not in r:
                wall, rss, size = olive_anchor(recipe, ckpt, work)
                rows.append(dict(name=f"Olive's GPTQ workflow for {recipe} (olive run)", size=size, wall=wall, rss=rss))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, f"build-{args.shape}", table(args.shape, rows), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
