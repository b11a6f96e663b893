"""Train tiny Qwen2/Qwen3 checkpoints on text that ships with Python, so accuracy numbers mean something.

    python -m edgeqwen.train --family qwen2 --out DIR        # ~3-4 min on 2 CPU cores
    python -m edgeqwen.train --embed                         # refresh edgeqwen/data/models/*

Deterministic for a given torch build (fixed seeds, single-threaded data order). Results are
cached under ~/.cache/edgeqwen/trained keyed by the spec and step count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from .log import stage_log
from .tiny import TinySpec, corpus_text, create_tiny_qwen

_MODELS = yaml.safe_load((Path(__file__).resolve().parent / "data" / "tiny_models.yaml").read_text())
SPECS = {name: TinySpec(**fields) for name, fields in _MODELS["embedded"].items()}  # shipped, trained
# Shapes no recipe was tuned on (benchmarks/holdout_eval.py); trained on demand, cached.
HOLDOUT = {name: TinySpec(**fields) for name, fields in _MODELS["holdout"].items()}
# Speculative decoding's pair (benchmarks/speculative_bench.py): a target that copies and a smaller draft on the same
# tokenizer, each trained with a share of repeated passages (`copy`); on demand, cached.
COPY = {name: float(fields.pop("copy", 0.0)) for name, fields in _MODELS["speculation"].items()}
STEPS = {name: int(fields.pop("steps", 800)) for name, fields in _MODELS["speculation"].items()}
SPECULATION = {name: TinySpec(**fields) for name, fields in _MODELS["speculation"].items()}


def cache_root() -> Path:
    return Path(os.environ.get("EDGEQWEN_CACHE", Path.home() / ".cache" / "edgeqwen")) / "trained"


def train(spec: TinySpec, out: Path, steps: int = 800, seq_len: int = 256, batch: int = 16, lr: float = 3e-3,
          copy: float = 0.0) -> Path:
    """`copy`: the share of each batch's sequences that are a passage followed by itself again (a passage of
    seq_len/4 to seq_len/2 tokens, then its copy). Real models copy from their context (induction heads, learned from the repetition in web text); a tiny
    model trained on 460 kB of distinct prose does not, and prompt lookup then has nothing to accept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    create_tiny_qwen(tmp, spec)
    tok = AutoTokenizer.from_pretrained(tmp)
    ids = torch.tensor(tok(corpus_text("train"))["input_ids"], dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(spec.seed)
    t0 = time.perf_counter()
    for step in range(steps):
        cur_lr = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq_len] for s in starts])
        for row in range(int(round(copy * batch))):  # a passage of L tokens, then the passage again
            span = int(torch.randint(seq_len // 4, seq_len // 2 + 1, (1,), generator=gen))
            x[row, span:] = x[row, :seq_len - span].clone()
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            stage_log(f"train {spec.family}: step {step + 1}/{steps} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f}s)")
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "edgeqwen_train.json").write_text(json.dumps(
        {"spec": asdict(spec), "steps": steps, "seq_len": seq_len, "batch": batch, "lr": lr,
         "final_loss": float(loss.item()), "corpus": "pydoc_data.topics (train split)", "copy": copy}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def trained(name: str, steps: int | None = None) -> Path:
    """Path of a cached trained tiny model, training it on first use (`steps`: its spec's, 800 unless it says)."""
    steps = STEPS.get(name, 800) if steps is None else steps
    spec = {**SPECS, **HOLDOUT, **SPECULATION}[name]
    copy = COPY.get(name, 0.0)
    fields = {k: v for k, v in asdict(spec).items() if not (k == "tied" and v is None)}  # keys from before `tied`
    key = hashlib.sha256(json.dumps([fields, steps] + ([copy] if copy else [])).encode()).hexdigest()[:12]
    out = cache_root() / f"{name}-{key}"
    if not (out / "model.safetensors").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        train(spec, out, steps=steps, copy=copy)
    return out


def write_eval_text(path: Path) -> None:
    path.write_text(corpus_text("eval"), encoding="utf-8")


def write_calib_text(path: Path, max_chars: int = 100_000) -> None:
    """GPTQ's default calibration text: every third training topic until ~100 kB (never the eval split)."""
    import pydoc_data.topics as topics

    keys = [k for i, k in enumerate(sorted(topics.topics)) if i % 10 != 9][::3]
    parts, n = [], 0
    for k in keys:
        parts.append(topics.topics[k])
        n += len(topics.topics[k])
        if n > max_chars:
            break
    path.write_text("\n\n".join(parts), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted({**SPECS, **HOLDOUT, **SPECULATION}), default="tiny-qwen2")
    ap.add_argument("--out", help="output folder (default: the cache)")
    ap.add_argument("--steps", type=int, help="training steps (default: the model's, 800 unless tiny_models.yaml says)")
    ap.add_argument("--embed", action="store_true", help="train both and copy into edgeqwen/data/models")
    args = ap.parse_args(argv)
    if args.embed:
        data = Path(__file__).resolve().parent / "data"
        write_eval_text(data / "eval.txt")
        write_calib_text(data / "calib.txt")
        for name in SPECS:
            src = trained(name, args.steps)
            dst = data / "models" / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            print(dst)
        return 0
    spec = {**SPECS, **HOLDOUT, **SPECULATION}[args.family]
    steps = args.steps or STEPS.get(args.family, 800)
    out = (train(spec, Path(args.out), steps, copy=COPY.get(args.family, 0.0)) if args.out
           else trained(args.family, args.steps))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
