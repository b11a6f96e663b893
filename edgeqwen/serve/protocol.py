"""OpenAI request parsing and error shape: wrong types become 400s that name the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ApiError
from .tools import history_message, parse_tools, response_schema


@dataclass
class Request:
    model: str
    prompt: str = ""
    messages: list = field(default_factory=list)
    max_tokens: int = 256
    temperature: float | None = None  # None: the artifact's default (its recipe's generation block)
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's: accepted as vLLM and llama.cpp's servers do
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    enable_thinking: bool | None = None
    tools: list = field(default_factory=list)  # function tools, as the chat template renders them
    tool_choice: str | dict = "none"  # none | auto | required | {"name": ...}
    parallel_tool_calls: bool = True
    schema: dict | None = None  # response_format's JSON schema (json_object: {"type": "object"})
    suffix: str | None = None  # /v1/completions fill-in-the-middle (Qwen2.5-Coder)
    images: list = field(default_factory=list)  # image_url part URLs, in prompt order (Qwen2.5-VL artifacts)
    speculate: str | None = None  # not OpenAI's: "lookup" or "none" (None: the server's --speculate)
    ignored: tuple[str, ...] = ()  # fields the request sent that change nothing here (listed in X-Edgeqwen-Ignored)


# What each endpoint reads. Fields whose meaning the server cannot honour are refused (400, named); other fields are
# answered but listed as ignored in the X-Edgeqwen-Ignored response header — never dropped silently.
COMMON_FIELDS = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
                 "stream_options", "top_k", "repetition_penalty", "speculate"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "chat_template_kwargs", "tools", "tool_choice", "parallel_tool_calls",
                               "response_format"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "suffix"}
UNSUPPORTED = {
    "functions": "the legacy 'functions' field is not supported; send 'tools' instead",
    "function_call": "the legacy 'function_call' field is not supported; send 'tool_choice' instead",
    "logprobs": "logprobs are not returned by this server",
    "top_logprobs": "logprobs are not returned by this server",
    "logit_bias": "logit_bias is not applied by this server",
    "echo": "echo is not supported by this server",
    "best_of": "best_of is not supported by this server",
}


# OpenAI's roles → the chat template's: "developer" is OpenAI's newer name for the system message
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
SPECULATE = ("lookup", "none")  # a request's "speculate": prompt-lookup drafting, or none despite serve --speculate


def _fields(body: dict, known: set[str]) -> tuple[str, ...]:
    """Refuse what cannot be honoured; return the rest of the unknown fields (sorted) to report as ignored."""
    for key, why in UNSUPPORTED.items():
        value = body.get(key)
        if value is not None and value is not False and value != [] and value != {} and not (key == "echo" and not value):
            raise ApiError(400, f"'{key}': {why}; remove the field", "invalid_request_error", param=key,
                           code="unsupported_field")
    unknown = [k for k in body if k not in known and k not in UNSUPPORTED]
    named = sorted(k for k in unknown if _FIELD_NAME.fullmatch(k))
    odd = len(unknown) - len(named)  # names that could not go into a header safely (control characters, length)
    return tuple(named + ([f"{odd} more with unusual names"] if odd else []))


def _get(body: dict, key: str, types, default=None, check=None, allowed: str | None = None):
    """`body[key]` of the given type(s), else a 400 naming the field. `check` is the tuple of the field's allowed
    values, or a predicate with `allowed` saying in words what passes: every refusal says what would be accepted, so a
    client can fix its request without the docs (was: "'speculate' is out of range: 'lokup'")."""
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{key}' must be {getattr(types, '__name__', types)}, got a boolean", "invalid_request_error", param=key)
    if not isinstance(value, types):
        raise ApiError(400, f"'{key}' has the wrong type: got {type(value).__name__}", "invalid_request_error", param=key)
    if isinstance(check, tuple) and value not in check:
        raise ApiError(400, f"'{key}' must be one of {', '.join(map(repr, check))}; got {_shown(value)}",
                       "invalid_request_error", param=key)
    if callable(check) and not check(value):
        raise ApiError(400, f"'{key}' is out of range: {_shown(value)} (allowed: {allowed})", "invalid_request_error",
                       param=key)
    return value


def _shown(value) -> str:
    """A refused value as the error quotes it: bounded, so a megabyte string does not come back in the answer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _float(value):
    return None if value is None else float(value)


