#!/usr/bin/env bash
# Device check: the web artifact's page in a real browser. Debian's Chromium, headless, driven by Playwright for Python;
# WebAssembly and WebGPU over SwiftShader (the software Vulkan adapter in chromium-common), compared with the Python
# runner on the same graph. Idempotent: apt packages once, playwright into the current venv, the pinned npm packages
# cached under ~/.cache/edgeqwen/npm (EDGEQWEN_NPM_CACHE). Run inside the CI venv (or PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export EDGEQWEN_TEST_LOG_DIR=${EDGEQWEN_TEST_LOG_DIR:-$PWD/.ci/logs/browser}
need=()  # only what is missing (Node's own npm, e.g. NodeSource's, conflicts with Debian's npm package)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -f /usr/lib/chromium/vk_swiftshader_icd.json ] || need+=(chromium-common)
ldconfig -p | grep libvulkan.so.1 >/dev/null || need+=(libvulkan1)  # no grep -q: SIGPIPE under pipefail
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$PYTHON" -c "import playwright" 2>/dev/null || "$PYTHON" -m pip install -q playwright
# the pinned onnxruntime-web / transformers.js, into the cache builds read (offline afterwards)
"$PYTHON" -c "from edgeqwen.web.npm import ensure_packages; print('npm cache:', ensure_packages())"
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and browser" -rA tests/
echo "screenshots: $EDGEQWEN_TEST_LOG_DIR"
