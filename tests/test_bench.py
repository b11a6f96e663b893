"""`edgeqwen bench` runs every engine on the same artifact and reports comparable numbers."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_reports_all_engines(trained_qwen2, artifacts):
    path = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    proc = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", str(path), "--prompt-len", "32", "--gen-len", "16",
                           "--threads", "1", "--reference", str(trained_qwen2), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["results"]) == {"edgeqwen", "edgeqwen-sampled", "onnxruntime-genai", "pytorch"}
    for engine, r in report["results"].items():
        assert "error" not in r, (engine, r)
        assert r["prefill_tps"] > 0 and r["decode_tps"] > 0 and r["ttft_s"] > 0 and r["peak_rss_mb"] > 50
        assert r["generated"] == 16
    table = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "bench", str(path), "--prompt-len", "16", "--gen-len", "8"],
                           capture_output=True, text=True)
    assert table.returncode == 0 and "decode vs genai" in table.stdout and "onnxruntime-genai" in table.stdout
    from edgeqwen.runtime.isa import cpu_isa

    assert report["cpu_isa"] == cpu_isa() and f"CPU {cpu_isa()}" in table.stdout  # every figure says which kernels
