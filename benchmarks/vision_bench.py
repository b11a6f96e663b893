"""Qwen2.5-VL-3B's image encoder on this machine: ms per image and peak RSS, edgeqwen's artifact vs PyTorch.

    python benchmarks/vision_bench.py                 # the recipe's 448x448 cap (1024 patches, 256 image tokens)
    python benchmarks/vision_bench.py --threads 2

The checkpoint has Qwen2.5-VL-3B-Instruct's vision config exactly (32 blocks, hidden 1280, 16 heads, MLP 3420,
window 112, full attention at blocks 7/15/23/31, out 2048) with random weights, and a 2-layer text decoder of the
3B's width (the encoder's cost does not depend on the decoder). Built with qwen2.5-vl-3b-instruct/cpu-x86_64-int4
(int8 encoder) and with its fp32 recipe; `edgeqwen bench --reference` times each encoder on the largest image the
recipe takes (best of 3), each engine in its own process for its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CACHE = Path.home() / ".cache" / "edgeqwen" / "bench"

VISION_3B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
                 spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                 tokens_per_second=2)


def checkpoint() -> Path:
    out = CACHE / "qwen2.5-vl-3b-vision-shape"
    if (out / "model.safetensors").exists() or list(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    from edgeqwen.tiny import save_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(out, "qwen2_5_vl", 1024)
    text = dict(vocab_size=1024, hidden_size=2048, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=16,
                num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True,
                eos_token_id=ids["<|im_end|>"])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=VISION_3B, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
                           architectures=["Qwen2_5_VLForConditionalGeneration"])
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.float32).save_pretrained(out)
    Qwen2VLImageProcessor().save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ckpt = checkpoint()
    reports = {}
    for recipe in ("qwen2.5-vl-3b-instruct/cpu-x86_64-int4", "qwen2.5-vl-3b-instruct/cpu-x86_64-fp32"):
        out = CACHE / recipe.replace("/", "-")
        if not (out / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "edgeqwen", "build", recipe, "--model", str(ckpt), "-o", str(out),
                            "--no-eval", "--force"], check=True)
        proc = subprocess.run([sys.executable, "-m", "edgeqwen", "bench", str(out), "--reference", str(ckpt),
                               "--threads", str(args.threads), "--prompt-len", "64", "--gen-len", "16", "--json"],
                              check=True, capture_output=True, text=True)
        reports[recipe] = json.loads(proc.stdout)
    print(f"Qwen2.5-VL-3B image encoder (random weights, {args.threads} threads), largest image of the recipe:")
    print(f"{'artifact':<44} {'encoder MB':>14} {'patches':>8} {'ms / image':>10} {'peak RSS MB':>11} "
          f"{'PyTorch ms':>10} {'vs PyTorch':>10}")
    for recipe, rep in reports.items():
        res = rep["results"]
        ours, torch_ = res["edgeqwen-vision"], res.get("pytorch-vision", {})
        size = sum(f.stat().st_size for f in Path(rep["artifact"]).glob("vision.onnx*")) / 1e6  # + .data past 2 GB
        ratio = torch_["encode_ms"] / ours["encode_ms"] if torch_.get("encode_ms") else float("nan")
        print(f"{recipe:<44} {size:>14.0f} {ours['patches']:>8} {ours['encode_ms']:>10.0f} {ours['peak_rss_mb']:>11.0f} "
              f"{torch_.get('encode_ms', float('nan')):>10.0f} {ratio:>9.2f}x")
    print(f"PyTorch fp32 peak RSS (whole model loaded): {reports[next(iter(reports))]['results'].get('pytorch-vision', {}).get('peak_rss_mb', float('nan')):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
