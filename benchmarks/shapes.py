"""Random-weight checkpoints with the real Qwen shapes (speed/memory benchmarks only; values are noise).

    python benchmarks/shapes.py qwen2.5-0.5b [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from edgeqwen.tiny import TinySpec, create_tiny_qwen

SHAPES = {
    # vocab, hidden, intermediate, layers, heads, kv heads, head_dim, positions, tied (published config.json values)
    "qwen2.5-0.5b": TinySpec("qwen2", 151936, 896, 4864, 24, 14, 2, None, 32768),
    "qwen2.5-1.5b": TinySpec("qwen2", 151936, 1536, 8960, 28, 12, 2, None, 32768),
    "qwen2.5-3b": TinySpec("qwen2", 151936, 2048, 11008, 36, 16, 2, None, 32768),
    "qwen3-0.6b": TinySpec("qwen3", 151936, 1024, 3072, 28, 16, 8, 128, 40960, tied=True),
}


def shape_dir(name: str) -> Path:
    return Path(os.environ.get("EDGEQWEN_CACHE", Path.home() / ".cache" / "edgeqwen")) / "shapes" / name


def ensure_shape(name: str, out: Path | None = None) -> Path:
    """`qwen2.5-3b` (fp32) or `qwen2.5-3b-bf16` (bf16, as Qwen publishes its checkpoints)."""
    base, bf16 = (name[:-5], True) if name.endswith("-bf16") else (name, False)
    out = out or shape_dir(name)
    if not (out / "model.safetensors").exists() and not list(out.glob("model-*.safetensors")):
        print(f"creating random-weight {name} checkpoint in {out} ...", flush=True)
        create_tiny_qwen(out, SHAPES[base], dtype="bfloat16" if bf16 else "float32", force=True)  # a partial one: redo
    return out


def write_results(out_dir: str | Path, name: str, text: str, data) -> None:
    """Print a benchmark's table and keep it (text + JSON) under benchmarks/results/."""
    import json

    print(text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text + "\n")
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))


def add_speed_args(ap: argparse.ArgumentParser) -> None:
    """The options every speed benchmark shares (same defaults as the issue tracker's tables)."""
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES) + [f"{k}-bf16" for k in sorted(SHAPES)])
    ap.add_argument("--recipe", default="qwen2.5-0.5b-instruct/cpu-x86_64-int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))


def ensure_artifact(shape: str, recipe: str) -> tuple[Path, Path]:
    """(checkpoint, artifact) for a shape built with a recipe, both cached next to each other."""
    import hashlib

    import json

    from edgeqwen.recipe import read_recipe_data, recipe_path

    ckpt = ensure_shape(shape)
    resolved = json.dumps(read_recipe_data(recipe_path(recipe)), sort_keys=True)  # extends: applied
    h = hashlib.sha256(resolved.encode())
    pkg = Path(__file__).resolve().parents[1] / "edgeqwen"
    for src in sorted(p for room in ("export", "planner", "quantize") for p in (pkg / room).rglob("*.py")):
        h.update(src.read_bytes())  # the code that shapes the graph: a changed exporter or quantizer is rebuilt too
    for target in sorted((pkg.parent / "targets").glob("*.yaml")):
        h.update(target.read_bytes())  # and a target's settings (block size, shortlist, zero-point cost)
    digest = h.hexdigest()[:8]  # a changed recipe is rebuilt
    art = shape_dir(shape).with_name(f"{shape}-{Path(recipe).stem if recipe.endswith('.yaml') else recipe.replace('/', '-')}-{digest}")
    if not (art / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", recipe, "--model", str(ckpt), "-o", str(art),
                        "--no-eval", "--force"], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return ckpt, art


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES) + [f"{k}-bf16" for k in sorted(SHAPES)])
    ap.add_argument("--out")
    a = ap.parse_args()
    print(ensure_shape(a.shape, Path(a.out) if a.out else None))
