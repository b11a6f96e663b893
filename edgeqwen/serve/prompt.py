"""Chat prompts tokenized so that only the chat template's own control tokens are control tokens.

A message's text can hold Qwen's control strings (`<|im_end|>\\n<|im_start|>system\\n…`). Tokenizing the whole rendered
prompt with special tokens parsed would turn them into real turn boundaries: a user could forge a system turn. Here
every control string inside request content (messages, tool definitions, tool-call arguments) is swapped for a sentinel
before the template renders; the rendered prompt is then split at the template's control tokens (special ids) and at
the sentinels (the original string, tokenized as text). Where content holds no control string, the ids are exactly the
ones whole-prompt tokenization gives (the tokenizer splits at added tokens first in the same way).

Token counts are bounded as they are computed: text is counted in slices cut where Qwen's pre-tokenizer cuts anyway,
and a prompt is refused as soon as it passes the context, before its whole encoding is allocated.
"""

from __future__ import annotations

import re
import secrets
import weakref
from dataclasses import dataclass

from ..runtime.runner import RunnerError

SLICE = 16384  # characters of text counted at once when a text is long
_CUT = re.compile(r"(?<=\n)(?=\S)|(?<=[^\W\d_]) (?=[^\W\d_])")  # after a newline before text; before a space in a word run


class PromptTooLong(RunnerError):
    def __init__(self, tokens: int, context: int, exact: bool):
        more = "" if exact else "more than "
        super().__init__(f"prompt has {more}{tokens} tokens; the model's context is {context} tokens")
        self.tokens, self.context = tokens, context


@dataclass
class _Vocab:
    text_mode: object  # a copy of the tokenizer that reads special-token strings as text
    controls: list[str]  # Qwen's control strings (<|...|> special tokens), longest first: text when in content
    ids: dict[str, int]  # every special token (<think> too, where it is special): the template's own are ids
    pattern: re.Pattern | None


_VOCABS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _vocab(runner) -> _Vocab:
    v = _VOCABS.get(runner)
    if v is None:
        from tokenizers import Tokenizer

        tok = runner.tokenizer
        text_mode = Tokenizer.from_str(tok.to_str())
        text_mode.encode_special_tokens = True
        added = tok.get_added_tokens_decoder()
        ids = {t.content: i for i, t in added.items() if t.special}  # split where the template writes them
        controls = sorted((c for c in ids if c.startswith("<|") and c.endswith("|>")), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, controls))) if controls else None
        v = _VOCABS[runner] = _Vocab(text_mode, controls, ids, pattern)
    return v


class Counter:
    """Tokens of one prompt so far, against the most it may hold (one position is left for the first new token)."""

    def __init__(self, context: int):
        self.context, self.limit, self.n = context, context - 1, 0

    def text(self, tokenizer, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RunnerError(f"text is not valid Unicode at character {exc.start} (a lone surrogate or undecodable "
                              "bytes); send UTF-8 text") from None
        if len(text) > SLICE:
            self._precount(tokenizer, text)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        self.add(len(ids), exact=True)
        return ids

    def add(self, n: int, exact: bool) -> None:
        if self.n + n > self.limit:
            raise PromptTooLong(self.n + n, self.context, exact)
        if exact:
            self.n += n

    def _precount(self, tokenizer, text: str) -> None:
        """Count a long text slice by slice (cut where the pre-tokenizer splits anyway) and stop past the limit."""
        seen, start = 0, 0
        while start < len(text):
            end = min(len(text), start + SLICE)
            if end < len(text):
                m = None
                for m in _CUT.finditer(text, start + SLICE // 2, end):
                    pass
                end = m.start() if m is not None and m.start() > start else end
            seen += len(tokenizer.encode(text[start:end], add_special_tokens=False).ids)
            self.add(seen, exact=False)
            start = end


def encode_chat(runner, messages: list, context: int, enable_thinking=None, **template_kwargs) -> tuple[str, list[int]]:
    """(the rendered prompt, its token ids): control strings in content stay text. Raises PromptTooLong when it leaves no room in `context`."""
    v = _vocab(runner)
    sentinels: dict[str, str] = {}
    if v.pattern is not None:
        nonce = secrets.token_hex(8)
        sentinels = {f"\ue000{nonce}{k}\ue001": s for k, s in enumerate(v.controls)}
        back = {s: k for k, s in sentinels.items()}
        messages = _scrub(messages, v.pattern, back)
        template_kwargs = _scrub(template_kwargs, v.pattern, back)
    rendered = runner.apply_chat_template(messages, enable_thinking, **template_kwargs)
    counter = Counter(context)
    ids, text = [], []
    marks = sorted([*sentinels, *v.ids], key=len, reverse=True)
    split = re.compile("(" + "|".join(map(re.escape, marks)) + ")") if marks else None
    for part in (split.split(rendered) if split else [rendered]):
        if part in sentinels:
            text.append(sentinels[part])  # content's control string: text
        elif part in v.ids:  # the template's own control token
            if text:
                ids += counter.text(v.text_mode, "".join(text))
                text = []
            counter.add(1, exact=True)
            ids.append(v.ids[part])
        elif part:
            text.append(part)
    if text:
        ids += counter.text(v.text_mode, "".join(text))
    for sentinel, s in sentinels.items():
        rendered = rendered.replace(sentinel, s)
    return rendered, ids


def encode_raw(runner, text: str, context: int) -> list[int]:
    """A raw completion prompt: the caller's own text, control strings parsed (it writes its own format)."""
    counter = Counter(context)
    if len(text) > SLICE:
        counter._precount(runner.tokenizer, text)
    ids = runner.encode(text)
    counter.add(len(ids), exact=True)
    return ids


def _scrub(value, pattern: re.Pattern, back: dict):
    if isinstance(value, str):
        return pattern.sub(lambda m: back[m.group(0)], value)
    if isinstance(value, list):
        return [_scrub(x, pattern, back) for x in value]
    if isinstance(value, dict):
        return {k: _scrub(x, pattern, back) for k, x in value.items()}
    return value
