#!/usr/bin/env bash
# Which CPython versions onnx/constraints.txt installs on (Linux x86_64), checked without
# installing: pip resolves df_train's direct dependencies under the pins for each version, from
# PyPI's wheel metadata (about a minute per version; needs PyPI). Run it after changing a pin.
#   bash scripts/check_pins.sh [VERSION ...]    (default: the supported 3.11 3.12 3.13; exits 1 if one fails)
# pip checks wheel tags and Requires-Python for the target version but evaluates environment
# markers for the interpreter running it, so a dependency that only some versions need is
# judged as on this one.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
pip="$VENV/bin/pip"
[ -x "$pip" ] || { echo "check_pins: no pip at $pip; run scripts/setup.sh first" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The direct dependencies are the pins under the "Direct dependencies" heading.
sed -n '/^# Direct dependencies/,/^$/p' onnx/constraints.txt | grep '==' | cut -d= -f1 > "$work/direct.txt"
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 40); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.11 3.12 3.13)
failed=0
for v in "${versions[@]}"; do
  if "$pip" install --dry-run --ignore-installed --python-version "$v" --only-binary=:all: \
      "${platforms[@]}" --target "$work/target" -r "$work/direct.txt" -c onnx/constraints.txt \
      > "$work/log" 2>&1; then
    echo "Python $v: every pin has a wheel"
  else
    # pip names the pin that has no wheel for this version after "conflict is caused by".
    echo "Python $v: does not install:"
    # Anything else (no network, an old pip): the end of pip's log.
    { grep -A3 -E 'conflict is caused by|No matching distribution' "$work/log" || tail -n 5 "$work/log"; } |
      grep -v '^--$' | sed 's/^/  /'
    failed=1
  fi
done
exit $failed
