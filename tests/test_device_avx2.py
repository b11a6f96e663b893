"""The default run's ISA-sensitive tests again on an x86-64 without AVX-512: pytest itself under qemu-x86_64 -cpu
Haswell (AVX2), on artifacts built here natively first and shared through the run's id. Run by .ci/device_avx2.sh.

These tests run onnxruntime in-process and compare two runs that take other kernel paths (batch shapes, prefill
chunks, the scoring head vs the pruned graph, onnxruntime vs PyTorch): where AVX2 and AVX-512 kernels round
differently, they must still hold (tests/test_batch.py's device test compares batched with lone decoding alone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .helpers.artifacts import shortlist_recipe
from .helpers.devices import EMULATION_ENV, REPO, qemu_x86

pytestmark = [pytest.mark.device, pytest.mark.avx2]

EMULATED = [
    "tests/test_vision.py::test_batched_image_and_text_requests_equal_lone_ones",
    "tests/test_batch.py::test_server_batches_concurrent_streams",
    "tests/test_runtime.py::test_greedy_matches_pytorch_on_fp32[qwen2]",
    "tests/test_runtime.py::test_pruned_head_scores_every_position_through_lm_head_onnx",
    "tests/test_serve.py::test_concurrent_streams_do_not_mix",
    # speculative decoding: a k-token verify step against plain 1-token steps (other MatMulNBits/GEMM paths)
    "tests/test_speculate.py::test_speculative_greedy_equals_plain_greedy[lookup]",
    "tests/test_speculate.py::test_speculative_greedy_equals_plain_greedy[right]",
    "tests/test_speculate.py::test_speculative_greedy_equals_plain_greedy[draft]",
    "tests/test_speculate.py::test_batched_speculation_agrees_with_lone_decoding[right-True]",
    # the sensitivity measurement's torch fake-quantizer against onnxruntime's quantizer, bit for bit (torch's
    # vectorized kernels differ per ISA)
    "tests/test_fake_quant.py::test_block_fake_quant_is_onnxruntimes_round_trip_bit_for_bit",
    "tests/test_fake_quant.py::test_bf16_weights_quantize_as_their_fp32_values",
    # the web artifact's int8 WebAssembly graph on the CPU EP: u8 x s8 products saturate on AVX2 without the runner's
    # session.x64quantprecision (measured under this emulator: off 378473 max error, on 0)
    "tests/test_wasm_graph.py::test_int8_products_are_exact_where_the_cpu_could_saturate",
    "tests/test_wasm_graph.py::test_the_wasm_graph_decodes_closer_to_pytorch_than_the_int4_graph",
    # the shortlist head: one-token decode, verify steps (lm_head.shortlist.onnx), batches and onnxruntime-genai pick the
    # same tokens; constrained steps follow the shortlist-or-rows rule (other TopK/MatMulNBits paths per shape)
    "tests/test_shortlist.py::test_speculation_batching_and_genai_decode_exactly_what_the_runner_does[tiny-qwen2]",
    "tests/test_shortlist.py::test_constrained_decoding_reads_the_full_head_only_where_the_shortlist_cannot_decide[tiny-qwen3]",
]
# what they build (recipe, fixture, evaluate), built natively before the emulated run reuses it
BUILDS = [("tiny-qwen2/cpu-x86_64-int4", "trained_qwen2", True), ("tiny-qwen2/cpu-x86_64-fp32", "trained_qwen2", True),
          ("tiny-qwen3/cpu-x86_64-int4", "trained_qwen3", True),
          ("qwen2.5-vl-3b-instruct/cpu-x86_64-int4", "random_qwen2_vl", True),
          ("qwen2.5-vl-3b-instruct/cpu-x86_64-fp32", "random_qwen2_vl", True)]


def test_isa_sensitive_tests_pass_on_avx2(request, artifacts):
    if qemu_x86() is None:
        pytest.skip("qemu-x86_64-static is not installed (apt-get install qemu-user-static; .ci/device_avx2.sh does)")
    for recipe, fixture, evaluate in BUILDS:
        artifacts.get(recipe, request.getfixturevalue(fixture), evaluate=evaluate)
    for model in ("tiny-qwen2", "tiny-qwen3"):  # the shortlist tests' builds (their recipes keyed by content)
        artifacts.get(shortlist_recipe(request.getfixturevalue("recipe_dir"), model))
    # EDGEQWEN_TEST_RUN (set by conftest, inherited): the emulated pytest reuses this run's builds and leaves them be
    env = {**os.environ, **EMULATION_ENV, "PYTHONPATH": str(REPO)}
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                                "not device", *EMULATED], cwd=REPO, capture_output=True, text=True, timeout=300)
    expected = sum("::" in line for line in collected.stdout.splitlines())  # parametrized ids counted one by one
    assert expected >= len(EMULATED), collected.stdout[-3000:]
    t0 = time.perf_counter()
    proc = subprocess.run([qemu_x86(), "-cpu", "Haswell", sys.executable, "-m", "pytest", "-n", "0", "-p",
                           "no:cacheprovider", "-m", "not device", "-rA", *EMULATED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout
    lines = [line for line in out.splitlines() if line.startswith(("edgeqwen: CPU ISA", "PASSED", "FAILED", "ERROR"))]
    print(f"emulated AVX2 run ({time.perf_counter() - t0:.0f} s):", *lines, out.strip().splitlines()[-1], sep="\n  ")
    assert "edgeqwen: CPU ISA AVX2," in out, out[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and out.count("\nPASSED ") == expected, out[-6000:]
