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


class AccuracyGateError(EdgeQwenError):
    """An artifact missed its recipe's accuracy gate."""
