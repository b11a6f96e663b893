"""Pinned npm packages for web/, installed once into a cache (offline afterwards) with the ordinary npm client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import EdgeQwenError

# versions verified here in headless Chromium (WASM and WebGPU over SwiftShader)
PACKAGES = {"onnxruntime-web": "1.31.1", "@huggingface/transformers": "4.3.2"}


def cache_dir() -> Path:
    """~/.cache/edgeqwen/npm/<pins>: one folder per set of pins (EDGEQWEN_NPM_CACHE moves the root)."""
    root = Path(os.environ.get("EDGEQWEN_NPM_CACHE") or Path.home() / ".cache" / "edgeqwen" / "npm")
    tag = "-".join(f"{name.split('/')[-1]}{version}" for name, version in PACKAGES.items())
    return root / tag


def _installed(folder: Path) -> bool:
    for name, version in PACKAGES.items():
        pkg = folder / "node_modules" / name / "package.json"
        if not pkg.exists() or json.loads(pkg.read_text()).get("version") != version:
            return False
    return True


def ensure_packages() -> Path:
    """The node_modules folder holding PACKAGES at their pinned versions: the cache's, installed from the npm registry
    on first use (`npm install --ignore-scripts`: transformers.js's onnxruntime-node postinstall would download)."""
    folder = cache_dir()
    if _installed(folder):
        return folder / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise EdgeQwenError("npm is not installed, and the web page's JavaScript libraries are not cached yet",
                            where=str(folder), hint="install Node.js/npm (apt-get install npm) once; the packages "
                            f"{', '.join(f'{n}@{v}' for n, v in PACKAGES.items())} are cached after the first build")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text(json.dumps({"name": "edgeqwen-web-cache", "private": True}) + "\n")
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    proc = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact", *specs],
                          cwd=folder, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not _installed(folder):
        raise EdgeQwenError(f"npm install {' '.join(specs)} failed: {proc.stderr.strip()[-600:]}", where=str(folder),
                            hint="check the npm registry is reachable (npm config get registry), then build again")
    return folder / "node_modules"
