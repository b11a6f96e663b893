"""One chat-template renderer (runner, server, Foundry metadata) that renders exactly as transformers'
`apply_chat_template` does: both families' templates, plus a Qwen-style template with tools and thinking."""

from __future__ import annotations

import pytest

from edgeqwen.runtime.runner import RunnerError, render_chat_template

# Qwen-style features in one template: tools rendered with tojson, a namespace scan backwards over the messages,
# reasoning split out of assistant turns, tool calls and tool responses, the thinking switch.
TOOLS_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == "user" %}{%- set ns.last_query = (messages|length - 1) - loop.index0 %}{% break %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content or '' %}
        {%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
        {{- '<|im_start|>assistant\\n' + content }}
        {%- for call in message.tool_calls or [] %}
            {%- set call = call.function if call.function is defined else call %}
            {{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
            {%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "system" %}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}
"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city, in °C",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a class?"},
     {"role": "assistant", "content": "<think>\nhm\n</think>\n\nA blueprint."}, {"role": "user", "content": "More?"}],
    [{"role": "user", "content": "Weather in Zürich?"},
     {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "id": "c1", "function": {
         "name": "get_weather", "arguments": {"city": "Zürich"}}}]},
     {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 3}"}],
]


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
@pytest.mark.parametrize("template", ["model", "tools"])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("thinking", [None, False])
def test_renders_like_transformers(family, template, conversation, thinking, request):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(f"trained_{family}"))
    tpl = tok.chat_template if template == "model" else TOOLS_TEMPLATE
    messages = CONVERSATIONS[conversation]
    kwargs = {"tools": TOOLS} if template == "tools" else {}
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    want = tok.apply_chat_template(messages, chat_template=tpl, tokenize=False, add_generation_prompt=True, **kwargs)
    assert render_chat_template(tpl, messages, add_generation_prompt=True, **kwargs) == want


def test_template_errors_are_runner_errors():
    with pytest.raises(RunnerError, match="unknown role robot"):
        render_chat_template(TOOLS_TEMPLATE, [{"role": "robot", "content": "x"}])
    with pytest.raises(RunnerError, match="failed to render"):
        render_chat_template("{{ messages.__class__.__mro__ }}{% for %}", [])
    with pytest.raises(RunnerError, match="failed to render"):  # sandboxed: no attribute escapes
        render_chat_template("{{ messages.__class__.__subclasses__() }}", [])
