#!/usr/bin/env bash
# Device check: WebGPU artifacts on onnxruntime's real WebGPU execution provider (onnxruntime-webgpu 1.27.0, in its own
# venv: it replaces plain onnxruntime) over SwiftShader, the software Vulkan adapter in Debian's chromium-common,
# compared with the CPU run. Idempotent; downloads cached under ~/.cache/edgeqwen-ci. Run inside the CI venv (or PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CACHE=${EDGEQWEN_CI_CACHE:-$HOME/.cache/edgeqwen-ci}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGEQWEN_CI_CACHE="$CACHE"
mkdir -p "$CACHE"
if [ ! -f /usr/lib/chromium/vk_swiftshader_icd.json ] || ! ldconfig -p | grep -q libvulkan.so.1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-common libvulkan1 >/dev/null
fi
source .ci/lib.sh
ensure_venv "$CACHE/webgpu-venv" "import onnxruntime, numpy, tokenizers, jinja2; assert onnxruntime.__version__ == '1.27.0'" \
  onnxruntime-webgpu==1.27.0 numpy tokenizers jinja2
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and webgpu" -rA tests/
