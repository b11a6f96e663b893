"""POST /v1/chat/completions and /v1/completions: one JSON answer, or a stream of server-sent events."""

from __future__ import annotations

import json
import time

from starlette.responses import Response

from .context import Ctx, json_response
from .generation import Interrupted
from .protocol import parse_chat, parse_completion
from .streaming import Outcome, StreamResponse, collect
from .tools import openai_call


async def chat_completions(ctx: Ctx) -> Response:
    return await _complete(ctx, chat=True)


async def completions(ctx: Ctx) -> Response:
    return await _complete(ctx, chat=False)


async def _complete(ctx: Ctx, chat: bool) -> Response:
    body = await ctx.body()
    req = parse_chat(body) if chat else parse_completion(body)
    gen = await ctx.state.start(ctx, req, chat)
    info = _Info(ctx.rid, ("chatcmpl-" if chat else "cmpl-") + ctx.rid, int(time.time()), req, chat, len(gen.job.ids))
    if req.stream:
        return StreamResponse(ctx, gen, _sse_events(info, gen), "text/event-stream", _sse_error)
    outcome = Outcome(ctx, gen)
    records = await collect(ctx, gen, outcome)
    if records is None:  # the client went away or the server is closing: nothing more to say
        return outcome.response()
    return json_response(_whole(info, gen, records), headers=ctx.headers)


class _Info:
    def __init__(self, rid, oid, created, req, chat, n_prompt):
        self.rid, self.oid, self.created, self.req, self.chat, self.n_prompt = rid, oid, created, req, chat, n_prompt
        self.obj = ("chat.completion.chunk" if chat else "text_completion")

    def chunk(self, delta: dict, finish=None) -> dict:
        choice = ({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} if self.chat
                  else {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None})
        return {"id": self.oid, "object": self.obj, "created": self.created, "model": self.req.model,
                "choices": [choice]}

    def usage(self, n: int) -> dict:
        return {"prompt_tokens": self.n_prompt, "completion_tokens": n, "total_tokens": self.n_prompt + n}


def _tool_message(message: dict, parser, finish: str) -> str:
    """Fill a chat message from the tool-call parser; returns the finish reason (tool_calls when it called)."""
    if parser.calls:
        message["tool_calls"] = [openai_call(c) for c in parser.calls]
        if not message["content"]:
            message["content"] = None
    if parser.invalid:
        message["invalid_tool_calls"] = parser.invalid
    return "tool_calls" if parser.calls and finish == "stop" else finish


def _whole(info: _Info, gen, records) -> dict:
    parser = gen.job.parser
    n = records[-1].generated_tokens if records else 0
    finish = next((r.finish_reason for r in reversed(records) if r.finish_reason), "stop")
    content = "".join(r.text for r in records)
    reasoning = "".join(r.reasoning for r in records).strip()
    if parser is not None:
        events = parser.feed(content) + parser.finish()
        content = "".join(e[1] for e in events if e[0] == "content").strip()
    if info.chat:
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        if parser is not None:
            finish = _tool_message(message, parser, finish)
        choice, obj = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}, "chat.completion"
    else:
        choice, obj = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}, "text_completion"
    return {"id": info.oid, "object": obj, "created": info.created, "model": info.req.model, "choices": [choice],
            "usage": info.usage(n)}


def _sse(payload) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _sse_error(exc: BaseException) -> bytes:
    if isinstance(exc, Interrupted):
        err = {"message": "the server is shutting down; the answer was cut short", "type": "server_error",
               "param": None, "code": "server_shutdown"}
    else:
        err = {"message": f"generation failed: {type(exc).__name__}", "type": "server_error", "param": None,
               "code": "internal_error"}
    return _sse({"error": err}) + _sse("[DONE]")


async def _sse_events(info: _Info, gen):
    """The SSE body, event by event (bytes); exceptions go to StreamResponse, which ends the stream with an error."""
    parser, n = gen.job.parser, 0
    if info.chat:
        yield _sse(info.chunk({"role": "assistant", "content": ""}))
    async for rec in gen:
        n = rec.generated_tokens
        out = []
        if rec.reasoning:
            out.append(info.chunk({"reasoning_content": rec.reasoning}))
        events = [("content", rec.text)] if parser is None else parser.feed(rec.text)
        if rec.finish_reason and parser is not None:
            events += parser.finish()
        for kind, value in events:
            if kind == "content" and value:
                out.append(info.chunk({"content": value}))
            elif kind == "call":
                out.append(info.chunk({"tool_calls": [openai_call(value, len(parser.calls) - 1)]}))
            elif kind == "invalid":
                out.append(info.chunk({"invalid_tool_calls": [value]}))
        if rec.finish_reason:
            calls = parser is not None and parser.calls and rec.finish_reason == "stop"
            out.append(info.chunk({}, "tool_calls" if calls else rec.finish_reason))
        yield b"".join(_sse(o) for o in out)
    if info.req.include_usage:
        yield _sse({"id": info.oid, "object": info.obj, "created": info.created, "model": info.req.model,
                    "choices": [], "usage": info.usage(n)})
    yield _sse("[DONE]")

