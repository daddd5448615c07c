#!/usr/bin/env bash
# The pre-registered fixed-size MCG test on Medium (docs/maze2d.md, "A fixed-size test"):
#   bash scripts/mcg_fixed_test.sh
# Runs every chunk of env and planner seeds 110-349 (10 per chunk, df_mcg and no_mcg) that has no
# result yet in docs/results/mcg_fixed_test/, with the binary and config of commit 2676c56, so that
# the test does not change under it while it runs across sessions. A chunk's JSON is written there
# only when the chunk is complete; commit it, since nothing under runs/ outlives a fresh machine.
# When all 24 are in, merges them into docs/results/mcg_fixed_test/seeds_110_349.json.
# Each chunk's printed summary goes to runs/mcg_fixed_test/, unread until the test is judged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
frozen=2676c56
tree="/tmp/df_$frozen"
results=docs/results/mcg_fixed_test
logs=runs/mcg_fixed_test
mkdir -p "$results" "$logs"
[ -d "$tree" ] || git worktree add "$tree" "$frozen"
(cd "$tree" && cargo build --release --quiet)
for seed in $(seq 110 10 340); do
  out="$results/seeds_$seed.json"
  [ -f "$out" ] && continue
  "$VENV/bin/df-train" eval maze2d --maze medium --episodes 10 --seed "$seed" --workers 2 \
    --configs df_mcg,no_mcg --planner "$tree/target/release/df_planner" \
    --config "$tree/config/maze2d_medium_wide_episode.yaml" --out "$logs/seeds_$seed.json" \
    > "$logs/seeds_$seed.log" 2>&1
  cp "$logs/seeds_$seed.json" "$out"
done
"$VENV/bin/df-train" eval maze2d --merge $(for s in $(seq 110 10 340); do echo "$results/seeds_$s.json"; done) \
  --out "$logs/seeds_110_349.json" > "$logs/merge.log" 2>&1
cp "$logs/seeds_110_349.json" "$results/seeds_110_349.json"
