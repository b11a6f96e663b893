"""Ollama's API beside OpenAI's: POST /api/chat and /api/generate (NDJSON streams by default, one object with
`"stream": false`), POST /api/show, GET /api/tags, /api/ps, /api/version.

A request is translated into the OpenAI request it means (Ollama's option names onto the same sampling: num_predict,
temperature, top_p, top_k, seed, stop, repeat_penalty; `format` "json" or a JSON schema through the same constrained
decoding; `think` onto Qwen3's thinking switch) and runs the same way; answers and errors take Ollama's shapes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from starlette.responses import Response

from .. import __version__
from .context import Ctx, json_response
from .errors import bad
from .generation import Interrupted
from .ollama_meta import details, model_entry, model_info, template_capabilities
from .protocol import parse_chat, parse_completion
from .streaming import Outcome, StreamResponse, collect

OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
           "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty"}
UNLIMITED = 1 << 30  # num_predict -1/-2 or absent: until the context is full (Ollama's default)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _sampling(body: dict) -> dict:
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise bad("'options' must be an object", "options")
    out = {"model": body.get("model"), "stream": body.get("stream", True)}
    for name, field in OPTIONS.items():
        if opts.get(name) is not None:
            out[field] = opts[name]
    if not isinstance(out.get("max_tokens", 0), int) or out.get("max_tokens", -1) < 0:
        out["max_tokens"] = UNLIMITED
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise bad("'format' must be \"json\" or a JSON schema object", "format")
    think = body.get("think")
    if think is not None:
        out["chat_template_kwargs"] = {"enable_thinking": think not in (False, "false", "none")}
    return out


def _message(i: int, m) -> dict:
    """An Ollama message → OpenAI's (images become image_url parts, tool calls get ids and a type)."""
    if not isinstance(m, dict):
        raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
    out = {"role": m.get("role"), "content": m.get("content") if m.get("content") is not None else ""}
    images = m.get("images") or []
    if images:
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise bad(f"messages[{i}].images must be a list of base64 strings", f"messages[{i}].images")
        out["content"] = [{"type": "text", "text": out["content"]}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{x}"}} for x in images]
    if m.get("tool_calls"):
        calls = m["tool_calls"] if isinstance(m["tool_calls"], list) else []
        out["tool_calls"] = [{"id": f"call_{j}", "type": "function", "function": (c or {}).get("function")}
                             for j, c in enumerate(calls)]
    return out


async def chat(ctx: Ctx) -> Response:
    body = await ctx.body()
    msgs = body.get("messages")
    if msgs is None or msgs == []:
        return await _load_only(ctx, body)
    if not isinstance(msgs, list):
        raise bad("'messages' must be a list", "messages")
    req = parse_chat({**_sampling(body), "messages": [_message(i, m) for i, m in enumerate(msgs)],
                      **({"tools": body["tools"]} if body.get("tools") else {})})
    return await _run(ctx, req, chat=True)


async def generate(ctx: Ctx) -> Response:
    body = await ctx.body()
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        return await _load_only(ctx, body)
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string", "prompt")
    if body.get("raw") or body.get("suffix") is not None:
        req = parse_completion({**_sampling(body), "prompt": prompt,
                                **({"suffix": body["suffix"]} if body.get("suffix") is not None else {})})
        return await _run(ctx, req, chat=False)
    messages = ([{"role": "system", "content": body["system"]}] if isinstance(body.get("system"), str) else [])
    content = prompt
    if body.get("images"):
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{x}"}} for x in body["images"]]
    req = parse_chat({**_sampling(body), "messages": [*messages, {"role": "user", "content": content}]})
    return await _run(ctx, req, chat=True, key="response")


async def _load_only(ctx: Ctx, body: dict) -> Response:
    """Ollama's way to load (empty messages/prompt) or unload (keep_alive 0) a model."""
    name = body.get("model")
    await ctx.model(name)
    reason = "load"
    if body.get("keep_alive") in (0, "0", "0s"):
        ctx.state.cache.unload(name)
        reason = "unload"
    return json_response({"model": name, "created_at": _now(), "done": True, "done_reason": reason,
                          **({"message": {"role": "assistant", "content": ""}} if "messages" in body else
                             {"response": ""})})


class _Turn:
    """Ollama's pieces of one answer: text (or `response`), thinking, tool calls, and the closing statistics."""

    def __init__(self, req, gen, key: str):
        self.req, self.gen, self.key, self.t0 = req, gen, key, time.perf_counter()
        self.parser = gen.job.parser

    def piece(self, text: str = "", thinking: str = "", calls=()) -> dict:
        if self.key == "message":
            msg = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                                     for c in calls]
            return {"model": self.req.model, "created_at": _now(), "message": msg, "done": False}
        out = {"model": self.req.model, "created_at": _now(), "response": text, "done": False}
        return {**out, "thinking": thinking} if thinking else out

    def events(self, text: str, finish: bool):
        """(content, calls) from the model's text through the tool-call parser, when the request has tools."""
        if self.parser is None:
            return text, []
        events = self.parser.feed(text) + (self.parser.finish() if finish else [])
        return "".join(v for k, v in events if k == "content"), [v for k, v in events if k == "call"]

    def final(self, last, text="", thinking="", calls=()) -> dict:
        n_prompt, n = len(self.gen.job.ids), (last.generated_tokens if last else 0)
        total = int((time.perf_counter() - self.t0) * 1e9)
        prefill = int(last.ttft_s * 1e9) if last and last.ttft_s else 0
        return {**self.piece(text, thinking, calls), "done": True,
                "done_reason": (last.finish_reason if last and last.finish_reason else "stop"),
                "total_duration": total, "load_duration": 0, "prompt_eval_count": n_prompt,
                "prompt_eval_duration": prefill, "eval_count": n, "eval_duration": max(0, total - prefill)}


