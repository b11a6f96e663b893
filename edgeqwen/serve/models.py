"""Model cache for the server: discover artifacts, load lazily, serialize requests per model."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgeQwenError
from ..runtime.batch import BatchEngine
from ..runtime.runner import Runner
from .integrity import ArtifactBroken, quick_check

DEFAULT_MAX_BATCH = 4
LOG = logging.getLogger("edgeqwen.serve")


@dataclass
class ServedModel:
    name: str
    path: Path
    runner: Runner | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time when not batched
    loaded_at: float | None = None
    engine: BatchEngine | None = None  # continuous batching (in-place KV graphs), else one request at a time
    speculate: str | None = None  # the server's --speculate: requests that do not say otherwise
    problem: str | None = None  # what the start-up check found broken (integrity.quick_check); None: nothing

    def max_batch(self, override: int | None) -> int:
        """--max-batch, else the artifact's target's serve_max_batch (manifest), else DEFAULT_MAX_BATCH."""
        if override is not None:
            return override
        try:
            target = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))["target"]
            return int(target.get("serve_max_batch", DEFAULT_MAX_BATCH))
        except (OSError, ValueError, KeyError, TypeError):
            return DEFAULT_MAX_BATCH

    @property
    def created(self) -> int:
        try:
            return int((self.path / "genai_config.json").stat().st_mtime)
        except OSError:  # the folder was removed while serving: still listed, reported as created 0
            return 0


def _is_artifact(p: Path) -> bool:
    return (p / "genai_config.json").exists() and (p / "inference_model.json").exists()


def _model_name(p: Path) -> str:
    try:
        name = json.loads((p / "inference_model.json").read_text(encoding="utf-8"))["Name"]
        return name if isinstance(name, str) and name else p.name
    except (KeyError, TypeError, ValueError, OSError):
        return p.name


def _same_name(name: str, first: Path, second: Path) -> EdgeQwenError:
    """Two artifacts answer to one model name. Renaming one by hand cannot work (manifest.json hashes
    inference_model.json, so the edited artifact no longer loads): serve them apart, or rebuild one under a new name."""
    recipe = _recipe(second)
    return EdgeQwenError(
        f"two artifacts are named {name!r}", where=f"{first} and {second}",
        hint=f"serve the folders separately, one server each on its own port (`edgeqwen serve {first}` and "
             f"`edgeqwen serve {second} --port PORT`), or rebuild one under another name "
             f"(`edgeqwen build {recipe} -o {second} --force --name NEW`); do not edit inference_model.json: "
             "manifest.json hashes it, and the edited artifact no longer loads")


def _recipe(p: Path) -> str:
    """The recipe an artifact was built from (manifest.json), for the rebuild command a message suggests."""
    try:
        name = json.loads((p / "manifest.json").read_text(encoding="utf-8"))["name"]
        return name if isinstance(name, str) and name else "RECIPE"
    except (KeyError, TypeError, ValueError, OSError):
        return "RECIPE"


def _startup_problem(name: str, path: Path) -> str | None:
    """The cheap start-up check (integrity.quick_check), reported in one log line: the model stays listed, as one
    that breaks while serving does, and its requests fail until the files are repaired (no restart needed)."""
    try:
        quick_check(path)
    except ArtifactBroken as exc:
        LOG.warning("model %r (%s) is broken: %s; its requests will fail until it is rebuilt or re-copied: "
                    "run `edgeqwen verify %s`", name, path, exc, path)
        return str(exc)
    return None


def _still_broken(model: ServedModel) -> None:
    """A model found broken at start is looked at again (cheaply) before loading: repaired files load, and broken ones
    are refused at once instead of having their weights hashed for every request."""
    if model.problem is not None:
        quick_check(model.path)  # raises ArtifactBroken while a listed file is still missing, resized or modified
        model.problem = None


class ModelCache:
    """One artifact folder, or a Foundry Local-style cache folder holding many."""

    def __init__(self, root: Path, threads: int | None = None, max_batch: int | None = None,
                 provider: str | None = None, speculate: str | None = None):
        root = Path(root)
        if not root.is_dir():
            raise EdgeQwenError(f"model folder not found: {root}", where="edgeqwen serve", hint="pass an artifact or a folder of artifacts")
        # hidden folders are work in progress (`.NAME.building-*`) or old copies (`.NAME.old-*`): never served
        folders = [root] if _is_artifact(root) else sorted(
            p for p in root.rglob("*") if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and _is_artifact(p))
        if not folders:
            raise EdgeQwenError(f"no artifacts under {root}", where=str(root),
                                hint="each artifact folder needs genai_config.json and inference_model.json (`edgeqwen build` writes both)")
        self.models: dict[str, ServedModel] = {}
        for f in folders:
            name = _model_name(f)
            if name in self.models:
                raise _same_name(name, self.models[name].path, f)
            self.models[name] = ServedModel(name, f, speculate=speculate, problem=_startup_problem(name, f))
        self.threads = threads
        self.provider = provider  # None: each artifact's own execution provider (CPU as its declared fallback)
        self.max_batch_override = max_batch
        self._load_lock = threading.Lock()

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise KeyError(name)
        return model

    def load(self, name: str) -> ServedModel:
        model = self.get(name)
        with self._load_lock:
            if model.runner is None:
                _still_broken(model)
                runner = Runner(model.path, threads=self.threads, providers=self.provider)
                batch = model.max_batch(self.max_batch_override)
                if batch > 1 and not runner.growing_kv and runner.static_slots is None:
                    model.engine = BatchEngine(runner, max_batch=batch)
                model.runner = runner
                model.loaded_at = time.time()
        return model

    def unload(self, name: str) -> bool:
        model = self.get(name)
        with model.lock:  # wait for a running generation to finish
            was = model.runner is not None
            if model.engine is not None:
                model.engine.close()  # requests in flight finish first: the engine drains before it stops
            model.runner, model.engine = None, None
            model.loaded_at = None
        return was

    def engines(self) -> dict:
        """name → the batch engine of each loaded, batched model (for /metrics)."""
        return {n: m.engine for n, m in self.models.items() if m.engine is not None}

    def providers(self) -> dict[str, tuple[str, bool]]:
        """name → (the execution provider its session got, whether that is a fallback from what the artifact names)
        for each loaded model (for /metrics)."""
        return {n: (m.runner.providers[0], bool(m.runner.provider_notes)) for n, m in self.models.items()
                if m.runner is not None}

    def loaded(self) -> list[str]:
        return [n for n, m in self.models.items() if m.runner is not None]
