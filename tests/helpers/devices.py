"""Shared by the device checks (and by tests that compare two runs of one artifact).

Run as a script, it prints one JSON line: `python -m tests.helpers.devices batch ARTIFACT` compares batched with lone
decoding (what tests/test_batch.py asserts), so the same comparison can run under `qemu-x86_64-static -cpu Haswell`
(an x86-64 without AVX-512) on artifacts built natively.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime

from edgeqwen.runtime.agreement import INT8_ACTIVATION_TOL
from edgeqwen.runtime.isa import cpu_isa

REPO = Path(__file__).resolve().parents[2]
CI_CACHE = Path(os.environ.get("EDGEQWEN_CI_CACHE", Path.home() / ".cache" / "edgeqwen-ci"))

PROMPTS = ["What does the assert statement do?", "Explain the for loop.", "x",
           "What is a class? Tell me about inheritance, methods and attributes in some detail."]
MAX_NEW = (40, 12, 60, 25)
# Batched vs lone decoding: the int8-activation tolerance (measured max |logit diff| 4e-6 on an AVX-512 host,
# up to 0.134 under qemu -cpu Haswell on tiny-qwen2 int4, where batch shapes take other MatMulNBits paths).
BATCH_TOL = INT8_ACTIVATION_TOL


def batch_comparison(artifact, sampled: bool, speculate=None) -> list[dict]:
    """4 requests over 2 slots (two wait, then take freed slots), prompts prefilled in chunks of 8 tokens, against each
    prompt run alone; one Agreement (as a dict) per prompt, plus whether the tokens were identical. `speculate`:
    `lookup`, or a function (prompt ids, lone run's tokens) -> Drafter, for the even-numbered requests (the others
    decode plainly in the same batch steps)."""
    from edgeqwen.runtime import Runner, Sampling
    from edgeqwen.runtime.agreement import compare_runs, step_logits
    from edgeqwen.runtime.batch import BatchEngine

    lone = Runner(artifact)
    ids = [lone.encode(lone.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS]
    settings = [Sampling(max_new_tokens=n, ignore_eos=True, temperature=0.8 if sampled else 0.0, top_p=0.9, seed=i,
                         keep_logits=True) for i, n in enumerate(MAX_NEW)]
    alone = [step_logits(lone.stream(i, s)) for i, s in zip(ids, settings)]
    engine = BatchEngine(Runner(artifact), max_batch=2, prefill_chunk=8)
    try:
        spec = [None] * len(ids)
        if speculate is not None:
            spec[::2] = [speculate if isinstance(speculate, str) else speculate(i, t)
                         for i, (_, t) in list(zip(ids, alone))[::2]]
        handles = [engine.submit(i, s, speculate=x) for i, s, x in zip(ids, settings, spec)]
        together = [step_logits(h) for h in handles]
    finally:
        engine.close()
    out = []
    for (la, ta), (lb, tb), h in zip(alone, together, handles):
        a = compare_runs(la, ta, lb, tb, BATCH_TOL, greedy=not sampled)
        out.append({"ok": a.ok, "summary": a.summary(), "max_diff": a.max_diff, "diverged_at": a.diverged_at,
                    "identical": ta == tb, "batched_steps": engine.steps, "batch_tokens": engine.batch_tokens,
                    "speculation": vars(h.speculation) if h.speculation is not None else None})
    return out


# ---- emulation ---------------------------------------------------------------------------------------------------
def qemu_x86() -> str | None:
    """Debian's qemu-x86_64-static, to run this venv's Python as an older x86-64 (None when not installed)."""
    return shutil.which("qemu-x86_64-static")


# qemu 7.2 (Debian 12) emulates numpy's AVX2 argpartition wrongly (runner.top_k_indices then misses a top logit; right
# on real AVX2: checked natively with numpy's X86_V4 dispatch turned off): under emulation numpy stays on its baseline
# kernels, while onnxruntime and PyTorch choose their AVX2 ones from the emulated CPUID.
EMULATION_ENV = {"NPY_DISABLE_CPU_FEATURES": "X86_V3"}


def run_emulated_x86(args: list[str], cpu: str = "Haswell", timeout: float = 900) -> dict:
    """`python -m tests.helpers.devices ARGS` under qemu-x86_64 -cpu CPU; its JSON line (plus wall seconds)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEQWEN_QUIET="1", **EMULATION_ENV)
    t0 = time.perf_counter()
    proc = subprocess.run([qemu_x86(), "-cpu", cpu, sys.executable, "-m", "tests.helpers.devices", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"emulated run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


# ---- foreign Pythons (aarch64 under qemu-user, a venv with onnxruntime-webgpu) --------------------------------------
GREEDY_DUMP = Path(__file__).with_name("greedy_dump.py")
WEBGPU_VENV = CI_CACHE / "webgpu-venv"
OPENVINO_VENV = CI_CACHE / "openvino-venv"
SWIFTSHADER_ICD = Path("/usr/lib/chromium/vk_swiftshader_icd.json")  # Debian's chromium-common


def greedy_dump(python: list[str], artifact, out: Path, *args: str, env: dict | None = None, timeout: float = 900):
    """Run greedy_dump.py (the artifact's own runner.py) under `python` (a command prefix); its tokens, per-step
    logits and meta (providers, onnxruntime version, machine, texts, times)."""
    import numpy as np

    proc = subprocess.run([*python, str(GREEDY_DUMP), str(artifact), str(out), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(python)} greedy_dump failed ({proc.returncode}): {proc.stderr[-3000:]}")
    data = np.load(out)
    return data["tokens"], data["logits"], json.loads(str(data["meta"])), proc.stderr


ARM64 = CI_CACHE / "arm64"  # rootfs/ (Debian bookworm arm64, python3), site/ (aarch64 wheels), qemu/: device_arm64.sh
QEMU_AARCH64 = ARM64 / "qemu" / "usr" / "bin" / "qemu-aarch64"  # bookworm-backports' qemu 10 (7.2 segfaults ORT 1.25+)
ARM64_ORT = onnxruntime.__version__  # the aarch64 site's: device_arm64.sh installs this venv's, so its model.ort loads
ARM64_CPU = "neoverse-n1"  # Armv8.2 + dotprod, no SVE/SME: the cores of Graviton2 and (as Cortex-A76) of the Pi 5


def aarch64_python() -> list[str] | None:
    """qemu-aarch64 running Debian's arm64 python3 (None when the emulator, the root filesystem or the wheels are
    missing)."""
    python = ARM64 / "rootfs" / "usr" / "bin" / "python3"
    if not QEMU_AARCH64.exists() or not python.exists() or not (ARM64 / "site" / "onnxruntime").is_dir():
        return None
    return [str(QEMU_AARCH64), "-cpu", ARM64_CPU, "-L", str(ARM64 / "rootfs"), str(python)]


def aarch64_env(with_edgeqwen: bool = False) -> dict:
    """The aarch64 packages (onnxruntime, numpy, tokenizers, jinja2, pyyaml, ...), and this checkout's edgeqwen (pure
    Python: the runtime profile's verify/serve) when asked."""
    return {"PYTHONPATH": os.pathsep.join([str(ARM64 / "site"), *([str(REPO)] if with_edgeqwen else [])])}


def webgpu_env(tmp: Path) -> dict:
    """SwiftShader as the Vulkan adapter Dawn finds (without VK_ICD_FILENAMES, XDG_RUNTIME_DIR and libvulkan1 it finds
    none and onnxruntime runs on the CPU with only a warning)."""
    runtime_dir = tmp / "xdg"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    return {"VK_ICD_FILENAMES": str(SWIFTSHADER_ICD), "XDG_RUNTIME_DIR": str(runtime_dir)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["batch"]:
        print(json.dumps({"isa": cpu_isa(), "greedy": batch_comparison(argv[1], sampled=False),
                          "sampled": batch_comparison(argv[1], sampled=True)}))
        return 0
    if argv[:1] == ["isa"]:
        print(json.dumps({"isa": cpu_isa()}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
