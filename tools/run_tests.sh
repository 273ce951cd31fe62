#!/usr/bin/env bash
# The README's test command. Sets up (or verifies) both environments, then runs
#   1. the whole suite in the reference environment (.venv, requirements/reference.txt), and
#   2. the compatibility subset in the oldest supported one (.venv-oldest, torch 2.1,
#      requirements/oldest.txt): layers, plugins, neck, registry, config builds, installation,
#      the benchmark's measurements, and one short training of each demo.
#
#   bash tools/run_tests.sh                      # both, as CI runs it
#   bash tools/run_tests.sh -m "not slow"        # reference only, extra pytest arguments
#   bash tools/run_tests.sh tests/test_layers    # reference only, those tests
#   MMATTN_TEST_STACKS=oldest bash tools/run_tests.sh   # the oldest-stack subset only
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

if [ "$#" -gt 0 ]; then STACKS="${MMATTN_TEST_STACKS:-reference}"; else STACKS="${MMATTN_TEST_STACKS:-reference oldest}"; fi
OLDEST_SUBSET=(tests/test_layers tests/test_models tests/test_install
  tests/test_foundation/test_registry_scopes.py tests/test_configs
  tests/test_tools/test_benchmark.py)

status=0
run_pytest() {  # venv, pytest arguments...
  local venv=$1
  shift
  # --timeout: a hung test fails on its own instead of eating the whole CI budget
  "$venv/bin/python" -m pytest -p no:cacheprovider -ra --timeout=1800 "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    rc=1
  fi
  [ "$rc" -eq 0 ] || status=1
}

for stack in $STACKS; do
  start=$SECONDS
  bash tools/setup_env.sh "$stack" || { echo "environment set-up ($stack) failed" >&2; exit 1; }
  echo "== [$stack] set-up: $((SECONDS - start)) s"
  start=$SECONDS
  if [ "$stack" = reference ]; then
    targets=(tests)
    for arg in "$@"; do
      case "$arg" in -*) ;; *) [ -e "${arg%%::*}" ] && targets=() ;; esac
    done
    run_pytest "${MMATTN_VENV:-$ROOT/.venv}" "${targets[@]}" "$@"
  else
    # the short demo trainings are marked slow; the rest of the subset is fast
    run_pytest "$ROOT/.venv-oldest" "${OLDEST_SUBSET[@]}" tests/test_reliability/test_demo_short.py \
      -m "not slow or demo_short"
  fi
  echo "== [$stack] tests: $((SECONDS - start)) s"
done
exit "$status"
