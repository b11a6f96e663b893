#!/usr/bin/env bash
# Device check: the arm64 artifacts on aarch64 kernels. An aarch64 Python from Debian's arm64 packages (debootstrap
# --foreign + dpkg -x, no chroot), run by qemu-aarch64-static, with aarch64 wheels (onnxruntime 1.24.4: 1.25+ segfault
# at import under Debian 12's qemu 7.2). Idempotent; everything cached under ~/.cache/edgeqwen-ci/arm64. Run inside
# the CI venv (or set PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CACHE=${EDGEQWEN_CI_CACHE:-$HOME/.cache/edgeqwen-ci}
ARM="$CACHE/arm64"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGEQWEN_CI_CACHE="$CACHE"
mkdir -p "$ARM"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap >/dev/null
fi
if [ ! -f "$ARM/rootfs.done" ]; then
  rm -rf "$ARM/rootfs"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm "$ARM/rootfs" >"$ARM/debootstrap.log"
  for deb in "$ARM"/rootfs/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ARM/rootfs"; done
  touch "$ARM/rootfs.done"
fi
# the runtime profile's packages (pyproject's dependencies) for aarch64; the cache is keyed by this list
PACKAGES="onnxruntime==1.24.4 numpy tokenizers jinja2 pyyaml llguidance prometheus-client uvicorn==0.54.* starlette>=1.10,<2"
if [ "$(cat "$ARM/site.done" 2>/dev/null)" != "$PACKAGES" ]; then
  rm -rf "$ARM/site"
  set -f  # the list is split into words, never globbed
  "$PYTHON" -m pip install -q --no-warn-conflicts --cache-dir "$CACHE/pip" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --only-binary=:all: --python-version 311 --implementation cp --target "$ARM/site" $PACKAGES
  set +f
  echo "$PACKAGES" > "$ARM/site.done"
fi
qemu-aarch64-static -L "$ARM/rootfs" "$ARM/rootfs/usr/bin/python3" -c "import platform; assert platform.machine() == 'aarch64'"
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and arm64" -rA tests/
