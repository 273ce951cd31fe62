#!/usr/bin/env bash
# The README's main job: set up, generate tiny data, train with tools/train.py, evaluate with
# tools/test.py, print the metric.
#   bash tools/run_demo.sh          # segmentation: HRNet-OCR + PSA_p on tiny Cityscapes
#   bash tools/run_demo.sh pose     # pose: UDP HRNet + PSA_p on tiny COCO keypoints
#   bash tools/run_demo.sh all      # both
# Work dirs: work_dirs/demo_seg, work_dirs/demo_pose (checkpoints, logs, metrics).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TASK="${1:-seg}"
case "$TASK" in seg|pose|all) ;; *) echo "usage: $0 [seg|pose|all]" >&2; exit 2 ;; esac

bash tools/setup_env.sh
PY="${MMATTN_VENV:-$ROOT/.venv}/bin/python"
DATA="${MMATTN_DEMO_DATA:-data/tiny}"
SEG_CFG=configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py
POSE_CFG=configs/demo/td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py
# Thresholds the demo must clear; a model predicting one class everywhere scores mIoU ~3,
# and a pose model that learned nothing scores AP 0.
SEG_MIN_MIOU="${SEG_MIN_MIOU:-40}"
POSE_MIN_AP="${POSE_MIN_AP:-0.2}"

run_one() {  # name config dataset num_train num_val metric threshold extra-cfg-options...
  local name=$1 cfg=$2 dataset=$3 ntrain=$4 nval=$5 metric=$6 threshold=$7
  shift 7
  local work="work_dirs/demo_$name"
  echo "== [$name] generating tiny $dataset data in $DATA/$dataset ($ntrain train, $nval val)"
  "$PY" tools/misc/make_tiny_data.py "$dataset" --out "$DATA" --num-train "$ntrain" --num-val "$nval"
  echo "== [$name] training $cfg (work dir $work)"
  local start=$SECONDS
  "$PY" tools/train.py "$cfg" --work-dir "$work" "$@"
  local ckpt
  ckpt="$(cat "$work/last_checkpoint")"
  echo "== [$name] evaluating $ckpt with tools/test.py"
  "$PY" tools/test.py "$cfg" "$ckpt" --work-dir "$work/test" "$@"
  "$PY" - "$work/test/metrics.json" "$metric" "$threshold" "$name" "$((SECONDS - start))" <<'PY'
import json, sys
path, metric, threshold, name, seconds = sys.argv[1:]
metrics = json.load(open(path))
value = float(metrics[metric])
ok = value >= float(threshold)
print(f'== [{name}] {metric} = {value:.4g} (must be >= {threshold}): '
      f'{"PASS" if ok else "FAIL"}, train+test {int(seconds) // 60} min {int(seconds) % 60} s')
sys.exit(0 if ok else 1)
PY
}

[ "$TASK" = pose ] || run_one seg "$SEG_CFG" cityscapes 32 8 mIoU "$SEG_MIN_MIOU" \
  --cfg-options "train_dataloader.dataset.data_root=$DATA/cityscapes/" \
  "val_dataloader.dataset.data_root=$DATA/cityscapes/" "test_dataloader.dataset.data_root=$DATA/cityscapes/"
[ "$TASK" = seg ] || run_one pose "$POSE_CFG" coco 64 16 coco/AP "$POSE_MIN_AP" \
  --cfg-options "train_dataloader.dataset.data_root=$DATA/coco/" \
  "val_dataloader.dataset.data_root=$DATA/coco/" "test_dataloader.dataset.data_root=$DATA/coco/" \
  "val_dataloader.dataset.bbox_file=$DATA/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json" \
  "test_dataloader.dataset.bbox_file=$DATA/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json" \
  "val_evaluator.ann_file=$DATA/coco/annotations/person_keypoints_val2017.json" \
  "test_evaluator.ann_file=$DATA/coco/annotations/person_keypoints_val2017.json"
