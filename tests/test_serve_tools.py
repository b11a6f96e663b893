"""Tool calls and structured output through the OpenAI-compatible server, with the real `openai` client on the trained
tiny models (rendered by Qwen's own chat templates; forced calls and JSON held to their schema by llguidance)."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import openai
import pytest

from edgeqwen.serve.protocol import chat_prompt, parse_chat
from edgeqwen.serve.tools import ToolCallParser

from tests.helpers.serving import QWEN2, QWEN3, cache_dir, client, serving  # noqa: F401 - cache_dir: fixture

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
                                       "required": ["zone"], "additionalProperties": False}}}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "languages"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}}}


@pytest.fixture(scope="module")
def server(cache_dir):  # noqa: F811
    with serving(cache_dir) as s:
        yield s


@pytest.mark.parametrize("model", [QWEN2, QWEN3])
def test_tool_call_round_trip(server, model):
    """Forced call → the client runs the tool → its result goes back → the model answers; the second turn's prompt
    carries the call and the result the way Qwen's template writes them."""
    c = client(server)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME], max_tokens=160,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert not getattr(choice.message, "reasoning_content", None)  # Qwen3: thinking is off for constrained output
    history = messages + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    second = c.chat.completions.create(model=model, messages=history, tools=[WEATHER, TIME], max_tokens=24)
    assert second.choices[0].message.content and second.choices[0].finish_reason in ("stop", "length")
    prompt = chat_prompt(server.cache.load(model).runner, parse_chat({"model": model, "messages": history,
                                                                     "tools": [WEATHER, TIME]}))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": ' in prompt
    assert "<tool_response>\n18 C and sunny\n</tool_response>" in prompt and '"name": "get_time"' in prompt


def test_required_tool_call_streams_as_deltas(server):
    stream = client(server).chat.completions.create(
        model=QWEN2, messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=[WEATHER, TIME],
        tool_choice="required", stream=True, max_tokens=160)
    calls, finish, content = {}, None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0] and not content.strip()
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] in ("get_weather", "get_time")
    tool = WEATHER if call["name"] == "get_weather" else TIME
    jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


@pytest.mark.parametrize("model", [QWEN2, QWEN3])
def test_json_schema_output_always_validates(server, model):
    c = client(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    topics = ["a programmer", "a teacher", "a painter", "a pilot", "a chef", "a doctor"]
    for i, topic in enumerate(topics):
        for temperature in (0.0, 0.9):
            r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Describe {topic}."}],
                                          response_format=fmt, max_tokens=120, temperature=temperature, seed=i)
            assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
            jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Any JSON object."}],
                                  response_format={"type": "json_object"}, max_tokens=80)
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_bad_schemas_and_tool_requests_are_400(server):
    c = client(server)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="objekt"):
        c.chat.completions.create(model=QWEN2, messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    with pytest.raises(openai.BadRequestError, match="not in 'tools'"):
        c.chat.completions.create(model=QWEN2, messages=msgs, tools=[WEATHER],
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="two different outputs"):
        c.chat.completions.create(model=QWEN2, messages=msgs, tools=[WEATHER], tool_choice="required",
                                  response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]"):
        c.chat.completions.create(model=QWEN2, messages=msgs, tools=[{"type": "function", "function": {"name": "a b"}}])


def test_tool_call_parser_reports_malformed_calls_at_any_chunking():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>\n'
            '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_time"')
    results = []
    for size in (1, 3, 7, len(text)):
        p = ToolCallParser({"get_weather", "get_time"})
        events = [e for i in range(0, len(text), size) for e in p.feed(text[i:i + size])] + p.finish()
        content = "".join(v for k, v in events if k == "content")
        results.append((content, [(c.name, json.loads(c.arguments)) for c in p.calls], [x["error"] for x in p.invalid]))
    assert all(r == results[0] for r in results)
    content, calls, errors = results[0]
    assert content == "Let me check." and calls == [("get_weather", {"city": "Oslo", "unit": "celsius"})]
    assert [e.split(":")[0] for e in errors] == ["not valid JSON", "the model called 'rm_rf', which is not among the "
                                                 "request's tools", "the model stopped inside a <tool_call> block (no "
                                                 "</tool_call>)"]


def test_runner_json_schema_option(artifacts, trained_qwen2, tmp_path):
    art = artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2)
    (tmp_path / "s.json").write_text(json.dumps(PERSON))
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "-p", "Describe a sailor.",
                           "--json-schema", str(tmp_path / "s.json"), "--max-new-tokens", "120"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    jsonschema.validate(json.loads(proc.stdout), PERSON)
    (tmp_path / "bad.json").write_text("{not json")
    proc = subprocess.run([sys.executable, str(art / "runner.py"), str(art), "-p", "x", "--json-schema",
                           str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not JSON" in proc.stderr
