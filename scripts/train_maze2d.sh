#!/usr/bin/env bash
# Dataset + DF planner for one D4RL maze: bash scripts/train_maze2d.sh umaze|medium|large [extra train flags]
# Resumable: rerun after an interruption and training continues from runs/maze2d/<maze><VARIANT>/checkpoint.pt.
# VARIANT=_name keeps a variant's run and model apart (e.g. VARIANT=_episode ... --tokens 61).
# MODEL=name exports to onnx/models/<name>.onnx instead of maze2d_<maze><VARIANT>.onnx: a run continued
# to more steps (--steps N) then leaves the model exported before it in place.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  umaze|medium|large) maze="$1"; shift ;;
  *) echo "usage: bash scripts/train_maze2d.sh umaze|medium|large [extra df-train train flags]" >&2; exit 2 ;;
esac
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
RUN="runs/maze2d"
name="$maze${VARIANT:-}"
[ -f "$RUN/$maze.npz" ] || "$VENV/bin/df-train" datagen maze2d --maze "$maze" --seed 0 --out "$RUN/$maze.npz"
"$VENV/bin/df-train" train --data "$RUN/$maze.npz" --out "$RUN/$name" --observation-dim 4 --action-dim 2 \
  --frame-stack 10 --tokens 16 --width 128 --depth 4 --heads 4 --steps 40000 --batch 64 --seed 0 \
  --continuous true --checkpoint-every 1000 --snapshot-every 4000 "$@"
"$VENV/bin/df-train" export --checkpoint "$RUN/$name/checkpoint.pt" --out "onnx/models/${MODEL:-maze2d_$name}.onnx"