async def _run(ctx: Ctx, req, chat: bool, key: str = "message") -> Response:
    gen = await ctx.state.start(ctx, req, chat)
    turn = _Turn(req, gen, key if chat else "response")
    if req.stream:
        return StreamResponse(ctx, gen, _ndjson(turn), "application/x-ndjson", _ndjson_error)
    outcome = Outcome(ctx, gen)
    records = await collect(ctx, gen, outcome)
    if records is None:
        return outcome.response()
    text, calls = turn.events("".join(r.text for r in records), finish=True)
    thinking = "".join(r.reasoning for r in records).strip()
    return json_response(turn.final(records[-1] if records else None, text.strip() if calls else text, thinking,
                                    calls), headers=ctx.headers)


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def _ndjson_error(exc: BaseException) -> bytes:
    why = "the server is shutting down" if isinstance(exc, Interrupted) else f"generation failed: {type(exc).__name__}"
    return _line({"error": why})


async def _ndjson(turn: _Turn):
    last = None
    async for rec in turn.gen:
        last = rec
        text, calls = turn.events(rec.text, finish=bool(rec.finish_reason))
        if rec.finish_reason:
            yield _line(turn.final(rec, text, rec.reasoning, calls))
            return
        if text or rec.reasoning or calls:
            yield _line(turn.piece(text, rec.reasoning, calls))
    yield _line(turn.final(last))


async def show(ctx: Ctx) -> Response:
    body = await ctx.body()
    name = body.get("model") or body.get("name")
    served = await ctx.model(name)
    runner = served.runner
    g = runner.generation
    params = (f"temperature {g['temperature']}\ntop_p {g['top_p']}\ntop_k {g['top_k']}\n"
              f"repeat_penalty {g['repetition_penalty']}")
    return json_response({"modelfile": "", "parameters": params, "template": runner.chat_template or "",
                          "details": details(served.path), "model_info": model_info(served.path, runner),
                          "capabilities": template_capabilities(runner),
                          "modified_at": datetime.fromtimestamp(served.created, timezone.utc).isoformat()})


async def tags(ctx: Ctx) -> Response:
    return json_response({"models": [model_entry(m) for m in ctx.state.cache.models.values()]})


async def ps(ctx: Ctx) -> Response:
    cache = ctx.state.cache
    out = []
    for name in cache.loaded():
        m = cache.models[name]
        out.append({**model_entry(m), "expires_at": "2999-01-01T00:00:00Z", "size_vram": 0,
                    "context_length": m.runner.context_length if m.runner else None})
    return json_response({"models": out})


async def version(ctx: Ctx) -> Response:
    return json_response({"version": __version__})

