#!/usr/bin/env bash
# Every test: formatting, lints, Rust unit/integration tests (parity included), Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# The ROS adapter, type-checked and linted without ROS (r2r's doc-only stubs).
cargo clippy --features ros,r2r/doc-only --all-targets -- -D warnings
# The GPU execution-provider paths compile and lint without a GPU (they are only run on one).
cargo clippy --features cuda,tensorrt --all-targets -- -D warnings
# The API docs build without broken links.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
cargo test
"$VENV/bin/python" -m pytest onnx/tests -q
