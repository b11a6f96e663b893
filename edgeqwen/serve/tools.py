"""Tool calls and structured output for the OpenAI-compatible server.

- Request side: `tools`, `tool_choice`, `response_format` and the tool-call history (`role: "tool"` messages,
  assistant messages carrying `tool_calls`) are checked and put into the shape Qwen's chat templates render
  (arguments as objects; the template writes `<tool_call>{"name": …, "arguments": …}</tool_call>` itself).
- Decoding side: `tool_choice: "required"` or a named function, and `response_format` `json_object` /
  `json_schema`, become a grammar (llguidance) applied as a token mask in the runner, so the output always parses.
- Output side: Qwen answers with `<tool_call>\\n{json}\\n</tool_call>` blocks; `ToolCallParser` turns the streamed
  text into content and OpenAI `tool_calls` (ids, names, JSON-string arguments). A block that is not valid JSON
  with a name is reported in `invalid_tool_calls` (LangChain's name for it), never passed off as content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from ..runtime.runner import JSON_LAYOUT
from .errors import ApiError

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param)


def parse_tools(body: dict) -> tuple[list[dict], str | dict]:
    """`tools` (function tools only) and `tool_choice` → (tools as the template takes them, choice)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise _bad("'tool_choice' needs 'tools'", "tool_choice")
        return [], "none"
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    clean, names = [], set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}", f"tools[{i}]")
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
            raise _bad(f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'", f"tools[{i}].function.name")
        if name in names:
            raise _bad(f"tools[{i}]: function {name!r} is listed twice", f"tools[{i}].function.name")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}].function.parameters")
        entry = {"name": name, "parameters": params}
        if isinstance(fn.get("description"), str):
            entry = {"name": name, "description": fn["description"], "parameters": params}
        clean.append({"type": "function", "function": entry})
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in names:
            raise _bad(f"'tool_choice' names function {name!r}, which is not in 'tools' ({', '.join(sorted(names))})",
                       "tool_choice")
        return clean, {"name": name}
    if choice not in ("none", "auto", "required"):
        raise _bad("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": "
                   "...}}", "tool_choice")
    return clean, choice


def history_message(i: int, m: dict) -> dict:
    """One message of the conversation as Qwen's template renders it: assistant tool calls with their arguments as
    objects, tool results as `role: tool` content."""
    role = m.get("role")
    if role == "tool":
        if not isinstance(m.get("content"), (str, list)):
            raise _bad(f"messages[{i}]: a tool message needs string content (the tool's result)", f"messages[{i}]")
        return {"role": "tool", "content": _text(i, m["content"]), "tool_call_id": str(m.get("tool_call_id", ""))}
    calls = m.get("tool_calls")
    out = {"role": "assistant", "content": _text(i, m.get("content") or "")}
    if not isinstance(calls, list) or not calls:
        raise _bad(f"messages[{i}].tool_calls must be a non-empty list", f"messages[{i}].tool_calls")
    out["tool_calls"] = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"messages[{i}].tool_calls[{j}] needs function.name", f"messages[{i}].tool_calls[{j}]")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError:
                raise _bad(f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON",
                           f"messages[{i}].tool_calls[{j}].function.arguments") from None
        out["tool_calls"].append({"id": call.get("id"), "type": "function",
                                  "function": {"name": fn["name"], "arguments": args}})
    return out


def _text(i: int, content) -> str:
    if isinstance(content, str):
        return content
    parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
    if any(not isinstance(p.get("text"), str) for p in parts):
        raise _bad(f"messages[{i}].content: every text part needs a string 'text'", f"messages[{i}].content")
    return "".join(p["text"] for p in parts)


