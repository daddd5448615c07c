#!/usr/bin/env bash
# Reproduces the shipped model onnx/models/pointmass.onnx and its golden vectors:
# dataset (seeded) -> training (resumable: rerun after an interruption) -> export + goldens.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
RUN="${RUN:-runs/pointmass}"
"$VENV/bin/df-train" datagen pointmass --episodes 400 --length 200 --seed 0 --out "$RUN/pointmass.npz"
"$VENV/bin/df-train" train --data "$RUN/pointmass.npz" --out "$RUN" --observation-dim 4 --action-dim 2 \
  --frame-stack 4 --tokens 8 --width 64 --depth 2 --heads 4 --steps 8000 --batch 64 --seed 0 --threads 2 "$@"
"$VENV/bin/df-train" export --checkpoint "$RUN/checkpoint.pt" --out onnx/models/pointmass.onnx --golden onnx/golden/pointmass
