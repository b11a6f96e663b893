"""Cache of calibrated quantization results (GPTQ, AutoRound) per weights × calibration text × settings.

Other targets and tune candidates with the same quantization reuse one run. EDGEQWEN_GPTQ_CACHE=off
disables it (the name predates AutoRound; it covers both)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builds may repeat a run
    fcntl = None

from ..log import stage_log


def cache_dir(kind: str) -> Path | None:
    if os.environ.get("EDGEQWEN_GPTQ_CACHE", "on").lower() in ("0", "off", "false", "no"):
        return None
    return Path(os.environ.get("EDGEQWEN_CACHE", Path.home() / ".cache" / "edgeqwen")) / kind


def cache_key(model: Path, calib_jsonl: Path, settings: dict, package: str) -> str:
    """Content, not paths: the checkpoint's weights/config, the calibration records, the settings, the
    quantizer's version and the thread count (float sums depend on it)."""
    from importlib import metadata

    h = hashlib.sha256()
    for f in sorted(model.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
    h.update(calib_jsonl.read_bytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(metadata.version(package).encode())
    from ..child import calibration_threads

    h.update(str(calibration_threads()).encode())
    return h.hexdigest()[:20]


def store(model_dir: Path, cached: Path) -> Path:
    """Copy into the cache atomically (parallel builds may race: the first rename wins)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}-", dir=cached.parent))
    shutil.copytree(model_dir, tmp / "m")
    try:
        (tmp / "m").rename(cached)
    except OSError:
        pass  # another build stored it first
    shutil.rmtree(tmp, ignore_errors=True)
    return cached if (cached / "config.json").exists() else model_dir


@contextmanager
def file_lock(lock_path: Path):
    """One holder at a time across processes: an advisory fcntl lock on `lock_path`, released when the holder exits,
    even on a crash (where the OS has no fcntl, no lock)."""
    if fcntl is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _one_at_a_time(root: Path | None, key: str):
    """Parallel builds that need the same result (build-all, tune, test workers) wait for the first one's run instead
    of repeating it (elsewhere than fcntl's OSes they may both run, and the first rename wins)."""
    if root is None:
        yield
        return
    with file_lock(root / f".{key}.lock"):
        yield


def cached(kind: str, key: str, what: str, run: Callable[[], tuple[Path, float]]) -> tuple[Path, float]:
    """The quantized checkpoint for `key`: from the cache (wall 0.0), or `run()` and store its result."""
    root = cache_dir(kind)
    hit = root / key if root else None
    with _one_at_a_time(root, key):
        if hit is not None and (hit / "config.json").exists():
            stage_log(f"        {what} result reused from the cache ({hit})")
            return hit, 0.0
        model_dir, wall = run()
        stage_log(f"        {what} done in {wall:.1f}s")
        return (store(model_dir, hit) if hit is not None else model_dir), wall


def cached_json(kind: str, key: str, what: str, run: Callable[[], dict]) -> dict:
    """A JSON record for `key` (a measurement, not a model): from the cache, or `run()` and store it atomically."""
    root = cache_dir(kind)
    with _one_at_a_time(root, key):
        return _cached_json(root, key, what, run)


def _cached_json(root: Path | None, key: str, what: str, run: Callable[[], dict]) -> dict:
    hit = root / f"{key}.json" if root else None
    if hit is not None and hit.is_file():
        try:
            record = json.loads(hit.read_text())
            stage_log(f"        {what} reused from the cache ({hit})")
            return record
        except (OSError, ValueError):
            pass  # a damaged entry is measured again
    record = run()
    stage_log(f"        {what} measured in {record.get('wall_s', 0):.1f}s")
    if hit is not None:
        hit.parent.mkdir(parents=True, exist_ok=True)
        tmp = hit.with_name(f".{hit.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        tmp.replace(hit)
    return record
