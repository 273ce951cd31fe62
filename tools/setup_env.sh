#!/usr/bin/env bash
# Creates a virtual environment in the checkout with an exact OpenMMLab stack and mmattn
# installed editable. Two stacks, each pinned in one requirements file:
#
#   bash tools/setup_env.sh            # reference: requirements/reference.txt -> .venv
#   bash tools/setup_env.sh oldest     # oldest supported: requirements/oldest.txt -> .venv-oldest
#   MMATTN_VENV=/path bash tools/setup_env.sh [reference|oldest]   # another location
#
# Idempotent: when the stamp in the venv matches the pins and the imports work, it exits in
# seconds. mmcv is built with its compiled ops once per (mmcv, torch, python, cpu|cuda) and the
# wheel cached outside the checkout (~10 min on 2 cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${1:-reference}"
case "$STACK" in
  reference) DEFAULT_VENV="$ROOT/.venv" ;;
  oldest) DEFAULT_VENV="$ROOT/.venv-oldest" ;;
  *) echo "usage: $0 [reference|oldest]" >&2; exit 2 ;;
esac
VENV="${MMATTN_VENV:-$DEFAULT_VENV}"
PINS_FILE="$ROOT/requirements/$STACK.txt"
PY_BOOT="${PYTHON:-python3}"

# "name==version" (or a range) for one package of the pins file
pin() { grep -E "^$1([=<>!~ ]|$)" "$PINS_FILE" | head -n1 | sed 's/#.*//; s/[[:space:]]*$//'; }
version_of() { pin "$1" | sed -n 's/^[^=]*==//p'; }

TORCH_PIN="$(pin torch)"; TORCHVISION_PIN="$(pin torchvision)"; NUMPY_PIN="$(pin numpy)"
MMENGINE_PIN="$(pin mmengine)"; MMSEG_PIN="$(pin mmsegmentation)"
MMPOSE_PIN="$(pin mmpose)"; MMDET_PIN="$(pin mmdet)"
TORCH_VERSION="$(version_of torch)"; MMCV_VERSION="$(version_of mmcv)"

# Runtime dependencies that mmseg/mmpose/mmdet need but do not declare (or declare unbuildably).
EXTRA_DEPS="opencv-python ftfy regex json-tricks munkres matplotlib scipy six tqdm shapely \
terminaltables pycocotools pillow prettytable rich cityscapesscripts addict yapf packaging"
TEST_DEPS="$(grep -v '^#' "$ROOT/requirements/tests.txt" | tr '\n' ' ')"
# the implementations the benchmark compares against (timm), never imported by mmattn itself
BENCH_DEPS="$(grep -v '^#' "$ROOT/requirements/benchmark.txt" | tr '\n' ' ')"

say() { printf '[setup %s %s] %s\n' "$STACK" "$(date +%H:%M:%S)" "$*"; }

# The machine's pip configuration may add a local folder with a CPU-only torch wheel that breaks
# the index's torchvision ("operator torchvision::nms does not exist"), and a cap on torch;
# install from the package index only.
pipi() { PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$VENV/bin/python" -m pip "$@"; }

has_cuda() { command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if has_cuda; then OPS_FLAVOUR=cuda; else OPS_FLAVOUR=cpu; fi

STAMP_CONTENT="$( (cat "$PINS_FILE"; echo "$EXTRA_DEPS $TEST_DEPS $BENCH_DEPS $OPS_FLAVOUR") | sha1sum | cut -c1-16)"
STAMP="$VENV/.mmattn-stack"

verify() {
  "$VENV/bin/python" - <<'PY'
import mmattn, mmseg.models, mmpose.models, mmpose.visualization, mmdet.models  # noqa: F401
from mmcv.ops import ModulatedDeformConv2dPack  # noqa: F401
import mmcv._ext  # noqa: F401  (compiled ops present)
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ] && verify 2>/dev/null; then
  say "environment $VENV is up to date ($OPS_FLAVOUR ops)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PYTAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"

say "installing build tools (setuptools<81: mmcv's setup.py imports pkg_resources)"
pipi install -q -U pip "setuptools<81" wheel ninja

say "installing $TORCH_PIN + $TORCHVISION_PIN from the package index (first time: a few GB)"
pipi install -q "$TORCH_PIN" "$TORCHVISION_PIN" "$NUMPY_PIN"

say "installing $MMENGINE_PIN and runtime dependencies"
# shellcheck disable=SC2086
# (torch pins repeated so that no dependency can move torch)
pipi install -q "$MMENGINE_PIN" "$NUMPY_PIN" "$TORCH_PIN" "$TORCHVISION_PIN" $EXTRA_DEPS \
  $TEST_DEPS $BENCH_DEPS

# mmcv ships only as a source distribution; build its wheel with ops once and cache it, keyed by
# everything the compiled extension depends on.
CACHE_DIR="${MMATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmattn}/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$OPS_FLAVOUR"
MMCV_WHEEL="$(ls "$CACHE_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$MMCV_WHEEL" ]; then
  say "building mmcv $MMCV_VERSION with $OPS_FLAVOUR ops against torch $TORCH_VERSION (first time only: ~10 min on 2 cores), cache: $CACHE_DIR"
  mkdir -p "$CACHE_DIR"
  BUILD_TMP="$(mktemp -d)"
  if [ "$OPS_FLAVOUR" = cuda ]; then export FORCE_CUDA=1; else export FORCE_CUDA=0; fi
  # --no-build-isolation: in an isolated build torch is missing and mmcv silently skips its ops.
  # --no-cache-dir: pip's wheel cache would hand back a build made against another torch (same
  # file name), whose mmcv._ext then fails with undefined symbols.
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pipi wheel -q --no-cache-dir \
    --no-build-isolation --no-deps "mmcv==$MMCV_VERSION" -w "$BUILD_TMP"
  mv "$BUILD_TMP"/mmcv-*.whl "$CACHE_DIR"/
  rm -rf "$BUILD_TMP"
  MMCV_WHEEL="$(ls "$CACHE_DIR"/mmcv-*.whl | head -n1)"
else
  say "reusing cached mmcv wheel $MMCV_WHEEL"
fi
pipi install -q --no-deps --force-reinstall "$MMCV_WHEEL"

say "installing $MMSEG_PIN, $MMDET_PIN, $MMPOSE_PIN"
pipi install -q --no-deps "$MMSEG_PIN" "$MMDET_PIN"
# mmpose's chumpy requirement does not build and is never imported: install without deps.
pipi install -q --no-deps "$MMPOSE_PIN"
# xtcocotools (mmpose's COCO evaluation) is compiled against the numpy of its build: build it
# here, against this environment's numpy (its setup.py imports numpy and cythonizes).
pipi install -q cython
pipi install -q --no-cache-dir --no-build-isolation --no-binary xtcocotools xtcocotools

say "installing mmattn (editable, no dependencies: the stack above is the one under test)"
pipi install -q --no-deps --no-build-isolation -e "$ROOT"

say "verifying imports"
verify
echo "$STAMP_CONTENT" > "$STAMP"
say "environment ready: $VENV ($(du -sh "$VENV" | cut -f1), $OPS_FLAVOUR ops)"
