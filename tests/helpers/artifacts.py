"""Built artifacts and tiny checkpoints shared by every xdist worker of one test run.

A build is keyed by what decides it — the recipe (its name, or a recipe file's content), the checkpoint's content
(not its path: each worker makes the random fixtures in a folder of its own) and whether it was evaluated — and is
made once per run: the first worker to need it builds it under a file lock, the others wait for it and reuse it.
Tests treat these artifacts as read-only (a test that changes files copies the artifact into its tmp_path first).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgeqwen.quantize.result_cache import file_lock  # the one cross-process lock, shared with the build caches

REPO = Path(__file__).resolve().parents[2]


def run_dir(kind: str) -> Path:
    """A folder shared by the workers of this run (tests/conftest.py sets the run's id before the workers start),
    removed at the end of the run."""
    path = Path(tempfile.gettempdir()) / f"edgeqwen-test-{kind}-{os.environ['EDGEQWEN_TEST_RUN']}"
    path.mkdir(parents=True, exist_ok=True)
    return path


_CONTENT: dict[str, str] = {}


def content_digest(folder: Path | str) -> str:
    """sha256 over a checkpoint folder's file names and bytes (memoized per path in this process)."""
    folder = Path(folder)
    if str(folder) not in _CONTENT:
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
        _CONTENT[str(folder)] = h.hexdigest()
    return _CONTENT[str(folder)]


def shared_checkpoint(name: str, make) -> Path:
    """`make(folder)` once per run for all workers (the random tiny fixtures are deterministic, seeded)."""
    root = run_dir("models")
    out = root / name
    with file_lock(root / f"{name}.lock"):
        if not (out / "config.json").exists():
            tmp = root / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            make(tmp)
            tmp.rename(out)
    return out


def random_checkpoint(family: str) -> Path:
    """The family's random-weight tiny fixture (its architecture entry's shape), made once per run for all workers."""
    from edgeqwen.tiny import create_tiny_qwen, fixture_spec

    return shared_checkpoint(family, lambda out: create_tiny_qwen(out, fixture_spec(family)))


class ArtifactCache:
    """Each (recipe, checkpoint content, evaluate) built once per test run, whichever worker needs it first.

    Builds of the trained embedded models are always evaluated (their accuracy is meaningful and most tests that use
    one also read its report), so a recipe on a trained model is one build whether a test asks for the report or not;
    builds of random-weight fixtures are evaluated only when asked."""

    def __init__(self, root: Path):
        self.root = root

    @staticmethod
    def trained(model: Path | str | None) -> bool:
        from edgeqwen.checkpoint import embedded_dir

        return model is None or Path(model).resolve().parent == embedded_dir().resolve()

    def key(self, recipe: str, model: Path | str | None, evaluate: bool) -> str:
        path = Path(recipe)
        what = {"recipe": hashlib.sha256(path.read_bytes()).hexdigest() if path.suffix in (".yaml", ".yml")
                and path.exists() else recipe,
                "model": content_digest(model) if model and Path(model).is_dir() else str(model), "evaluate": evaluate}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def get(self, recipe: str, model: Path | str | None = None, evaluate: bool = False) -> Path:
        from edgeqwen.build import BuildOptions, build

        evaluate = evaluate or self.trained(model)
        out = self.root / self.key(recipe, model, evaluate)
        t0 = time.perf_counter()
        with file_lock(out.with_suffix(".lock")):
            waited = time.perf_counter() - t0
            if (out / "manifest.json").exists():
                self._log("reused", recipe, waited, 0.0)
                return out
            t1 = time.perf_counter()
            build(BuildOptions(recipe=recipe, output=out, model=str(model) if model else None, evaluate=evaluate))
            self._log("built", recipe, waited, time.perf_counter() - t1)
        return out

    def _log(self, what: str, recipe: str, waited: float, built: float) -> None:
        with open(self.root / "builds.jsonl", "a") as fh:
            fh.write(json.dumps({"what": what, "recipe": Path(recipe).name if recipe.endswith(".yaml") else recipe,
                                 "wait_s": round(waited, 2), "build_s": round(built, 2),
                                 "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\n")


def build_summary(root: Path) -> str | None:
    """One line on the run's shared builds (how many, their time, time workers spent waiting for another's build)."""
    path = root / "builds.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    built = [r for r in rows if r["what"] == "built"]
    return (f"shared artifacts: {len(built)} built in {sum(r['build_s'] for r in built):.0f} s, "
            f"{len(rows) - len(built)} reuses, {sum(r['wait_s'] for r in rows):.0f} s waited on another worker's build")


BASE_RECIPE = """\
version: 1
model: embedded:{model}
target: cpu-x86_64
precision: {precision}
context_length: 1024
quantization:
  algorithm: {algo}
  symmetric: false
  lm_head: int8
  block_size: 32
"""
ALGO_RECIPE = BASE_RECIPE + "  calibration: {{samples: 16, seq_len: 128, iters: 20}}\naccuracy: {{max_windows: 3}}\n"


def algo_recipe(recipe_dir: Path, algo: str) -> str:
    """One algorithm on the default int4 layout (asym, block 32, int8 head), light calibration: the recipe the
    algorithm tests share, so each algorithm is built once per run."""
    text = ALGO_RECIPE.format(model="tiny-qwen2", precision="int4", algo=algo)
    path = recipe_dir / f"{algo}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text)
    return str(path)


KV16_RECIPE = """\
version: 1
model: embedded:tiny-qwen2
target: {target}
precision: fp32
context_length: 1024
kv_cache: fp16
accuracy: {{max_kld: 0.001}}
"""


def kv16_recipe(recipe_dir: Path, target: str = "cpu-x86_64") -> str:
    """The trained tiny Qwen2 with fp32 weights and its KV cache in fp16: what differs from the fp32 recipe is the
    cache alone."""
    text = KV16_RECIPE.format(target=target)
    path = recipe_dir / f"kv16-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text)
    return str(path)


SHORTLIST_K = 32  # of the tiny models' 1024-token vocabulary
SHORTLIST_RECIPE = """\
version: 1
model: embedded:{model}
target: cpu-x86_64
precision: int4
context_length: 1024
quantization: {{algorithm: rtn, symmetric: false, lm_head: int8, block_size: 32, lm_head_shortlist: {k}}}
accuracy: {{max_ppl_ratio: 1.2, max_kld: 0.2, min_top1: 0.75, max_windows: 3}}
"""


def shortlist_recipe(recipe_dir: Path, model: str, k: int = SHORTLIST_K, extra: str = "", bits: int | None = None) -> str:
    """A trained tiny model built with a shortlist head of k (RTN: seconds); `extra`: more accuracy keys; `bits`: its
    ranking copy's (None: the target's)."""
    text = SHORTLIST_RECIPE.format(model=model, k=k)
    if bits is not None:
        text = text.replace(f"lm_head_shortlist: {k}}}", f"lm_head_shortlist: {k}, lm_head_shortlist_bits: {bits}}}")
    if extra:
        text = text.replace("max_windows: 3", "max_windows: 3, " + extra)
    path = recipe_dir / f"shortlist-{model}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.yaml"
    path.write_text(text)
    return str(path)