def response_schema(body: dict) -> dict | None:
    """`response_format` → the JSON schema the output must validate against (None: free text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad("'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}",
                   "response_format")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise _bad("'response_format.json_schema' must be {\"name\": ..., \"schema\": {...}}",
                   "response_format.json_schema")
    return spec.get("schema") or {"type": "object"}


def tool_call_grammar(tools: list[dict], choice: str | dict, literal) -> str:
    """A Lark grammar (llguidance) for one forced tool call: the `<tool_call>` block Qwen writes, its JSON being
    {"name": one of the allowed functions, "arguments": that function's parameter schema}. `literal(text)` gives a
    terminal for the markers (a special token where the tokenizer has one)."""
    allowed = [t["function"] for t in tools if choice in ("required", "auto") or t["function"]["name"] == choice["name"]]
    options = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for f in allowed]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {**schema, "x-guidance": JSON_LAYOUT}  # canonical layout, as the template writes calls (no free spaces)
    return (f'%llguidance {{}}\nstart: {literal(OPEN)} "\\n" call "\\n" {literal(CLOSE)}\n'
            f"call: %json {json.dumps(schema)}\n")


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str  # a JSON string, as OpenAI returns it


@dataclass
class ToolCallParser:
    """Streamed model text → ("content", text) and ("call", ParsedCall) / ("invalid", dict) events."""

    names: set[str]
    buffer: str = ""
    in_call: bool = False
    after_call: bool = False
    calls: list[ParsedCall] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)

    def feed(self, text: str) -> list[tuple[str, object]]:
        """Whitespace around calls is layout, not content: trailing whitespace is held until text follows it, and
        whitespace right after a call is dropped — so any chunking of the same text gives the same events."""
        self.buffer += text
        events: list[tuple[str, object]] = []
        while self.buffer:
            if self.in_call:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    break
                events.append(self._call(self.buffer[:end]))
                self.buffer, self.in_call, self.after_call = self.buffer[end + len(CLOSE):], False, True
                continue
            if self.after_call:
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    break
                self.after_call = False
            start = self.buffer.find(OPEN)
            if start >= 0:
                if self.buffer[:start].strip():
                    events.append(("content", self.buffer[:start].rstrip()))
                self.buffer, self.in_call = self.buffer[start + len(OPEN):], True
                continue
            keep = next((k for k in range(min(len(OPEN) - 1, len(self.buffer)), 0, -1)
                         if OPEN.startswith(self.buffer[-k:])), 0)  # a marker may be arriving
            ready = self.buffer[:len(self.buffer) - keep]
            ready = ready[:len(ready.rstrip())]  # trailing whitespace waits for what follows it
            if ready:
                events.append(("content", ready))
                self.buffer = self.buffer[len(ready):]
            break
        return events

    def finish(self) -> list[tuple[str, object]]:
        """The end of generation: an unterminated call is invalid; held-back text is content."""
        rest, self.buffer = self.buffer, ""
        if self.in_call:
            self.in_call = False
            return [self._invalid(rest, "the model stopped inside a <tool_call> block (no </tool_call>)")]
        return [("content", rest.rstrip())] if rest.strip() and not self.after_call else []

    def _call(self, raw: str) -> tuple[str, object]:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return self._invalid(raw, f"not valid JSON: {exc.msg} at character {exc.pos}")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return self._invalid(raw, "a tool call needs {\"name\": ..., \"arguments\": {...}}")
        if obj["name"] not in self.names:
            return self._invalid(raw, f"the model called {obj['name']!r}, which is not among the request's tools")
        args = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return self._invalid(raw, "arguments are a string that is not JSON")
        call = ParsedCall(f"call_{uuid.uuid4().hex[:24]}", obj["name"], json.dumps(args, ensure_ascii=False))
        self.calls.append(call)
        return ("call", call)

    def _invalid(self, raw: str, error: str) -> tuple[str, object]:
        entry = {"id": f"call_{uuid.uuid4().hex[:24]}", "raw": raw.strip(), "error": error}
        self.invalid.append(entry)
        return ("invalid", entry)


def openai_call(call: ParsedCall, index: int | None = None) -> dict:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index, **out}
