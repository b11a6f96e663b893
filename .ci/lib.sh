# Shared by the .ci/device_*.sh scripts (source it).

# ensure_venv DIR CHECK PACKAGE...: a venv at DIR whose python passes CHECK (python code), else made anew with PACKAGE...
# (pip's downloads cached under $CACHE/pip). For onnxruntime builds that replace plain onnxruntime (webgpu, openvino).
ensure_venv() {
  local venv="$1" check="$2"
  shift 2
  if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --cache-dir "$CACHE/pip" "$@"
  fi
}
