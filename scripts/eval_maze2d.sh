#!/usr/bin/env bash
# Closed-loop Maze2D results for the README: bash scripts/eval_maze2d.sh [episodes] [workers]
# Needs the exported models (scripts/train_maze2d.sh) and writes runs/eval/<maze>{,_multigoal}.{json,md,png},
# runs/eval/umaze_reach.*, then runs/eval/medium_{long,episode,wide,wide_episode,wide_episode_pd}.* for the Medium model variants (MCG against no MCG),
# then runs/eval/medium_wide_episode_pd_tempo.* (those plans tracked 1.3 times faster, no MCG),
# then runs/eval/large_episode{,_40k}_pd.* for Large's whole-episode model at 20k and 40k steps, and
# runs/eval/large_wide_episode_cpu_{pd_tempo,next_state,next_state_tempo2}.* for its wide CPU-trained one (no MCG).
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
# U-Maze with the reach-at-any-step reward (the one with which MCG beats no-MCG): every configuration
"$VENV/bin/df-train" eval maze2d --maze umaze --episodes "$episodes" --workers "$workers" \
  --planner target/release/df_planner --config config/maze2d_umaze_reach.yaml --out runs/eval/umaze_reach.json
# The Medium model variants, MCG against no MCG (each trained by scripts/train_maze2d.sh with VARIANT=_name):
#   long     32 tokens (plans 310 steps):  --tokens 32 --threads 2
#   episode  61 tokens (the whole episode): --tokens 61 --steps 20000 --threads 2; its df_mcg replans take
#            ~1.2 s here, so 100 episodes take about 1.3 h
#   wide     width 256, guidance scale 10: --width 256 --steps 32000 --threads 2
#   wide_episode  width 256, 61 tokens, guidance scale 10: --tokens 61 --width 256 --batch 256 --steps 22000
#            --device cuda (a GPU); its df_mcg replans take ~4.4 s here, so 100 episodes take about 5.5 h
#   wide_episode_pd  the same model, its plans tracked by a PD controller, a plan every 50 steps:
#            100 episodes take about 50 min here
for variant in long episode wide wide_episode wide_episode_pd; do
  "$VENV/bin/df-train" eval maze2d --maze medium --episodes "$episodes" --workers "$workers" --configs df_mcg,no_mcg \
    --planner target/release/df_planner --config "config/maze2d_medium_$variant.yaml" --out "runs/eval/medium_$variant.json"
done
# The wide whole-episode model's plans tracked 1.3 times faster than planned (serve.tempo), without MCG,
# against the straight line, on its README row's seeds 1200-: 100 episodes take about 12 min here
"$VENV/bin/df-train" eval maze2d --maze medium --episodes "$episodes" --seed 1200 --workers "$workers" \
  --configs no_mcg,straight_to_goal --planner target/release/df_planner \
  --config config/maze2d_medium_wide_episode_pd_tempo.yaml --out runs/eval/medium_wide_episode_pd_tempo.json
# Large's whole-episode model (VARIANT=_episode, --tokens 81 --steps 20000 --threads 2), tracked by a PD controller,
# without MCG (with it, ~30 min per 100 episodes here; not measured), on the README row's seeds 1000-: 100 episodes take about 10 min here
"$VENV/bin/df-train" eval maze2d --maze large --episodes "$episodes" --seed 1000 --workers "$workers" --configs no_mcg \
  --planner target/release/df_planner --config config/maze2d_large_episode_pd.yaml --out runs/eval/large_episode_pd.json
# the same model trained to 40k steps, on its README row's seeds 1100-
"$VENV/bin/df-train" eval maze2d --maze large --episodes "$episodes" --seed 1100 --workers "$workers" --configs no_mcg \
  --planner target/release/df_planner --config config/maze2d_large_episode_40k_pd.yaml --out runs/eval/large_episode_40k_pd.json
# Large's wide whole-episode model trained on 2 CPU cores (VARIANT=_wide_episode_cpu, --tokens 81 --width 256
# --steps 20000), its plans tracked 1.3 times faster, on its README row's seeds 1400-: 100 episodes take about 33 min here
"$VENV/bin/df-train" eval maze2d --maze large --episodes "$episodes" --seed 1400 --workers "$workers" --configs no_mcg \
  --planner target/release/df_planner --config config/maze2d_large_wide_episode_cpu_pd_tempo.yaml \
  --out runs/eval/large_wide_episode_cpu_pd_tempo.json
# the same, guided in the official code's form (next_state, scale 1000), on the same seeds: about 24 min here
"$VENV/bin/df-train" eval maze2d --maze large --episodes "$episodes" --seed 1400 --workers "$workers" --configs no_mcg \
  --planner target/release/df_planner --config config/maze2d_large_wide_episode_cpu_next_state.yaml \
  --out runs/eval/large_wide_episode_cpu_next_state.json
# the same tracked 2.0 times faster (its README row: 200 episodes from seed 1400): about 30 min per 100 here
"$VENV/bin/df-train" eval maze2d --maze large --episodes "$episodes" --seed 1400 --workers "$workers" --configs no_mcg \
  --planner target/release/df_planner --config config/maze2d_large_wide_episode_cpu_next_state_tempo2.yaml \
  --out runs/eval/large_wide_episode_cpu_next_state_tempo2.json
cat runs/eval/*.md
