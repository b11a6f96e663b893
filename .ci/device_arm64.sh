#!/usr/bin/env bash
# Device check: the arm64 artifacts on aarch64 kernels. An aarch64 Python from Debian's arm64 packages (debootstrap
# --foreign + dpkg -x, no chroot), run by qemu-aarch64 10 (bookworm-backports' static build, fetched with a private
# apt configuration: the host's sources and qemu are untouched), with aarch64 wheels: the onnxruntime of the build
# venv, so model.ort files it wrote load (onnxruntime 1.25+ segfaults at import under Debian 12's qemu 7.2, whose
# /proc/cpuinfo is the host's x86 one). Idempotent; everything cached under ~/.cache/edgeqwen-ci/arm64. Run inside
# the CI venv (or set PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CACHE=${EDGEQWEN_CI_CACHE:-$HOME/.cache/edgeqwen-ci}
ARM="$CACHE/arm64"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EDGEQWEN_CI_CACHE="$CACHE"
mkdir -p "$ARM"
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
# qemu-user (static binaries) from bookworm-backports, unpacked, not installed: $ARM/qemu/usr/bin/qemu-aarch64
if ! "$ARM/qemu/usr/bin/qemu-aarch64" --version >/dev/null 2>&1; then
  APT="$ARM/apt"
  mkdir -p "$APT/lists/partial" "$APT/cache" "$APT/sources.list.d"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian" \
    "bookworm-backports main" > "$APT/sources.list"
  apt_private=(-o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts="$APT/sources.list.d"
               -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" -o APT::Sandbox::User=root -qq)
  apt-get "${apt_private[@]}" update
  rm -rf "$ARM/qemu" && mkdir -p "$ARM/qemu"
  (cd "$APT" && rm -f qemu-user_*.deb && apt-get "${apt_private[@]}" download qemu-user/bookworm-backports)
  dpkg-deb --fsys-tarfile "$APT"/qemu-user_*.deb | tar -x -C "$ARM/qemu" ./usr/bin/qemu-aarch64
  rm -rf "$APT"  # 63 MB of .deb and package lists; the binary is what is kept
fi
if [ ! -f "$ARM/rootfs.done" ]; then
  rm -rf "$ARM/rootfs"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm "$ARM/rootfs" >"$ARM/debootstrap.log"
  for deb in "$ARM"/rootfs/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ARM/rootfs"; done
  touch "$ARM/rootfs.done"
fi
# the runtime profile's packages (pyproject's dependencies) for aarch64, onnxruntime = the build venv's; the cache is
# keyed by this list
ORT=$("$PYTHON" -c "import onnxruntime; print(onnxruntime.__version__)")
PACKAGES="onnxruntime==$ORT numpy tokenizers jinja2 pyyaml llguidance prometheus-client uvicorn==0.54.* starlette>=1.10,<2"
if [ "$(cat "$ARM/site.done" 2>/dev/null)" != "$PACKAGES" ]; then
  rm -rf "$ARM/site"
  set -f  # the list is split into words, never globbed
  "$PYTHON" -m pip install -q --no-warn-conflicts --cache-dir "$CACHE/pip" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --only-binary=:all: --python-version 311 --implementation cp --target "$ARM/site" $PACKAGES
  set +f
  echo "$PACKAGES" > "$ARM/site.done"
fi
PYTHONPATH="$ARM/site" "$ARM/qemu/usr/bin/qemu-aarch64" -cpu neoverse-n1 -L "$ARM/rootfs" "$ARM/rootfs/usr/bin/python3" \
  -c "import platform, onnxruntime; assert platform.machine() == 'aarch64' and onnxruntime.__version__ == '$ORT'"
"$PYTHON" -m pytest -q -p no:cacheprovider -n 0 -m "device and arm64" -rA tests/
