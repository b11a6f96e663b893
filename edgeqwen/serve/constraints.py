"""Grammars for a request: its response_format schema or a forced tool call, compiled and probed before any 200; the
tools of an `auto` request are checked the same way, so a schema the grammar engine refuses is a 400 whatever the
tool_choice (was: 200 for auto, 400 for required)."""

from __future__ import annotations

import json

from ..runtime.runner import JSON_LAYOUT, GrammarConstraint, RunnerError
from .errors import bad
from .tools import tool_call_grammar


def _llguidance(param: str):
    try:
        import llguidance
    except ImportError:
        raise bad("structured output and tools need llguidance on the server (pip install llguidance)", param) from None
    return llguidance


def _probe(constraint: GrammarConstraint, where: str) -> GrammarConstraint:
    """A grammar that compiles can still have no first token (`{"$ref": "#"}`, a `$ref` cycle): the engine reports it
    when the first mask is computed. Ask on a copy, so a request never starts on an empty language."""
    trial = constraint.matcher.deep_copy()
    trial.compute_bitmask()
    if trial.is_error():
        raise bad(f"'{where}': the schema admits no JSON value ({trial.get_error()[:300]})", where)
    return constraint


def check_tool_schemas(runner, tools: list) -> None:
    """Every tool's parameter schema must be one the grammar engine takes (as it would for a forced call)."""
    if not tools:
        return
    llguidance = _llguidance("tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}].function.parameters"
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(tool["function"]["parameters"], defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise bad(f"'{where}': {exc}", where) from None
        error = llguidance.LLMatcher.validate_grammar(grammar, runner.ll_tokenizer())
        if error:
            raise bad(f"'{where}': {error}", where)
        _probe(GrammarConstraint(runner, grammar), where)


def constraint_for(runner, req):
    """The grammar a chat request's output must follow: its response_format schema, or a forced tool call."""
    if req.schema is None and req.tool_choice in ("none", "auto"):
        return None
    where = "response_format.json_schema" if req.schema is not None else "tools"
    _llguidance("response_format" if req.schema is not None else "tool_choice")
    try:
        if req.schema is not None:
            return _probe(GrammarConstraint.json_schema(runner, req.schema), where)

        def literal(text):
            tid = runner.tokenizer.token_to_id(text)
            special = tid is not None and runner.ll_tokenizer().is_special_token(tid)
            return f"<[{tid}]>" if special else json.dumps(text)

        return _probe(GrammarConstraint(runner, tool_call_grammar(req.tools, req.tool_choice, literal)), where)
    except RunnerError as exc:
        raise bad(f"'{where}': {exc}", where) from None
