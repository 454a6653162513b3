#!/usr/bin/env bash
# run_fuzz.sh TARGET SEED_DIR WORK_DIR SECONDS: fuzz TARGET for SECONDS over a fresh copy of the
# committed seeds (new inputs go to WORK_DIR/corpus, crashes to WORK_DIR/). Fails on any finding.
set -euo pipefail
target=$1 seeds=$2 work=$3 seconds=$4
rm -rf "$work"; mkdir -p "$work/corpus"
cp "$seeds"/* "$work/corpus/" 2>/dev/null || true
cd "$work"
exec "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="$work/" corpus/
