"""Calibration text for GPTQ: the packaged default or a user's file, checked before any heavy work."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeQwenError

MIN_SEQUENCES = 8  # fewer full calibration sequences than this gives GPTQ a singular-looking Hessian


def default_calibration_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "calib.txt"


@dataclass(frozen=True)
class CalibrationSet:
    source: str  # the file the text came from
    jsonl: Path  # one {"text": ...} record per paragraph, what Olive's data container reads
    tokens: int
    samples: int  # sequences of seq_len tokens GPTQ will see
    seq_len: int

    def as_dict(self) -> dict:
        return {"source": self.source, "tokens": self.tokens, "samples": self.samples, "seq_len": self.seq_len}


def read_calibration_text(path: Path | None) -> tuple[str, str]:
    """(text, source) from --calib FILE or the packaged default; clear errors for a missing/empty/binary file."""
    src = Path(path).expanduser() if path else default_calibration_path()
    if not src.exists():
        raise EdgeQwenError(f"calibration file not found: {src}", where="--calib",
                            hint="pass a UTF-8 text file of representative prompts/documents, or omit --calib "
                            "to use the packaged calibration text")
    if not src.is_file():
        raise EdgeQwenError(f"calibration path is not a file: {src}", where="--calib")
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EdgeQwenError(f"calibration file is not UTF-8 text (byte {exc.start}): {src}", where="--calib",
                            hint="convert it to UTF-8 plain text") from None
    if not text.strip():
        raise EdgeQwenError(f"calibration file is empty: {src}", where="--calib",
                            hint="GPTQ needs representative text; give a file with a few thousand words")
    return text, str(src)


def prepare_calibration(path: Path | None, tokenizer_dir: Path, out: Path, samples: int, seq_len: int) -> CalibrationSet:
    """Tokenize once to check there is enough text, and write the JSON-lines file Olive will load."""
    from transformers import AutoTokenizer

    text, source = read_calibration_text(path)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    n_tokens = len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    available = n_tokens // seq_len
    if available < MIN_SEQUENCES:
        raise EdgeQwenError(
            f"calibration text is too short: {n_tokens} tokens make {available} sequences of {seq_len}, "
            f"GPTQ needs at least {MIN_SEQUENCES} ({MIN_SEQUENCES * seq_len} tokens)",
            where=source,
            hint=f"give a longer --calib file (≥ {MIN_SEQUENCES * seq_len} tokens; {samples * seq_len} for the recipe's "
            f"{samples} samples), or lower quantization.calibration.seq_len",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for para in filter(None, (p.strip() for p in text.split("\n\n"))):
            f.write(json.dumps({"text": para}) + "\n")
    return CalibrationSet(source=source, jsonl=out, tokens=n_tokens, samples=min(samples, available), seq_len=seq_len)


def calibration_ids(tokenizer_dir: str, text_path: str, samples: int, seq_len: int, spread: bool = True):
    """[samples, seq_len] token ids (fewer, shorter when the text is short): spread over the whole calibration text, or
    (spread=False) consecutive from its start, as Olive's "join" data strategy reads it."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(Path(text_path).read_text(encoding="utf-8"), add_special_tokens=False, verbose=False)["input_ids"]
    seq_len = min(seq_len, len(ids))
    samples = max(1, min(samples, len(ids) // seq_len))
    span = len(ids) - seq_len
    starts = [round(i * span / max(samples - 1, 1)) if spread else i * seq_len for i in range(samples)]
    return torch.tensor([ids[s:s + seq_len] for s in starts], dtype=torch.long)
