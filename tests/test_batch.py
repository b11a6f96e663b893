"""Continuous batching: sequences of different lengths share each decode step and come out as they do alone (logits
within a tolerance, the same greedy tokens wherever the choice is not a near-tie: see edgeqwen.runtime.agreement); new requests join between steps, finished or cancelled ones free their slot, KV is sized to the work."""

from __future__ import annotations

import json
import threading

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.agreement import compare_text, step_logits
from edgeqwen.runtime.batch import BatchEngine
from edgeqwen.runtime.runner import RunnerError

from .helpers.devices import BATCH_TOL, MAX_NEW, PROMPTS, batch_comparison, qemu_x86, run_emulated_x86
from .helpers.serving import client, raw, serving


@pytest.fixture(scope="module")
def int4(artifacts, trained_qwen2):
    return artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)


def prompt_ids(runner):
    return [runner.encode(runner.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS]


@pytest.mark.parametrize("sampled", [False, True])
def test_batched_decoding_agrees_with_lone_decoding(int4, sampled):
    """4 requests over 2 slots (two wait, then take freed slots), prompts prefilled in chunks of 8 tokens. onnxruntime
    does not promise bitwise-equal kernels across batch shapes (MatMulNBits takes other paths per ISA and per M), so
    each step's logits must agree within the tolerance, and greedy tokens wherever the top-2 margin exceeds it."""
    rows = batch_comparison(int4, sampled)
    assert all(r["ok"] for r in rows), [r["summary"] for r in rows]
    assert rows[0]["batch_tokens"] > rows[0]["batched_steps"]  # steps really advanced two sequences at once


def test_batched_kv_is_sized_to_the_requests(int4):
    runner = Runner(int4)
    engine = BatchEngine(runner, max_batch=2, prefill_chunk=8)
    try:
        ids = prompt_ids(runner)
        handles = [engine.submit(i, Sampling(max_new_tokens=n, ignore_eos=True)) for i, n in zip(ids, MAX_NEW)]
        assert all(sum(len(r.token_ids) for r in h) == n for h, n in zip(handles, MAX_NEW))
    finally:
        engine.close()
    assert engine.capacity == 256  # KV sized to the requests (prompt + max tokens, in steps of 256), not the context


@pytest.mark.device
@pytest.mark.avx2
def test_batched_decoding_agrees_on_avx2(int4):
    """The same comparison under qemu-x86_64 -cpu Haswell (AVX2, no AVX-512) on the artifact built natively: where
    batched and lone tokens really part (near-ties), logits stay within the tolerance."""
    if qemu_x86() is None:
        pytest.skip("qemu-x86_64-static is not installed (apt-get install qemu-user-static; .ci/device_avx2.sh does)")
    result = run_emulated_x86(["batch", str(int4)])
    assert result["isa"].startswith("AVX2"), result["isa"]
    rows = result["greedy"] + result["sampled"]
    print(f"AVX2 (emulated, {result['wall_s']:.0f} s):", *(r["summary"] for r in rows), sep="\n  ")
    assert all(r["ok"] for r in rows), [r["summary"] for r in rows]


def test_cancelled_and_finished_requests_free_their_slots(int4):
    runner = Runner(int4)
    ids = prompt_ids(runner)
    engine = BatchEngine(runner, max_batch=2)
    try:
        long = engine.submit(ids[0], Sampling(max_new_tokens=200, ignore_eos=True))
        stream = iter(long)
        first = next(stream)
        assert first.generated_tokens == 1
        long.close()  # the client went away
        short = engine.submit(ids[1], Sampling(max_new_tokens=5, ignore_eos=True))
        assert sum(len(r.token_ids) for r in short) == 5
        assert engine.active == 0 and engine.queued == 0
    finally:
        engine.close()
    with pytest.raises(RunnerError, match="unloaded"):
        engine.submit(ids[1], Sampling(max_new_tokens=5))


def test_graphs_without_an_in_place_cache_are_not_batched(artifacts, trained_qwen2):
    portable = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-portable-int4", trained_qwen2))
    with pytest.raises(RunnerError, match="in-place KV cache"):
        BatchEngine(portable)


def test_server_batches_concurrent_streams(int4, tmp_path):
    import shutil

    shutil.copytree(int4, tmp_path / "m")
    serial_runner = Runner(int4)
    name = json.loads((int4 / "inference_model.json").read_text())["Name"]
    questions = PROMPTS
    expected = [step_logits(serial_runner.stream(serial_runner.encode(serial_runner.apply_chat_template(
        [{"role": "user", "content": q}])), serial_runner.default_sampling(max_new_tokens=120, keep_logits=True)))
        for q in questions]
    assert serial_runner.default_sampling().temperature == 0.0  # greedy: text comparable step by step
    with serving(tmp_path / "m", max_batch=4) as server:
        got = [None] * len(questions)

        def ask(i):
            chunks = client(server).chat.completions.create(
                model=name, messages=[{"role": "user", "content": questions[i]}], max_tokens=120, stream=True)
            got[i] = "".join(c.choices[0].delta.content or "" for c in chunks)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        metrics = raw(server, "GET", "/metrics")[1].decode()
    agreements = [compare_text(rows, toks, text, serial_runner.decode, BATCH_TOL)
                  for (rows, toks), text in zip(expected, got)]
    assert all(a.ok for a in agreements), [a.summary() for a in agreements]
    steps = float(next(l for l in metrics.splitlines() if l.startswith("edgeqwen_decode_steps_total")).split()[-1])
    rows = float(next(l for l in metrics.splitlines() if l.startswith("edgeqwen_decode_sequence_steps_total")).split()[-1])
    assert rows > steps > 0  # a mean batch above one
