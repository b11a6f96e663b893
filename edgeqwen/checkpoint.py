"""Find and vet the source checkpoint: embedded default, local folder, or hub id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .architectures import architectures, get_architecture
from .errors import EdgeQwenError

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    source: str  # what the user asked for (hub id, path, embedded:NAME)
    architecture: str
    family: str
    config: dict

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


def embedded_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "models"


def embedded_models() -> list[str]:
    return sorted(p.name for p in embedded_dir().iterdir() if (p / "config.json").exists()) if embedded_dir().exists() else []


def looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _download(hub_id: str) -> Path:
    """Real hub download (users have internet); offline it fails with a clear message."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds here
        raise EdgeQwenError(
            f"could not fetch {hub_id!r} from the Hugging Face hub: the hub is unreachable or the id is wrong "
            f"({type(exc).__name__})",
            where=hub_id,
            hint="download the checkpoint elsewhere and pass its local folder with --model PATH "
            "(a folder with config.json, *.safetensors and tokenizer files)",
        ) from None


def resolve_checkpoint(source: str) -> Checkpoint:
    if source.startswith(EMBEDDED_PREFIX):
        name = source[len(EMBEDDED_PREFIX):]
        path = embedded_dir() / name
        if not (path / "config.json").exists():
            raise EdgeQwenError(
                f"no embedded model named {name!r}", where=str(embedded_dir()),
                hint=f"embedded models: {', '.join(embedded_models()) or 'none'}; "
                "recreate them with `python -m edgeqwen.train`",
            )
    elif looks_like_hub_id(source) and not Path(source).expanduser().exists():
        path = _download(source)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise EdgeQwenError(f"model path does not exist: {path}", where="--model", hint="pass an existing checkpoint folder or a hub id")
        if not path.is_dir():
            raise EdgeQwenError(f"model path is not a folder: {path}", where="--model", hint="pass the checkpoint folder, not a file in it")
    return inspect_checkpoint(path, source)


def inspect_checkpoint(path: Path, source: str | None = None) -> Checkpoint:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise EdgeQwenError(f"no config.json in {path}", where=str(path), hint="pass a Hugging Face checkpoint folder")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeQwenError(f"config.json is not valid JSON: {exc.msg}", where=f"{cfg_path}, line {exc.lineno}") from None
    archs = config.get("architectures") or []
    known = sorted(a.hf_class for a in architectures())
    arch = next((a for a in archs if a in known), None)
    if arch is None:
        raise EdgeQwenError(
            f"unsupported architecture {archs or config.get('model_type')!r}: edgeqwen builds Qwen2/Qwen2.5/Qwen2.5-VL/Qwen3 checkpoints only",
            where=str(cfg_path),
            hint=f"supported architectures: {', '.join(known)}",
        )
    if isinstance(config.get("text_config"), dict):  # multimodal (Qwen2.5-VL): the decoder's settings are nested
        config = {**config, **config["text_config"]}
    if not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")):
        raise EdgeQwenError(f"no weights (*.safetensors) in {path}", where=str(path))
    if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
        raise EdgeQwenError(f"no tokenizer files in {path}", where=str(path), hint="copy tokenizer.json/tokenizer_config.json next to the weights")
    return Checkpoint(path=path, source=source or str(path), architecture=arch,
                      family=get_architecture(arch).family, config=config)
