#!/usr/bin/env bash
# Device check: the openvino-cpu artifact on onnxruntime-openvino's OpenVINO execution provider (its own venv: the
# wheel replaces plain onnxruntime) on this x86 CPU, compared with the CPU provider. Idempotent; cached under
# ~/.cache/edgeqwen-ci. Run inside the CI venv (or set PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CACHE=${EDGEQWEN_CI_CACHE:-$HOME/.cache/edgeqwen-ci}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGEQWEN_CI_CACHE="$CACHE"
source .ci/lib.sh
ensure_venv "$CACHE/openvino-venv" \
  "import onnxruntime as o, numpy, tokenizers, jinja2; assert 'OpenVINOExecutionProvider' in o.get_available_providers()" \
  onnxruntime-openvino==1.24.1 numpy tokenizers jinja2
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and openvino" -rA tests/
