"""Dataset helpers. ``synthetic`` writes tiny Cityscapes / COCO-keypoints datasets in the real
on-disk formats (numpy + OpenCV only; nothing is registered); ``validation`` checks a dataset
config before training."""
from .synthetic import (COCO_BBOX_FILE, COCO_KEYPOINT_COLORS, COCO_KEYPOINT_NAMES,
                        COCO_SKELETON, CITYSCAPES_LABEL_NAMES, CITYSCAPES_LABELID_TO_TRAINID,
                        CITYSCAPES_TRAINID_TO_LABELID, make_tiny_cityscapes, make_tiny_coco)
from .validation import DatasetError, validate_dataset

__all__ = [
    'make_tiny_cityscapes', 'make_tiny_coco', 'CITYSCAPES_TRAINID_TO_LABELID',
    'CITYSCAPES_LABELID_TO_TRAINID', 'CITYSCAPES_LABEL_NAMES', 'COCO_KEYPOINT_NAMES',
    'COCO_SKELETON', 'COCO_KEYPOINT_COLORS', 'COCO_BBOX_FILE', 'DatasetError', 'validate_dataset'
]
