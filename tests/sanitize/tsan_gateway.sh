#!/usr/bin/env bash
# tsan_gateway.sh ROOT TSAN_GATEWAY NORMAL_BIN_DIR WORK SUPPRESSIONS: runs the gateway's end-to-end
# suite (tests/gateway/test_gateway.py) with the TSan-built asl-gateway in front of the normal
# build's asl-server. The gateway writes TSan reports to WORK/tsan.<pid>; any report fails the test
# (the suite itself may pass: a report does not stop the gateway, so every test runs).
set -euo pipefail
root=$1 gateway=$2 normal=$3 work=$4 supp=$5
rm -rf "$work"; mkdir -p "$work/bin"
ln -s "$gateway" "$work/bin/asl-gateway"
ln -s "$normal/asl-loadtest" "$work/bin/asl-loadtest"
export ASL_BIN_DIR="$work/bin" ASL_SERVER_BIN="$normal/asl-server"
export ASL_DEFAULT_MODEL=${ASL_DEFAULT_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# exitcode=0: the gateway's exit status stays its own (the suite checks drains and codes).
export TSAN_OPTIONS="suppressions=$supp:log_path=$work/tsan:exitcode=0:second_deadlock_stack=1:history_size=4"
rc=0
"$root/.venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/gateway/test_gateway.py" || rc=$?
reports=("$work"/tsan.*)
if [[ -e ${reports[0]} ]]; then
  echo "tsan_gateway: ThreadSanitizer reports from asl-gateway:" >&2
  cat "${reports[@]}" >&2
  exit 1
fi
echo "tsan_gateway: no ThreadSanitizer report from asl-gateway"
exit $rc
