#!/usr/bin/env bash
# The pre-registered fixed-size MCG test on Medium (docs/maze2d.md, "A fixed-size test"):
#   bash scripts/mcg_fixed_test.sh
# Runs every chunk of env and planner seeds 110-349 (10 per chunk, df_mcg and no_mcg) that has no
# result yet in docs/results/mcg_fixed_test/, with the binary, config and evaluator (df_train) of
# commit 2676c56, so that the test does not change under it while it runs across sessions. A
# chunk's JSON lands there only once the chunk is complete; commit it, since nothing under runs/
# outlives a fresh machine. When all 24 are in, merges them into
# docs/results/mcg_fixed_test/seeds_110_349.json, the judged test (judged on 2026-12-06; the
# pooled figure with seeds 20-109 was computed from the two summaries, docs/maze2d.md).
# Each chunk's printed summary goes to runs/mcg_fixed_test/seeds_N.log, unread until the test is
# judged; its errors to seeds_N.err, which can be read.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DF_VENV:-$HOME/.cache/df_planner/venv}"
frozen=2676c56
tree="/tmp/df_$frozen"
results=docs/results/mcg_fixed_test
logs=runs/mcg_fixed_test
mkdir -p "$results" "$logs"
exec 9> "$logs/lock"
flock -n 9 || { echo "mcg_fixed_test: another run holds $logs/lock" >&2; exit 1; }
git worktree prune
[ -d "$tree" ] || git worktree add "$tree" "$frozen"
if [ "$(git -C "$tree" rev-parse HEAD)" != "$(git rev-parse "$frozen^{commit}")" ] || ! git -C "$tree" diff --quiet; then
  echo "mcg_fixed_test: $tree is not a clean checkout of $frozen; remove it (git worktree remove --force $tree)" >&2
  exit 1
fi
(cd "$tree" && cargo build --release --quiet)
# The evaluator of the same commit, ahead of the venv's editable df_train.
df_train() { PYTHONPATH="$tree/onnx" "$VENV/bin/python" -m df_train.cli "$@"; }
# Write $2 from $1 whole or not at all.
land() { cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }
judged=$(seq 110 10 340)
# Run each chunk, starting at these seeds, that has no JSON in $results yet.
run_chunks() {
  for seed in "$@"; do
    out="$results/seeds_$seed.json"
    [ -f "$out" ] && continue
    if ! df_train eval maze2d --maze medium --episodes 10 --seed "$seed" --workers 2 \
        --configs df_mcg,no_mcg --planner "$tree/target/release/df_planner" \
        --config "$tree/config/maze2d_medium_wide_episode.yaml" --out "$logs/seeds_$seed.json" \
        > "$logs/seeds_$seed.log" 2> "$logs/seeds_$seed.err"; then
      echo "mcg_fixed_test: chunk $seed failed; see $logs/seeds_$seed.err" >&2
      exit 1
    fi
    land "$logs/seeds_$seed.json" "$out"
  done
}
# Merge the chunks starting at seeds $2... into $results/$1, its printed table beside it (.md).
merge() {
  local name=$1
  shift
  df_train eval maze2d --merge $(for s in "$@"; do echo "$results/seeds_$s.json"; done) \
    --out "$logs/$name" > "$logs/merge_$name.log" 2> "$logs/merge_$name.err"
  land "$logs/$name" "$results/$name"
  land "$logs/merge_$name.log" "$results/${name%.json}.md"
}
run_chunks $judged
merge seeds_110_349.json $judged