def _common(body: dict) -> dict:
    n = _get(body, "n", int, 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "invalid_request_error", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of non-empty strings", "invalid_request_error", param="stop")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "invalid_request_error", param="stream_options")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return dict(
        model=_get(body, "model", str, ""),
        max_tokens=_get({"max_tokens": max_tokens}, "max_tokens", int, 256, lambda v: v >= 1, "1 or more"),
        temperature=_float(_get(body, "temperature", (int, float), None, lambda v: 0 <= v <= 2, "0 to 2")),
        top_p=_float(_get(body, "top_p", (int, float), None, lambda v: 0 < v <= 1, "above 0, up to 1")),
        top_k=_get(body, "top_k", int, None, lambda v: 0 <= v <= 1000, "0 to 1000"),
        repetition_penalty=_float(_get(body, "repetition_penalty", (int, float), None, lambda v: 0 < v <= 2,
                                        "above 0, up to 2")),
        seed=_get(body, "seed", int, None, lambda v: 0 <= v < 2**63, "0 to 2**63 - 1"),
        speculate=_get(body, "speculate", str, None, SPECULATE),
        stop=stop or [],
        stream=_get(body, "stream", bool, False),
        include_usage=_get({"stream_options.include_usage": opts.get("include_usage")}, "stream_options.include_usage",
                           bool, False),
    )


def parse_chat(body: dict) -> Request:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", "invalid_request_error", param="messages")
    clean, images = [], []
    for i, m in enumerate(msgs):
        if isinstance(m, dict) and (m.get("role") == "tool" or (m.get("role") == "assistant" and m.get("tool_calls"))):
            clean.append(history_message(i, m))  # the tool-call history, as Qwen's template renders it
            continue
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), (str, list)):
            raise ApiError(400, f"messages[{i}] needs a role (system/developer/user/assistant/tool) and string content",
                           "invalid_request_error", param=f"messages[{i}]")
        content = m["content"]
        if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url", "image_url": {...}}]
            content = _content_parts(i, content, images)
        clean.append({"role": ROLES[m["role"]], "content": content})
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object", "invalid_request_error", param="chat_template_kwargs")
    think = kwargs.get("enable_thinking")
    if think is not None and not isinstance(think, bool):
        raise ApiError(400, "'chat_template_kwargs.enable_thinking' must be true or false", "invalid_request_error")
    ignored = _fields(body, CHAT_FIELDS)
    tools, choice = parse_tools(body)
    schema = response_schema(body)
    if schema is not None and choice not in ("none", "auto"):
        raise ApiError(400, "'response_format' and a forced 'tool_choice' ask for two different outputs; send one",
                       "invalid_request_error", param="response_format")
    parallel = _get(body, "parallel_tool_calls", bool, True)
    return Request(messages=clean, enable_thinking=think, tools=tools, tool_choice=choice, parallel_tool_calls=parallel,
                   schema=schema, ignored=ignored, images=images, **_common(body))


def _content_parts(i: int, content: list, images: list):
    """OpenAI content parts → the chat template's: text joined; each image_url part an {"type": "image"} placeholder
    (the template writes <|vision_start|><|image_pad|><|vision_end|>) whose URL joins `images`, in order."""
    where = f"messages[{i}].content"
    parts, text_only = [], True
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            if not isinstance(p.get("text"), str):
                raise ApiError(400, f"{where}: every text part needs a string 'text'", "invalid_request_error", param=where)
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "image_url":
            spec = p.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{where}[{j}]: an image_url part needs image_url.url (a data: URI)",
                               "invalid_request_error", param=f"{where}[{j}]")
            parts.append({"type": "image"})
            images.append(url)
            text_only = False
        else:
            raise ApiError(400, f"{where}[{j}]: content part type {kind!r} is not supported (text, image_url)",
                           "invalid_request_error", param=f"{where}[{j}]")
    return "".join(p["text"] for p in parts) if text_only else parts


def parse_completion(body: dict) -> Request:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", "invalid_request_error", param="prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise ApiError(400, "'suffix' must be a string", "invalid_request_error", param="suffix")
    return Request(prompt=prompt, suffix=suffix, ignored=_fields(body, COMPLETION_FIELDS), **_common(body))


def chat_prompt(runner, req: Request) -> str:
    extra = {"tools": req.tools} if req.tools and req.tool_choice != "none" else {}
    return runner.apply_chat_template(req.messages, req.enable_thinking, **extra)
