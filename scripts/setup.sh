#!/usr/bin/env bash
# Installs what df_planner needs on a fresh machine (Debian 12, Rust toolchain, Python 3.11+;
# DF_PYTHON names the interpreter the virtualenv is created with, default python3):
# - a Python virtualenv OUTSIDE the clone (torch from PyPI is ~3 GB; reused across clones),
#   DF_VENV overrides its place, with the df_train package (onnx/) installed editable and its
#   dependencies at the versions pinned in onnx/constraints.txt;
# - ONNX Runtime's shared library, taken from that venv's PyPI `onnxruntime` wheel, and
#   .cargo/config.toml pointing ORT_DYLIB_PATH at it for `cargo run` and `cargo test`.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
PYTHON="${DF_PYTHON:-python3}"
# The pins in onnx/constraints.txt have wheels for CPython 3.11 to 3.13 (scripts/check_pins.sh).
# On 3.10 numpy 2.4.6 has none, and the newest onnxruntime there (1.23) is older than the ONNX
# Runtime API the Rust binary is built against.
require_python() {
  if ! "$1" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
    local found
    found="$("$1" -c 'import platform; print("is Python " + platform.python_version())' 2>/dev/null || echo "was not found")"
    echo "setup: $2 $found; df_train needs Python 3.11 or newer. $3" >&2
    exit 1
  fi
}
if [ ! -x "$VENV/bin/python" ]; then
  require_python "$PYTHON" "$PYTHON" "Install python3.11 (on Ubuntu 22.04: the deadsnakes PPA) and run DF_PYTHON=python3.11 bash scripts/setup.sh"
  echo "setup: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
require_python "$VENV/bin/python" "the virtualenv $VENV" "Remove it (or set DF_VENV to a new place) and run DF_PYTHON=python3.11 bash scripts/setup.sh"
stamp="$VENV/.df_planner_deps"
want="$(cat onnx/pyproject.toml onnx/constraints.txt | sha256sum | cut -d' ' -f1)"
# Reinstall when the dependencies or their pins (onnx/constraints.txt) changed, or when df_train
# in the venv is another checkout's (the venv is shared by every clone on this machine, CI's included).
here="$(pwd)/onnx/df_train"
installed="$(cd / && "$VENV/bin/python" -c "import df_train, torch, onnxruntime, os; print(os.path.dirname(df_train.__file__))" 2>/dev/null || true)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ "$installed" != "$here" ]; then
  echo "setup: installing df_train and its dependencies into $VENV (first time: several minutes)"
  # Quiet unless it fails: setuptools warns at length while building the editable install.
  if ! "$VENV/bin/pip" install -q -c onnx/constraints.txt -e "onnx[test]" > "$VENV/.pip-install.log" 2>&1; then
    cat "$VENV/.pip-install.log" >&2
    echo "setup: pip install failed (log: $VENV/.pip-install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

lib="$("$VENV/bin/python" - <<'PY'
import glob, os, onnxruntime
caps = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(caps, "libonnxruntime.so*")))
print(libs[-1] if libs else "")
PY
)"
if [ -z "$lib" ]; then
  echo "setup: the onnxruntime wheel in $VENV has no libonnxruntime.so" >&2
  exit 1
fi
mkdir -p .cargo
cat > .cargo/config.toml <<TOML
# Written by scripts/setup.sh for this machine; not committed.
[env]
ORT_DYLIB_PATH = "$lib"
DF_VENV = "$VENV"
TOML
for component in clippy rustfmt; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
echo "setup: ok (venv $VENV, ORT_DYLIB_PATH=$lib; df-train is $VENV/bin/df-train)"
