"""Decoding's shortlist head (export/shortlist_head.py): built from the trained tiny models (tied and untied), read by
the runner, the batch engine, speculation and onnxruntime-genai; the full head kept where a request needs it; planned
from the head's share of a token's bytes; gated on recall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.evaluate.stage import check_gate, check_shortlist
from edgeqwen.planner import plan
from edgeqwen.recipe import Accuracy, load_recipe

from .helpers.artifacts import SHORTLIST_K, shortlist_recipe
from .helpers.planning import codes, config

K = SHORTLIST_K


RANKING = {"tiny-qwen2": 4, "tiny-qwen3": 2}  # the ranking copy's bits each fixture is built with


@pytest.fixture(scope="module", params=["tiny-qwen2", "tiny-qwen3"])
def shortlisted(request, artifacts, recipe_dir) -> Path:
    """A trained tiny model (qwen2: tied table, 4-bit ranking copy; qwen3: untied head, the target's 2-bit copy) built
    with a shortlist of K (RTN: seconds)."""
    bits = RANKING[request.param]
    return artifacts.get(shortlist_recipe(recipe_dir, request.param, bits=None if bits == 2 else bits))


def test_the_graph_ranks_with_a_low_bit_copy_and_scores_the_int8_rows(shortlisted, request):
    import onnx

    from edgeqwen.export.shortlist_head import ROWS_FILE, SHORTLIST_FILE, SHORTLIST_META

    model = onnx.load(str(shortlisted / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node if n.name.startswith("/lm_head/")]
    assert {"TopK", "GatherBlockQuantized", "ScatterElements"} <= set(ops)
    bits = sorted(a.i for n in model.graph.node if n.name.startswith("/lm_head/") and n.op_type == "MatMulNBits"
                  for a in n.attribute if a.name == "bits")
    want = RANKING[request.node.callspec.params["shortlisted"]]
    assert bits == [want], "the head's only MatMulNBits is the ranking copy, as many bits as planned"
    report = json.loads((shortlisted / "accuracy.json").read_text())["shortlist"]
    assert report["ranking_bits"] == want and report["tried"] == []  # it met the recall bar as built
    assert {p.key: p.value for p in model.metadata_props}[SHORTLIST_META] == str(K)
    for head in ("lm_head.onnx", SHORTLIST_FILE, ROWS_FILE):  # the heads read the decoder's bytes by offset: no copies
        assert (shortlisted / head).stat().st_size < 8192
    manifest = json.loads((shortlisted / "manifest.json").read_text())
    assert SHORTLIST_FILE in manifest["files"]
    assert "head.shortlist" in {d["code"] for d in manifest["export"]["plan"]["decisions"]}


def test_decode_logits_are_the_full_heads_for_k_candidates_and_fill_elsewhere(shortlisted):
    from edgeqwen.runtime.runner import Runner

    r = Runner(shortlisted)
    ids = r.encode(Path(__file__).read_text()[:1500])[:160]
    full, short = r.score(ids), r.score(ids, full_head=False)
    kept = short > -1e29
    assert (kept.sum(-1) == K).all()
    recall = kept[np.arange(len(ids)), full.argmax(-1)].mean()
    assert recall >= 0.99, recall
    # the candidates' logits: int8 rows against the fp32 hidden state (the full head quantizes the activations to
    # int8 too, accuracy level 4), so close, not equal
    assert np.abs(np.where(kept, short - full, 0)).max() < 0.05 * np.abs(full).max()
    # a decoded step gives the same candidates' logits as the verify graph (lm_head.shortlist.onnx)
    r.reset()
    one = r.step(ids[:40], keep_hidden=True)
    np.testing.assert_allclose(one[one > -1e29], short[39][one > -1e29], rtol=1e-4, atol=1e-4)
    # lm_head.rows.onnx scores given tokens with the same arithmetic; the rest of its row is masked
    some = np.concatenate([np.flatnonzero(one > -1e29), np.arange(100, 140)])
    row = r.full_row(-1, some)
    np.testing.assert_allclose(row[one > -1e29], one[one > -1e29], rtol=1e-4, atol=1e-4)
    assert np.abs(row[100:140] - full[39][100:140]).max() < 0.05 * np.abs(full).max()
    assert (np.delete(row, some) <= -1e29).all()
    np.testing.assert_allclose(r.full_row(), full[39], rtol=1e-4, atol=1e-4)  # no ids: the full head's row


def test_speculation_batching_and_genai_decode_exactly_what_the_runner_does(shortlisted):
    import onnxruntime_genai as og

    from edgeqwen.runtime.batch import BatchEngine
    from edgeqwen.runtime.runner import Runner, Sampling, make_drafter

    r = Runner(shortlisted)
    prompts = [r.encode(t) for t in ("The interpreter reads a line of", "A module is a file containing",
                                      "The interpreter reads a line of input and")]
    greedy = Sampling(max_new_tokens=32, ignore_eos=True)
    plain = [r.generate(p, greedy).token_ids for p in prompts]
    assert r.generate(prompts[2], greedy, speculate=make_drafter("lookup")).token_ids == plain[2]
    engine = BatchEngine(Runner(shortlisted), max_batch=4)
    try:
        handles = [engine.submit(p, greedy) for p in prompts]
        assert [[t for rec in h for t in rec.token_ids] for h in handles] == plain
    finally:
        engine.close()
    model = og.Model(str(shortlisted))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompts[0]) + 32, do_sample=False, repetition_penalty=1.0)
    gen = og.Generator(model, params)
    gen.append_tokens(prompts[0])
    out = []
    while not gen.is_done() and len(out) < 32:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    assert out == plain[0]


def _full_head_sampling(r, prompt: list[int], s, n: int) -> list[int]:
    """Sampling from the full head's rows step by step, with Decoding's own random draws."""
    from edgeqwen.runtime.runner import Decoding

    r.reset()
    logits = r.step(prompt, full_head=True)
    seq = Decoding(r, prompt, s, n)
    out = []
    for _ in range(n):
        tok, _ = seq.next(logits)
        out.append(tok)
        logits = r.step([tok], full_head=True)
    return out


def test_requests_that_need_the_whole_distribution_take_the_full_head(shortlisted):
    """Sampling without a top-k (or with one over K) and kept logits read lm_head.onnx, in the runner and in the batch
    engine beside a shortlisted greedy request; top-k <= K and greedy decode from the shortlist."""
    from edgeqwen.runtime.batch import BatchEngine
    from edgeqwen.runtime.runner import Runner, Sampling

    r = Runner(shortlisted)
    assert not r.full_head_for(Sampling()) and not r.full_head_for(Sampling(temperature=0.7, top_k=K))
    assert r.full_head_for(Sampling(temperature=0.7, top_k=0)) and r.full_head_for(Sampling(temperature=0.7, top_k=K + 1))
    prompt = r.encode("The interpreter reads a line of")
    wide = Sampling(max_new_tokens=24, ignore_eos=True, temperature=1.0, top_k=0, seed=7)
    want = _full_head_sampling(r, prompt, wide, 24)
    assert r.generate(prompt, wide).token_ids == want
    engine = BatchEngine(Runner(shortlisted), max_batch=4)
    try:
        side = engine.submit(prompt, Sampling(max_new_tokens=24, ignore_eos=True))
        sampled = engine.submit(prompt, wide)
        assert [t for rec in sampled for t in rec.token_ids] == want
        list(side)
    finally:
        engine.close()
    rows = [rec.logits for rec in r.stream(prompt, Sampling(max_new_tokens=4, keep_logits=True))]
    assert all((row > -1e29).all() for row in rows)  # whole rows, not K candidates


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "ok": {"type": "boolean"}},
          "required": ["name", "ok"], "additionalProperties": False}


def _constrained_by_rule(r, prompt: list[int], n: int) -> tuple[list[int], int]:
    """Greedy under SCHEMA, step by step: the shortlist's pick where the grammar allows it, else the best allowed
    token (the allowed tokens' exact rows: the tiny vocabulary is under ROWS_MAX) — what Decoding.next does with a lazy
    full head."""
    from edgeqwen.runtime.runner import MASKED, GrammarConstraint

    c = GrammarConstraint.json_schema(r, SCHEMA)
    r.reset()
    logits, out, full_steps = r.step(prompt, keep_hidden=True), [], 0
    while len(out) < n:
        tok = int(np.argmax(logits))
        if c.mask(logits)[tok] <= MASKED:
            tok, full_steps = int(np.argmax(c.mask(r.full_row(-1, c.allowed)))), full_steps + 1
        c.accept(tok)
        out.append(tok)
        if tok in r.eos_ids:
            break
        logits = r.step([tok])
    return out, full_steps


def test_constrained_decoding_reads_the_full_head_only_where_the_shortlist_cannot_decide(shortlisted):
    """A JSON schema on a shortlist artifact: the shortlist decides the steps where its own pick is allowed, the
    allowed tokens' exact rows the others; the runner, speculation and the batch engine follow that rule token for
    token, and the output parses."""
    from edgeqwen.runtime.batch import BatchEngine
    from edgeqwen.runtime.runner import GrammarConstraint, Runner, Sampling, make_drafter

    r = Runner(shortlisted)
    prompt = r.encode("The interpreter reads a line of")
    want, full_steps = _constrained_by_rule(r, prompt, 48)
    assert 0 < full_steps < len(want), (full_steps, len(want))  # both paths taken
    s = Sampling(max_new_tokens=48, constraint=GrammarConstraint.json_schema(r, SCHEMA))
    got = r.generate(prompt, s)
    assert got.token_ids == want and isinstance(json.loads(got.text)["ok"], bool)
    spec = Sampling(max_new_tokens=48, constraint=GrammarConstraint.json_schema(r, SCHEMA))
    assert r.generate(prompt, spec, speculate=make_drafter("lookup")).token_ids == want
    engine = BatchEngine(Runner(shortlisted), max_batch=4)
    try:
        side = engine.submit(prompt, Sampling(max_new_tokens=24, ignore_eos=True))
        batched = engine.submit(prompt, Sampling(max_new_tokens=48, constraint=GrammarConstraint.json_schema(r, SCHEMA)))
        assert [t for rec in batched for t in rec.token_ids] == want
        list(side)
    finally:
        engine.close()


def test_the_accuracy_stage_measures_and_gates_the_shortlist(shortlisted):
    report = json.loads((shortlisted / "accuracy.json").read_text())
    sl = report["shortlist"]
    assert sl["k"] == K and sl["recall"] >= 0.99 and 0 < sl["mass_p1"] <= sl["mass_mean"] <= 1
    assert abs(sl["top1"] - report["top1"]) < 0.02  # the decode head picks as the full head does
    assert report["gate"]["min_shortlist_recall"] == 0.99
    assert sl["status"] == "pass" and not check_shortlist(report, Accuracy(min_top1=0.75))
    missed = check_shortlist({**report, "shortlist": {**sl, "recall": 0.9, "top1": 0.5}}, Accuracy(min_top1=0.75))
    assert any("shortlist recall" in m for m in missed) and any("shortlist head's top-1" in m for m in missed)
    assert not check_gate({**report, "shortlist": {**sl, "recall": 0.9}}, Accuracy(min_top1=0.75))


def test_a_shortlist_that_misses_its_gate_leaves_the_artifact_and_the_build_goes_on(artifacts, recipe_dir):
    """One candidate and a recall bar of 100 %: the 2-bit ranking copy misses, is requantized to 4 bits and measured
    again, misses again; the full head (which met the gate) decodes; the artifact verifies, has no shortlist left, and
    onnxruntime-genai and the runner decode it alike."""
    import onnx

    from edgeqwen.export.shortlist_head import ROWS_FILE, SHORTLIST_FILE
    from edgeqwen.runtime.runner import Runner, Sampling

    art = artifacts.get(shortlist_recipe(recipe_dir, "tiny-qwen2", k=1, extra="min_shortlist_recall: 1.0", bits=2))
    sl = json.loads((art / "accuracy.json").read_text())["shortlist"]
    assert sl["status"] == "dropped" and sl["recall"] < 1.0 and "shortlist recall" in sl["missed"][0]
    assert sl["ranking_bits"] == 4 and [t["ranking_bits"] for t in sl["tried"]] == [2]  # the 4-bit copy measured last
    assert sl["tried"][0]["recall"] < sl["recall"] and any("shortlist recall" in m for m in sl["tried"][0]["missed"])
    assert not (art / SHORTLIST_FILE).exists() and not (art / ROWS_FILE).exists()
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    assert "TopK" not in {n.op_type for n in model.graph.node} and not model.metadata_props
    r = Runner(art)  # every file's hash checked against the manifest
    assert r.shortlist_k == 0
    from edgeqwen.cli import runtime_here

    assert runtime_here(art)["decode_head"] == {"shortlist": 0}  # `edgeqwen verify`: the plan's K, but no file
    ids = r.encode("The interpreter reads a line of")
    full = r.score(ids)
    r.reset()
    np.testing.assert_allclose(r.step(ids), full[-1], rtol=1e-4, atol=1e-4)  # decode reads the full head again
    assert r.generate(ids, Sampling(max_new_tokens=8)).finish_reason in ("length", "stop")


QWEN25 = dict(vocab=151936, tied=True)


def test_the_target_default_applies_where_the_head_is_a_large_share_of_a_tokens_bytes():
    """cpu-x86_64's default shortlist of 256 ranked by a 2-bit copy: the 0.5B and 1.5B shapes (the int8 head 41 % and
    24 % of a token's bytes) get it, the 3B shape (18 %) keeps the full head and says why; other targets and exporters
    never get it."""
    shapes = {"0.5b": config(hidden=896, inter=4864, layers=24, heads=14, kv=2, **QWEN25),
              "1.5b": config(hidden=1536, inter=8960, layers=28, heads=12, kv=2, **QWEN25),
              "3b": config(hidden=2048, inter=11008, layers=36, heads=16, kv=2, **QWEN25)}
    made = {n: plan(load_recipe(f"qwen2.5-{n}-instruct/cpu-x86_64-int4"), c) for n, c in shapes.items()}
    assert made["0.5b"].head.shortlist == made["1.5b"].head.shortlist == 256
    assert made["0.5b"].head.shortlist_bits == made["1.5b"].head.shortlist_bits == 2
    assert "requantized to 4 bits" in next(d.message for d in made["0.5b"].decisions if d.code == "head.shortlist")
    assert made["3b"].head.shortlist == 0 and "head.shortlist_off" in codes(made["3b"])
    assert "18%" in next(d.message for d in made["3b"].decisions if d.code == "head.shortlist_off")
    qwen3 = {"0.6b": (1024, 3072, 28, 16, 256), "1.7b": (2048, 6144, 28, 16, 256), "4b": (2560, 9728, 36, 32, 0)}
    for size, (hidden, inter, layers, heads, want) in qwen3.items():
        cfg = config("qwen3", hidden=hidden, inter=inter, layers=layers, heads=heads, kv=8, head_dim=128, vocab=151936,
                     tied=True)
        assert plan(load_recipe(f"qwen3-{size}/cpu-x86_64-int4"), cfg).head.shortlist == want, size
    for other in ("cpu-arm64-int4", "cuda-int4", "webgpu-fp32-int4", "cpu-x86_64-portable-int4", "ort-mobile-int4"):
        p = plan(load_recipe(f"qwen2.5-0.5b-instruct/{other}"), shapes["0.5b"])
        assert p.head.shortlist == 0, other


def test_a_shortlist_asked_where_it_cannot_be_built_is_refused_before_any_work(tmp_path):
    p = tmp_path / "r.yaml"
    for quant, target, match in (("lm_head_shortlist: 64", "cuda", "is for the CPU"),
                                 ("lm_head: int8, lm_head_shortlist: 128", "cpu-x86_64", "at most vocab / 16"),
                                 ("lm_head: same, lm_head_shortlist: 16", "cpu-x86_64", "pruned int8 lm_head")):
        p.write_text(f"version: 1\nmodel: embedded:tiny-qwen2\ntarget: {target}\nprecision: int4\ncontext_length: 1024\n"
                     f"quantization: {{block_size: 32, {quant}}}\n")
        with pytest.raises(EdgeQwenError, match=match):
            plan(load_recipe(str(p)), config())
    with pytest.raises(EdgeQwenError, match="lm_head_shortlist -1 must be 0"):
        p.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: int4\n"
                     "quantization: {lm_head_shortlist: -1}\n")
        load_recipe(str(p))


def test_top_k_over_a_shortlist_row_and_over_ties_is_the_true_top_k():
    """A shortlist row (K finite logits, the rest one fill value) and a row where the k-th largest is tied: the
    sampler's top-k is exactly the k largest (ties at the k-th value taken by index), as a full sort gives."""
    from edgeqwen.runtime.runner import top_k_indices

    rng = np.random.default_rng(0)
    row = np.full(151936, -1e30, np.float32)
    row[rng.choice(row.size, 64, replace=False)] = rng.normal(0, 3, 64)
    for k in (1, 20, 64, 100):
        got = np.sort(row[top_k_indices(row, k)])
        assert got.size == k and (got == np.sort(row)[-k:]).all(), k
    tied = np.zeros(151936, np.float32)
    tied[:5] = [5, 4, 3, 2, 1]
    got = top_k_indices(tied, 20)
    assert sorted(got.tolist())[:5] == [0, 1, 2, 3, 4] and got.size == 20 and (tied[got[5:]] == 0).all()



def test_serve_answers_free_json_and_tool_requests_from_a_shortlist_artifact(artifacts, recipe_dir, tmp_path):
    """`edgeqwen serve` over a shortlist artifact with the openai client: a greedy chat answers as the runner does, JSON
    schema outputs (greedy and sampled) and a forced tool call validate."""
    import shutil

    import jsonschema

    from edgeqwen.runtime.runner import Runner, Sampling

    from .helpers.serving import client, serving

    art = artifacts.get(shortlist_recipe(recipe_dir, "tiny-qwen3"))
    shutil.copytree(art, tmp_path / "sl")
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    tool = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    msgs = [{"role": "user", "content": "What does the assert statement do?"}]
    r = Runner(art)
    want = r.generate(r.apply_chat_template(msgs, enable_thinking=False), Sampling(max_new_tokens=24)).text
    with serving(tmp_path) as server:
        c = client(server)
        name = c.models.list().data[0].id
        got = c.chat.completions.create(model=name, messages=msgs, max_tokens=24, temperature=0,
                                        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        assert got.choices[0].message.content.strip() == want.strip()
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}}
        for temperature in (0.0, 0.9):
            out = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Describe a pilot."}],
                                            response_format=fmt, max_tokens=80, temperature=temperature, seed=3)
            jsonschema.validate(json.loads(out.choices[0].message.content), person)
        call = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "Time in Oslo?"}],
                                         tools=[tool], tool_choice="required", max_tokens=80)
        args = call.choices[0].message.tool_calls[0].function.arguments
        jsonschema.validate(json.loads(args), tool["function"]["parameters"])


