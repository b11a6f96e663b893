"""Continuous batching: sequences of different lengths share each decode step and come out token for token as they
do alone; new requests join between steps, finished or cancelled ones free their slot, KV is sized to the work."""

from __future__ import annotations

import json
import threading

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.batch import BatchEngine
from edgeqwen.runtime.runner import RunnerError

from tests.helpers.serving import client, raw, serving

PROMPTS = ["What does the assert statement do?", "Explain the for loop.", "x",
           "What is a class? Tell me about inheritance, methods and attributes in some detail."]


@pytest.fixture(scope="module")
def int4(artifacts, trained_qwen2):
    return artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)


def prompt_ids(runner):
    return [runner.encode(runner.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS]


@pytest.mark.parametrize("sampled", [False, True])
def test_batched_tokens_equal_serial_ones(int4, sampled):
    """4 requests over 2 slots (two wait, then take freed slots), prompts prefilled in chunks of 8 tokens."""
    serial_runner = Runner(int4)
    ids = prompt_ids(serial_runner)
    settings = [Sampling(max_new_tokens=n, ignore_eos=True, temperature=0.8 if sampled else 0.0, top_p=0.9, seed=i)
                for i, n in enumerate((40, 12, 60, 25))]
    serial = [serial_runner.generate(i, s).token_ids for i, s in zip(ids, settings)]
    engine = BatchEngine(Runner(int4), max_batch=2, prefill_chunk=8)
    try:
        handles = [engine.submit(i, s) for i, s in zip(ids, settings)]
        got = [[t for rec in h for t in rec.token_ids] for h in handles]
    finally:
        engine.close()
    assert got == serial
    assert engine.batch_tokens > engine.steps  # steps really advanced two sequences at once
    assert engine.capacity == 256  # KV sized to the requests (prompt + max tokens, in steps of 256), not the context


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
    expected = [serial_runner.generate(serial_runner.encode(serial_runner.apply_chat_template(
        [{"role": "user", "content": q}])), serial_runner.default_sampling(max_new_tokens=120)).text for q in questions]
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
    assert got == expected
    steps = float(next(l for l in metrics.splitlines() if l.startswith("edgeqwen_decode_steps_total")).split()[-1])
    rows = float(next(l for l in metrics.splitlines() if l.startswith("edgeqwen_decode_sequence_steps_total")).split()[-1])
    assert rows > steps > 0  # a mean batch above one
