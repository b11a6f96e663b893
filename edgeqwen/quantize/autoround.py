"""AutoRound on the PyTorch checkpoint before the model builder (the neural-compressor project's weight-only
rounding optimizer: per block, it tunes each weight's rounding direction and the min/max of each group by
signed gradient descent against the block's full-precision output on calibration text).

The result is saved in the GPTQ (auto-gptq) layout, which onnxruntime-genai's builder imports into
MatMulNBits like Olive's GPTQ output. Calibration text is local (the same JSON-lines records as GPTQ).
Verified with auto-round 0.16.1 + onnxruntime-genai 0.14.1. neural-compressor 3.10's own AWQ could not be
used here: its absorb-layer detection (a TorchScript trace) fails on transformers 4.57's Qwen2, so it
leaves the weights as RTN would.

Usage (what `edgeqwen build` runs in a child process): python -m edgeqwen.quantize.autoround CONFIG.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..child import calibrated_threads_env, calibration_threads, run_child
from ..errors import EdgeQwenError
from ..log import stage_log
from .request import CheckpointRequest
from .result_cache import cache_key, cached

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers", "auto_round")

TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


def quantize_checkpoint(job: CheckpointRequest) -> tuple[Path, dict, list[tuple[str, str]]]:
    """The build's AutoRound step: check calibration text, run AutoRound, return the quantized checkpoint folder."""
    from .calibration import prepare_calibration

    req, work = job.quant, job.work
    calib = prepare_calibration(job.calibration_text, job.model, work / "calibration.jsonl", job.samples, job.seq_len)
    stage_log(f"        calibration: {calib.samples} × {calib.seq_len} tokens from {calib.source} ({calib.tokens} tokens)")
    settings = {"bits": req.bits, "group_size": req.block_size, "sym": req.symmetric, "iters": job.iters,
                "samples": calib.samples, "seq_len": calib.seq_len, "batch_size": min(8, calib.samples), "seed": 42}
    config = {"model": str(job.model), "calib_jsonl": str(calib.jsonl), "output_dir": str(work / "autoround"), **settings}
    key = cache_key(job.model, calib.jsonl, settings, "auto-round")

    def run() -> tuple[Path, float]:
        cfg_path = work / "autoround.json"
        cfg_path.write_text(json.dumps(config, indent=2))
        run = run_child("edgeqwen.quantize.autoround", cfg_path, work / "autoround.log",
                        progress=("quantized", "Quantizing done"), what="autoround", env=calibrated_threads_env(),
                        hint="try fewer quantization.calibration.iters, algorithm: gptq, or another calibration file",
                        clean=lambda t: t.split("] ")[-1].replace("\x1b[0m", ""))
        return _saved_model(Path(config["output_dir"]), work / "autoround.log"), run.wall_s

    model_dir, wall = cached("autoround", key, "AutoRound", run)
    decision = ("autoround", f"autoround ({job.iters} iterations per decoder layer, signed-gradient rounding + "
                        f"min/max tuning) on every decoder-layer linear: {calib.samples} calibration sequences × "
                        f"{calib.seq_len} tokens from {Path(calib.source).name}; lm_head and embeddings quantized by RTN "
                        "in the builder")
    return model_dir, {**calib.as_dict(), "iters": job.iters, "wall_s": round(wall, 2), "threads": calibration_threads(),
                       "cache_key": key}, [decision]


def _saved_model(out: Path, log: Path) -> Path:
    """AutoRound saves into a sub-folder named after the model and scheme (e.g. `tiny-qwen2-w4g32`)."""
    found = [p.parent for p in out.rglob("config.json")]
    if not found:
        raise EdgeQwenError("AutoRound wrote no model", where=str(log), hint="see the log")
    return found[0]


def main(argv: list[str]) -> int:
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ["EDGEQWEN_CALIB_THREADS"]))  # set by the build (child.calibrated_threads_env)
    cfg = json.loads(Path(argv[0]).read_text())
    torch.manual_seed(cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    with open(cfg["calib_jsonl"], encoding="utf-8") as f:
        text = "\n\n".join(json.loads(line)["text"] for line in f)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = cfg["seq_len"]
    texts = [tok.decode(ids[i * n:(i + 1) * n]) for i in range(min(cfg["samples"], len(ids) // n))]
    ar = AutoRound(model, tok, bits=cfg["bits"], group_size=cfg["group_size"], sym=cfg["sym"], iters=cfg["iters"],
                   nsamples=len(texts), seqlen=n, batch_size=cfg["batch_size"], dataset=texts, seed=cfg["seed"],
                   device_map="cpu", amp=False, scale_dtype="fp32")
    ar.quantize_and_save(cfg["output_dir"], format="auto_gptq")
    # AutoRound re-saves the tokenizer with its calibration truncation (seqlen) baked into tokenizer.json;
    # the artifact must tokenize like the source checkpoint, so its own files go back in.
    import shutil

    saved = _saved_model(Path(cfg["output_dir"]), Path(argv[0]))
    for f in Path(cfg["model"]).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
            shutil.copy2(f, saved / f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
