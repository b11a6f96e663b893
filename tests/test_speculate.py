"""Speculative decoding: drafts verified several tokens per forward pass never change what plain decoding emits —
greedy text equal (within the agreement rules: the k-token step takes other kernel paths), sampled tokens the same
for a seed (one uniform draw per emitted token, as plain decoding draws), constraints still held — whatever the
drafter proposes; rollback restores the cache exactly; the bench and the CLI report acceptance."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from edgeqwen.runtime import Runner, RunnerError, Sampling
from edgeqwen.runtime.agreement import FP32_TOL, compare_runs, step_logits
from edgeqwen.runtime.runner import DraftCost, DraftModel, Drafter, GrammarConstraint, PromptLookup, make_drafter

from .helpers.serving import one_model  # noqa: F401 - fixture

PROMPTS = ["The assert statement", "A for loop iterates over the items of a sequence. A for loop iterates over"]


class Oracle(Drafter):
    """Proposes a known continuation (`right`), or tokens it will never be (`right` shifted by one id)."""

    name = "oracle"

    def __init__(self, prompt_len: int, continuation: list[int], wrong: bool = False, vocab: int = 0):
        self.n, self.cont, self.wrong, self.vocab = prompt_len, continuation, wrong, vocab

    def propose(self, history, k):
        out = self.cont[len(history) - self.n:][:k]
        return [(t + 1) % self.vocab for t in out] if self.wrong else out


@pytest.fixture(scope="module")
def fp32(artifacts, trained_qwen2):
    return Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))


def _run(runner, ids, s, drafter=None):
    return step_logits(runner.stream(ids, s, speculate=drafter))


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    look = PromptLookup(max_ngram=3)
    assert look.propose([5, 6, 7, 8, 9, 1, 6, 7], 3) == [8, 9, 1]  # 2-gram (6, 7): what followed it
    assert look.propose([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3], 2) == [5, 1]  # the latest of two 3-gram matches
    assert look.propose([1, 2, 3, 4, 9, 9, 9, 2, 3], 8) == [4, 9, 9, 9, 2, 3]  # up to the end of history
    assert look.propose([1, 2, 3], 4) == []  # no earlier occurrence
    assert look.propose([1, 2, 5, 1], 2) == []  # a one-token match drafts nothing by default ...
    assert PromptLookup(min_ngram=1).propose([1, 2, 5, 1], 2) == [2, 5]  # ... unless asked to
    with pytest.raises(RunnerError, match="n-gram"):
        PromptLookup(max_ngram=1, min_ngram=2)


def test_prompt_lookup_index_grows_with_the_stream_and_proposes_what_a_scan_would():
    """The n-gram index is built as the history grows (one stream's list, appended to); each proposal equals a scan of
    the whole history for the latest earlier match (longest n first); a list it has not seen is indexed afresh."""
    import random

    def scan(h, k, big, small):
        for n in range(min(big, len(h) - 1), small - 1, -1):
            starts = [i for i in range(len(h) - n) if h[i:i + n] == h[len(h) - n:]]
            if starts:
                return h[starts[-1] + n:starts[-1] + n + k]
        return []

    rng = random.Random(0)
    for _ in range(60):
        big = rng.randint(1, 4)
        small = rng.randint(1, big)
        look, history = PromptLookup(big, small), []
        for _ in range(rng.randint(1, 40)):
            history.extend(rng.randrange(4) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.1:
                history = history[:rng.randint(0, len(history))]  # another stream's list: shorter, then longer
            k = rng.randint(1, 9)
            assert look.propose(history, k) == scan(history, k, big, small), (history, k, big, small)


@pytest.mark.parametrize("kind", ["lookup", "right", "wrong", "draft"])
def test_speculative_greedy_equals_plain_greedy(kind, fp32, artifacts, trained_qwen2, monkeypatch):
    """Every drafter, good or useless: the tokens and every step's logits of plain greedy decoding. The right
    continuation is all accepted (several tokens per step), a wrong one all rejected (one token per step)."""
    # drafts sized by the acceptance rule alone: the measured costs (DraftCost) size them by this machine's timings, so
    # how much a draft model's drafts are accepted would depend on its load (a busy run: 7 of 15, under the bar below)
    monkeypatch.setattr(DraftCost, "limit", lambda self, k: k)
    s = Sampling(max_new_tokens=32, ignore_eos=True, keep_logits=True)
    identical = 0
    for prompt in PROMPTS:
        ids = fp32.encode(prompt)
        rows, toks = _run(fp32, ids, s)
        if kind == "lookup":
            drafter = PromptLookup()
        elif kind == "draft":
            drafter = make_drafter("draft=" + str(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)))
        else:
            drafter = Oracle(len(ids), toks, wrong=kind == "wrong", vocab=fp32.vocab_size)
        got_rows, got = _run(fp32, ids, s, drafter)
        agreement = compare_runs(rows, toks, got_rows, got, FP32_TOL)
        assert agreement.ok and len(got) == len(toks), (kind, prompt, agreement.summary())
        st = drafter.stats
        assert st.emitted == len(got) - 1 and st.accepted <= st.drafted
        identical += got == toks
        if kind == "right" and got == toks:  # (a near-tie the k-token step tips ends the known continuation)
            assert st.acceptance == 1.0 and st.tokens_per_step > 4, st
        if kind == "wrong":
            assert st.accepted == 0 and st.tokens_per_step == 1.0 and st.drafted > 0, st
        if kind == "draft":  # the int4 twin of the target agrees with it on most tokens
            assert st.acceptance > 0.5 and st.drafted > 0 and st.tokens_per_step > 1.0, st
    assert identical, "every prompt parted at a near-tie: the comparison checked too little"


@pytest.mark.parametrize("kind", ["right", "wrong", "lookup"])
def test_speculative_sampling_draws_the_same_tokens_for_a_seed(kind, fp32):
    """Qwen's sampling defaults, 12 seeds: speculative decoding emits exactly plain decoding's tokens (the same
    distribution, and the same draw from it), so the output distribution is unchanged."""
    ids = fp32.encode(PROMPTS[1])
    parted = 0
    for seed in range(12):
        s = Sampling(max_new_tokens=24, ignore_eos=True, keep_logits=True, temperature=0.7, top_k=20, top_p=0.8,
                     repetition_penalty=1.05, seed=seed)
        rows, toks = _run(fp32, ids, s)
        drafter = PromptLookup() if kind == "lookup" else Oracle(len(ids), toks, kind == "wrong", fp32.vocab_size)
        got_rows, got = _run(fp32, ids, s, drafter)
        agreement = compare_runs(rows, toks, got_rows, got, FP32_TOL, greedy=False)
        assert agreement.ok, (seed, agreement.summary())
        parted += agreement.diverged_at is not None
        if kind == "right" and got == toks:
            assert drafter.stats.acceptance == 1.0
    assert parted <= 1  # a draw that lands within rounding of a boundary: rare, not the rule


def test_rollback_restores_the_cache(fp32):
    ids = fp32.encode(PROMPTS[0])
    fp32.reset()
    fp32.reserve(64)
    fp32.step(ids)
    want = fp32.step([11])
    fp32.rollback(len(ids))
    fp32.step([7, 8, 9], all_logits=True)  # positions that will be rolled back: their KV rows must not leak
    fp32.rollback(len(ids))
    assert fp32.pos == len(ids) and fp32.ids == ids
    np.testing.assert_allclose(fp32.step([11]), want, atol=1e-5)
    with pytest.raises(RunnerError, match="cannot roll back"):
        fp32.rollback(fp32.pos + 1)


def test_speculation_keeps_a_json_schema_constraint(fp32):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    ids = fp32.encode("Describe a sailor as JSON: ")
    texts = []
    for drafter in (None, PromptLookup()):
        s = Sampling(max_new_tokens=200, constraint=GrammarConstraint.json_schema(fp32, schema))
        texts.append(fp32.generate(ids, s, speculate=drafter).text)
    assert texts[1] == texts[0], texts
    jsonschema.validate(json.loads(texts[1]), schema)


def test_draft_model_must_share_the_tokenizer(fp32, artifacts, trained_qwen3, tmp_path):
    """tiny-qwen3 shares tiny-qwen2's tokenizer (a valid draft); with a normalizer added to it, it is refused."""
    other = tmp_path / "other"
    shutil.copytree(artifacts.get("tiny-qwen3/cpu-x86_64-fp32", trained_qwen3), other)
    tok = json.loads((other / "tokenizer.json").read_text())
    assert tok["normalizer"] is None
    tok["normalizer"] = {"type": "Lowercase"}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    manifest = json.loads((other / "manifest.json").read_text())  # re-sealed: a consistent artifact, other tokenizer
    data = (other / "tokenizer.json").read_bytes()
    manifest["files"]["tokenizer.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (other / "manifest.json").write_text(json.dumps(manifest))
    drafter = DraftModel(Runner(other, verify=False))
    with pytest.raises(RunnerError, match="does not share the target's tokenizer"):
        fp32.generate(fp32.encode("x"), Sampling(max_new_tokens=4), speculate=drafter)
    spinning = "session.intra_op.allow_spinning"  # a draft model's threads sleep after its runs (Runner(spin=False))
    assert make_drafter(f"draft={other}").runner.session.get_session_options().get_session_config_entry(spinning) == "0"
    with pytest.raises(RunnerError, match="unknown --speculate 'ngram'"):
        make_drafter("ngram")
    with pytest.raises(RunnerError, match="needs an artifact folder"):
        make_drafter("draft=")


def test_run_speculate_prints_acceptance(artifacts, trained_qwen2):
    art = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)
    args = [sys.executable, "-m", "edgeqwen", "run", str(art), "-p", PROMPTS[1], "--max-new-tokens", "24"]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=300)
    spec = subprocess.run(args + ["--speculate", "lookup"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout
    assert "[speculate lookup:" in spec.stderr and "tokens per step" in spec.stderr
    bad = subprocess.run(args + ["--speculate", "draft=/nonexistent"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "/nonexistent" in bad.stderr


def test_bench_speculate_reports_speedup_and_acceptance(artifacts, trained_qwen2):
    art = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)
    proc = subprocess.run([sys.executable, "-m", "edgeqwen", "bench", str(art), "--speculate", "lookup",
                           "--gen-len", "24", "--threads", "1", "--repeats", "4", "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["generated"] == 24 and r["verify_steps"] > 0 and 0 <= r["acceptance"] <= 1
    assert r["identical"] or r["margin_at_parting"] < 2 * FP32_TOL, r
    assert r["repeats"] == 4 and len(r["speedups"]) == 4 and r["plain_decode_tps"] > 0
    assert r["speedup"] == pytest.approx(statistics.median(r["speedups"]), rel=1e-9)  # paired: each run by its own plain
    bad = subprocess.run([sys.executable, "-m", "edgeqwen", "bench", str(art), "--speculate", "lookup", "--repeats", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--repeats 0 must be in 1-1000" in bad.stderr


@pytest.mark.parametrize("kind,sampled", [("lookup", False), ("right", False), ("right", True), ("wrong", True)])
def test_batched_speculation_agrees_with_lone_decoding(kind, sampled, artifacts, trained_qwen2):
    """Through the batch engine: requests 0 and 2 speculate, 1 and 3 decode plainly; a speculating request drafts
    while it runs alone (request 2's last steps), batched steps stay one token per row. Every request agrees with its
    lone plain run."""
    from .helpers.devices import batch_comparison

    art = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    vocab = Runner(art).vocab_size
    spec = "lookup" if kind == "lookup" else (lambda ids, toks: Oracle(len(ids), toks, kind == "wrong", vocab))
    rows = batch_comparison(art, sampled, spec)
    assert all(r["ok"] for r in rows), [r["summary"] for r in rows]
    stats = [r["speculation"] for r in rows]
    assert stats[1] is None and stats[3] is None and any(st["drafted"] > 0 for st in stats[::2]), stats
    if kind == "right":  # the lone run's own tokens: all accepted (unless batched and lone runs part at a near-tie)
        assert rows[2]["identical"] <= (stats[2]["accepted"] == stats[2]["drafted"] > 0), stats
        assert stats[2]["emitted"] > stats[2]["steps"], stats
    if kind == "wrong":
        assert all(st["accepted"] == 0 for st in stats[::2]), stats


def test_batch_engine_refuses_a_draft_model(artifacts, trained_qwen2):
    from edgeqwen.runtime.batch import BatchEngine

    art = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    engine = BatchEngine(Runner(art), max_batch=2)
    try:
        with pytest.raises(RunnerError, match="prompt lookup only"):
            engine.submit([1, 2, 3], Sampling(max_new_tokens=4), speculate="draft=" + str(art))
    finally:
        engine.close()


@pytest.mark.parametrize("max_batch", [4, 1])
def test_serve_speculation_per_request_and_by_default(max_batch, one_model):
    """Through `serve` with the openai client: a request asking for prompt lookup ({"speculate": "lookup"}) gets the
    text plain decoding gives, batched (alone in the engine) or one request at a time; so does every request of a
    server started with --speculate lookup; a wrong value is a 400 naming the field."""
    from .helpers.serving import client, raw, serving

    msgs = [{"role": "user", "content": "Repeat: the for statement iterates over the items of any sequence, "
                                        "the for statement iterates over the items of any sequence."}]
    texts = []
    with serving(one_model, max_batch=max_batch) as server:
        c = client(server)
        model = c.models.list().data[0].id
        for extra in ({}, {"speculate": "lookup"}):
            r = c.chat.completions.create(model=model, messages=msgs, max_tokens=40, temperature=0,
                                          extra_body=extra)
            texts.append(r.choices[0].message.content)
        if max_batch > 1:  # the engine counts what it drafted and what was accepted
            metrics = raw(server, "GET", "/metrics")[1].decode()
            drafted = float(re.search(r'edgeqwen_speculative_drafted_tokens_total\{model="[^"]+"\} (\S+)', metrics)[1])
            accepted = float(re.search(r'edgeqwen_speculative_accepted_tokens_total\{model="[^"]+"\} (\S+)', metrics)[1])
            assert drafted > 0 and 0 <= accepted <= drafted, metrics
        with pytest.raises(Exception) as err:
            c.chat.completions.create(model=model, messages=msgs, max_tokens=4, extra_body={"speculate": "x"})
        assert getattr(err.value, "status_code", None) == 400 and "speculate" in str(err.value)
    with serving(one_model, max_batch=max_batch, speculate="lookup") as server:
        r = client(server).chat.completions.create(model=model, messages=msgs, max_tokens=40, temperature=0)
        texts.append(r.choices[0].message.content)
    assert texts[0] and texts[1] == texts[0] and texts[2] == texts[0], texts


def test_speculation_on_a_growing_kv_cache(artifacts, trained_qwen2):
    """Portable artifacts grow their KV cache each step (no in-place buffer): rollback cuts it. The known continuation
    is accepted and the output is plain decoding's."""
    from edgeqwen.runtime.agreement import INT8_ACTIVATION_TOL

    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-portable-int4", trained_qwen2))
    assert runner.growing_kv
    ids = runner.encode(PROMPTS[1])
    s = Sampling(max_new_tokens=24, ignore_eos=True, keep_logits=True)
    rows, toks = _run(runner, ids, s)
    for drafter in (Oracle(len(ids), toks), Oracle(len(ids), toks, wrong=True, vocab=runner.vocab_size)):
        got_rows, got = _run(runner, ids, s, drafter)
        agreement = compare_runs(rows, toks, got_rows, got, INT8_ACTIVATION_TOL)
        assert agreement.ok and len(got) == len(toks), agreement.summary()
        if drafter.wrong:
            assert drafter.stats.accepted == 0, drafter.stats
        elif got == toks:
            assert drafter.stats.steps < (len(toks) - 1) / 2, drafter.stats  # several tokens per verify step
