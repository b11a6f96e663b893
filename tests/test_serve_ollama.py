"""Ollama's API on `edgeqwen serve`, with the official `ollama` Python client (0.6.x)."""

from __future__ import annotations

import json

import jsonschema
import ollama
import pytest

from edgeqwen.runtime import Runner
from tests.helpers.serving import QWEN2, QWEN3, cache_dir, client, ollama_client, raw, serving  # noqa: F401 - fixture

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120}}}


@pytest.fixture(scope="module")
def server(cache_dir):  # noqa: F811
    with serving(cache_dir) as s:
        yield s


def test_lists_shows_and_reports(server):
    c = ollama_client(server)
    assert sorted(m.model for m in c.list().models) == [QWEN2, QWEN3]
    entry = next(m for m in c.list().models if m.model == QWEN2)
    assert entry.size > 0 and len(entry.digest) == 64 and entry.details.format == "onnx"
    shown = c.show(QWEN3)
    assert "thinking" in shown.capabilities and "<|im_start|>" in shown.template
    assert shown.modelinfo["general.architecture"] == "qwen3"
    assert QWEN3 in [m.model for m in c.ps().models]  # show loaded it
    assert json.loads(raw(server, "GET", "/api/version")[1])["version"]


def test_chat_matches_openai_route_streamed_and_not(server):
    c = ollama_client(server)
    msgs = [{"role": "user", "content": "What does the assert statement do?"}]
    whole = c.chat(model=QWEN2, messages=msgs, options={"num_predict": 10, "temperature": 0})
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 10
    parts = list(c.chat(model=QWEN2, messages=msgs, options={"num_predict": 10, "temperature": 0}, stream=True))
    assert parts[-1].done and "".join(p.message.content for p in parts) == whole.message.content
    openai_text = client(server).chat.completions.create(model=QWEN2, messages=msgs, max_tokens=10,
                                                         temperature=0).choices[0].message.content
    assert whole.message.content == openai_text
    assert whole.prompt_eval_count > 0


def test_format_schema_output_validates(server):
    c = ollama_client(server)
    for seed in range(3):
        r = c.chat(model=QWEN2, messages=[{"role": "user", "content": "Describe a pilot."}], format=PERSON,
                   options={"num_predict": 80, "temperature": 0.8, "seed": seed})
        jsonschema.validate(json.loads(r.message.content), PERSON)
    r = c.generate(model=QWEN2, prompt="Any JSON object.", format="json", options={"num_predict": 60})
    assert isinstance(json.loads(r.response), dict)


def test_generate_raw_and_sampling_options(server, cache_dir):  # noqa: F811
    c = ollama_client(server)
    a = c.generate(model=QWEN2, prompt="The for statement", raw=True,
                   options={"num_predict": 8, "temperature": 0.9, "seed": 7, "top_k": 20, "top_p": 0.9})
    b = c.generate(model=QWEN2, prompt="The for statement", raw=True,
                   options={"num_predict": 8, "temperature": 0.9, "seed": 7, "top_k": 20, "top_p": 0.9})
    assert a.response == b.response and a.eval_count == 8
    runner = Runner(cache_dir / "tiny-qwen2")
    greedy = runner.generate(runner.encode("The for statement"), runner.default_sampling(max_new_tokens=8))
    r = c.generate(model=QWEN2, prompt="The for statement", raw=True, options={"num_predict": 8, "temperature": 0})
    assert r.response == greedy.text


def test_qwen3_thinking_and_errors(server):
    c = ollama_client(server)
    r = c.chat(model=QWEN3, messages=[{"role": "user", "content": "hi"}], think=False, options={"num_predict": 6})
    assert r.done and not r.message.thinking
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and "not found" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model=QWEN2, messages=[{"role": "user", "content": "hi"}], options={"temperature": 9})
    assert info.value.status_code == 400 and "temperature" in info.value.error
