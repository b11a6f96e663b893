#!/usr/bin/env bash
# Device check: an x86-64 without AVX-512 (qemu-x86_64 -cpu Haswell) on artifacts built natively: batched vs lone
# decoding, then the default run's ISA-sensitive tests (tests/test_device_avx2.py: pytest itself under the emulator).
# Idempotent; run inside the CI venv (or set PYTHON). A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! command -v qemu-x86_64-static >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and avx2" -rA tests/
