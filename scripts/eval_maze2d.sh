#!/usr/bin/env bash
# Closed-loop Maze2D results for the README: bash scripts/eval_maze2d.sh [episodes] [workers]
# Needs the exported models (scripts/train_maze2d.sh) and writes runs/eval/<maze>{,_multigoal}.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
episodes="${1:-100}"; workers="${2:-2}"
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
cargo build --release --quiet
for maze in umaze medium large; do
  "$VENV/bin/df-train" eval maze2d --maze "$maze" --episodes "$episodes" --workers "$workers" \
    --planner target/release/df_planner --config "config/maze2d_$maze.yaml" --out "runs/eval/$maze.json"
  "$VENV/bin/df-train" eval maze2d --maze "$maze" --episodes "$episodes" --workers "$workers" --multi-goal \
    --configs df_mcg,no_mcg --planner target/release/df_planner --config "config/maze2d_$maze.yaml" \
    --out "runs/eval/${maze}_multigoal.json"
done
# Medium with the long-horizon model (VARIANT=_long bash scripts/train_maze2d.sh medium --tokens 32 --threads 2).
"$VENV/bin/df-train" eval maze2d --maze medium --episodes "$episodes" --workers "$workers" --configs df_mcg,no_mcg \
  --planner target/release/df_planner --config config/maze2d_medium_long.yaml --out runs/eval/medium_long.json
# Medium with the whole-episode model (VARIANT=_episode bash scripts/train_maze2d.sh medium --tokens 61 --steps 20000 --threads 2);
# its df_mcg replans take ~1.2 s here, so 100 episodes take about 1.3 h.
"$VENV/bin/df-train" eval maze2d --maze medium --episodes "$episodes" --workers "$workers" --configs df_mcg,no_mcg \
  --planner target/release/df_planner --config config/maze2d_medium_episode.yaml --out runs/eval/medium_episode.json
# Medium with the wide model (width 256, guidance scale 10:
# VARIANT=_wide bash scripts/train_maze2d.sh medium --width 256 --threads 2 --steps 32000).
"$VENV/bin/df-train" eval maze2d --maze medium --episodes "$episodes" --workers "$workers" --configs df_mcg,no_mcg \
  --planner target/release/df_planner --config config/maze2d_medium_wide.yaml --out runs/eval/medium_wide.json
cat runs/eval/*.md
