#!/usr/bin/env bash
# The README's test command: set up (or verify) the environment, then run the whole suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -m "not slow"`; given test paths
# (`bash tools/run_tests.sh tests/test_layers`), only those run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
bash tools/setup_env.sh || { echo "environment set-up failed" >&2; exit 1; }
VENV="${MMATTN_VENV:-$ROOT/.venv}"
targets=(tests)
for arg in "$@"; do
  case "$arg" in -*) ;; *) [ -e "${arg%%::*}" ] && targets=() ;; esac
done
# --timeout: a hung test fails on its own instead of eating the whole CI budget
"$VENV/bin/python" -m pytest "${targets[@]}" -p no:cacheprovider -ra --timeout=1800 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
