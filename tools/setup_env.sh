#!/usr/bin/env bash
# Creates .venv in the checkout with the pinned OpenMMLab stack and mmattn installed editable.
# Idempotent: when the stamp in .venv matches this file's pins and the imports work, it exits in
# seconds. The mmcv wheel (compiled ops, ~10 min on 2 cores) is cached outside the checkout.
#
#   bash tools/setup_env.sh          # set up or verify
#   MMATTN_VENV=/path bash tools/setup_env.sh   # another environment location
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMATTN_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"

TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
MMENGINE_VERSION=0.10.7
MMCV_VERSION=2.1.0
MMSEG_VERSION=1.2.2
MMPOSE_VERSION=1.3.2
MMDET_VERSION=3.2.0

# Pins of the stack; any change here invalidates the stamp and re-runs the install.
STACK_PINS="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION mmengine==$MMENGINE_VERSION \
mmcv==$MMCV_VERSION mmsegmentation==$MMSEG_VERSION mmpose==$MMPOSE_VERSION mmdet==$MMDET_VERSION"
# Runtime dependencies that mmseg/mmpose need but do not declare (or declare unbuildably);
# numpy < 2.4 because cityscapesscripts (mmseg's CityscapesMetric) still calls np.in1d.
EXTRA_DEPS="numpy>=2,<2.4 opencv-python ftfy regex json-tricks munkres matplotlib scipy six tqdm \
shapely terminaltables pycocotools pillow prettytable rich cityscapesscripts"
TEST_DEPS="pytest pytest-timeout hypothesis"

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The machine's pip configuration adds a local folder with a CPU-only torch wheel that breaks the
# index's torchvision ("operator torchvision::nms does not exist"); install from the index only.
pipi() { PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$VENV/bin/python" -m pip "$@"; }

has_cuda() { command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if has_cuda; then OPS_FLAVOUR=cuda; else OPS_FLAVOUR=cpu; fi

STAMP_CONTENT="$(printf '%s\n' "$STACK_PINS" "$EXTRA_DEPS" "$TEST_DEPS" "$OPS_FLAVOUR" | sha1sum | cut -c1-16)"
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

say "installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION from the package index (first time: a few GB, several minutes)"
pipi install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

say "installing mmengine and runtime dependencies"
# shellcheck disable=SC2086
pipi install -q "mmengine==$MMENGINE_VERSION" $EXTRA_DEPS $TEST_DEPS

# mmcv ships only as a source distribution; build its wheel with ops once and cache it, keyed by
# everything the compiled extension depends on.
CACHE_DIR="${MMATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmattn}/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$OPS_FLAVOUR"
MMCV_WHEEL="$(ls "$CACHE_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$MMCV_WHEEL" ]; then
  say "building mmcv $MMCV_VERSION with $OPS_FLAVOUR ops (first time only: ~10 min on 2 cores), cache: $CACHE_DIR"
  mkdir -p "$CACHE_DIR"
  BUILD_TMP="$(mktemp -d)"
  if [ "$OPS_FLAVOUR" = cuda ]; then export FORCE_CUDA=1; else export FORCE_CUDA=0; fi
  # --no-build-isolation: in an isolated build torch is missing and mmcv silently skips its ops.
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pipi wheel -q --no-build-isolation --no-deps \
    "mmcv==$MMCV_VERSION" -w "$BUILD_TMP"
  mv "$BUILD_TMP"/mmcv-*.whl "$CACHE_DIR"/
  rm -rf "$BUILD_TMP"
  MMCV_WHEEL="$(ls "$CACHE_DIR"/mmcv-*.whl | head -n1)"
else
  say "reusing cached mmcv wheel $MMCV_WHEEL"
fi
pipi install -q --no-deps --force-reinstall "$MMCV_WHEEL"
pipi install -q addict yapf packaging

say "installing mmsegmentation, mmdet, mmpose"
pipi install -q --no-deps "mmsegmentation==$MMSEG_VERSION" "mmdet==$MMDET_VERSION"
# mmpose's chumpy requirement does not build and is never imported: install without deps.
pipi install -q --no-deps "mmpose==$MMPOSE_VERSION"
# The xtcocotools wheel is compiled against numpy 1 and fails under numpy 2: build from source.
pipi install -q cython
# (its setup.py imports numpy and cythonizes, so it builds in this environment, not isolated)
pipi install -q --no-build-isolation --no-binary xtcocotools xtcocotools
# mmdet's own runtime deps (no-deps above keeps it from touching mmcv/torch).
pipi install -q terminaltables pycocotools shapely scipy

say "installing mmattn (editable)"
pipi install -q --no-deps --no-build-isolation -e "$ROOT"

say "verifying imports"
verify
echo "$STAMP_CONTENT" > "$STAMP"
say "environment ready: $VENV ($(du -sh "$VENV" | cut -f1), $OPS_FLAVOUR ops)"
