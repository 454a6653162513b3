#!/usr/bin/env bash
# run_fuzz.sh TARGET SEED_DIR WORK_DIR SECONDS [RANDOM_SEED]: fuzz TARGET for SECONDS over a fresh
# copy of the committed seeds (new inputs go to WORK_DIR/corpus, crashes to WORK_DIR/). Fails on any
# finding. RANDOM_SEED is libFuzzer's -seed (default 0: a random one; ctest passes ASL_FUZZ_SEED).
set -euo pipefail
target=$1 seeds=$2 work=$3 seconds=$4 random_seed=${5:-0}
rm -rf "$work"; mkdir -p "$work/corpus"
cp "$seeds"/* "$work/corpus/" 2>/dev/null || true
cd "$work"
exec "$target" -seed="$random_seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="$work/" corpus/
