"""One error type for everything a user can get wrong: what, where, and what to do."""

from __future__ import annotations


class EdgeQwenError(Exception):
    """A user-facing error. ``where`` names the file/key/layer, ``hint`` says what to do."""

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None):
        self.what = what
        self.where = where
        self.hint = hint
        parts = [what]
        if where:
            parts.append(f"  where: {where}")
        if hint:
            parts.append(f"  fix: {hint}")
        super().__init__("\n".join(parts))


class CheckFailed(EdgeQwenError):
    """The input was fine but a check on it failed (exit code 1): a missed gate, a model that does not fit."""


class AccuracyGateError(CheckFailed):
    """An artifact missed its recipe's accuracy gate; `summary` holds what was measured."""

    def __init__(self, what: str, *, summary: dict | None = None, **kw):
        super().__init__(what, **kw)
        self.summary = summary or {}


class DoesNotFit(CheckFailed):
    """A recipe's memory estimate exceeds its target's budget."""


# One exit code table for every verb (README, "Exit codes").
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