def test_verify_says_the_artifact_decodes_from_a_shortlist(shortlisted, artifacts, trained_qwen2, request):
    """`edgeqwen verify` names the decode head (text and --json); a full-head artifact says nothing of it."""
    import subprocess
    import sys

    def verify(path, *flags):
        proc = subprocess.run([sys.executable, "-m", "edgeqwen", "verify", str(path), *flags], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    bits = RANKING[request.node.callspec.params["shortlisted"]]
    assert f"shortlist head: the top {K} of a {bits}-bit ranking" in verify(shortlisted)
    assert json.loads(verify(shortlisted, "--json"))["runtime"]["decode_head"] == {"shortlist": K, "ranking_bits": bits}
    full = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    assert "shortlist" not in verify(full) and json.loads(verify(full, "--json"))["runtime"]["decode_head"] == {
        "shortlist": 0}


def test_a_long_prompt_is_fed_in_passes_and_keeps_every_hidden_state(shortlisted, monkeypatch):
    """A prompt over PREFILL_CHUNK tokens is fed in passes of that many (onnxruntime's CPU attention holds every head's
    scores over the fed tokens x the sequence: a 3000-token prompt on the 0.5B shape peaked 950 MB in one pass, 647 MB
    in passes of 512), with the logits one pass gives, and the hidden states a pass keeps span the whole prompt (the
    lazy full head and score_heads read them)."""
    from edgeqwen.runtime import runner as runner_module
    from edgeqwen.runtime.runner import PREFILL_CHUNK, Runner

    r = Runner(shortlisted)
    ids = (r.encode("The river runs to the sea, and the sea is never full. ") * 200)[:PREFILL_CHUNK + 300]
    runs = []
    real = r._run
    monkeypatch.setattr(r, "_run", lambda io: (runs.append(1), real(io))[1])
    r.reset()
    r.reserve(len(ids))
    passes = r.step(ids, full_head=True, keep_hidden=True)
    assert len(runs) == 2 and r._last_hidden.shape[1] == len(ids)
    hidden = r._last_hidden.copy()
    full, short = r.score_heads(ids, chunk=len(ids))  # one chunk over the pass size: still every position's hidden
    assert full.shape == short.shape == (len(ids), r.vocab_size)
    monkeypatch.setattr(runner_module, "PREFILL_CHUNK", 10 ** 6)
    r.reset()
    r.reserve(len(ids))
    runs.clear()
    one = r.step(ids, full_head=True, keep_hidden=True)
    assert len(runs) == 1
    assert np.abs(passes - one).max() < 1e-3 * np.abs(one).max() and int(passes.argmax()) == int(one.argmax())
    assert np.abs(hidden - r._last_hidden).max() < 1e-3 * np.abs(r._last_hidden).max()
