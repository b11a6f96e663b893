"""A cheap look at an artifact when the server starts: manifest.json readable, every file it lists present with its
recorded size, the small files (configs, tokenizer, chat template, graph) hashed — the runner's own load-time check
(`runtime.runner.check_artifact`) with a size limit on what it hashes. A broken artifact is then reported at start,
not by the first request for it. The weights are hashed in full only when the model loads (`Runner`, as before):
hashing gigabytes of every artifact at start would hold the server back for minutes."""

from __future__ import annotations

from pathlib import Path

from ..runtime.runner import RunnerError, check_artifact

SMALL_FILE = 16 << 20  # bytes: files up to this size are hashed at start (Qwen2.5's tokenizer.json is 7 MB)


class ArtifactBroken(RunnerError):
    """An artifact that would fail its load-time check: the message names the file and what is wrong with it."""


def quick_check(path: Path) -> None:
    """Raise ArtifactBroken naming the first problem that loading this artifact would hit (short of a weight file
    changed in place at its size)."""
    try:
        check_artifact(path, hash_limit=SMALL_FILE)
    except RunnerError as exc:
        raise ArtifactBroken(str(exc).removeprefix(f"{path}: ")) from None
