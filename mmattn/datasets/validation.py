"""Check a dataset config before training, so that data mistakes fail at once with a message
that names the file or setting, not at iteration N inside a data pipeline.

    from mmattn.datasets import validate_dataset
    validate_dataset(cfg.train_dataloader.dataset, 'mmseg')   # raises DatasetError

``tools/train.py`` runs it on the train and val datasets (``--no-data-check`` turns it off) and
``tools/test.py`` on the test dataset. What is checked:

* the paths the config names: ``data_root``, ``ann_file``, ``data_prefix`` folders,
  ``bbox_file`` (pose, detected boxes);
* that the dataset builds through the registry of the config's scope, and is not empty;
* for a COCO-style keypoint file: images and annotations present, annotations carrying
  ``keypoints`` of the dataset's keypoint count (``3 * K`` numbers), at least one with a
  labelled keypoint;
* that every image (and, for segmentation, every label map) a sample of up to
  ``max_files`` entries names exists; for the first ``max_reads`` entries that the image decodes
  and, for segmentation, that the label map is single-channel with values in
  ``[0, num_classes)`` or ``ignore_index`` (after ``reduce_zero_label`` / ``label_map``, as
  mmseg's ``LoadAnnotations`` applies them).
"""
import copy
import json
import os.path as osp
from typing import List, Optional

import numpy as np

__all__ = ['DatasetError', 'validate_dataset']

_WRAPPERS_ONE = ('RepeatDataset', 'ClassBalancedDataset', 'MultiImageMixDataset')
_WRAPPERS_MANY = ('ConcatDataset', 'CombinedDataset')


class DatasetError(ValueError):
    """A dataset config that cannot be trained on; the message says what and where."""


def _join(root: Optional[str], path: str) -> str:
    if not path or osp.isabs(path) or '://' in path or not root:
        return path
    return osp.join(root, path)


def _name(cfg) -> str:
    return str(cfg.get('type', 'dataset'))


def _check_paths(cfg) -> None:
    name = _name(cfg)
    root = cfg.get('data_root')
    if root and '://' not in str(root) and not osp.isdir(root):
        raise DatasetError(f'{name}: data_root {root} does not exist (or is not a folder)')
    ann_file = cfg.get('ann_file')
    if ann_file:
        full = _join(root, ann_file)
        if '://' not in full and not osp.isfile(full):
            raise DatasetError(f'{name}: ann_file {full} does not exist'
                               f' (ann_file={ann_file!r}, data_root={root!r})')
    prefix = cfg.get('data_prefix') or {}
    for key, value in dict(prefix).items():
        if not value or not isinstance(value, str):
            continue
        full = _join(root, value)
        if '://' not in full and not osp.isdir(full):
            raise DatasetError(f"{name}: data_prefix {key}='{value}' -> {full} does not exist "
                               f'(data_root={root!r})')
    bbox_file = cfg.get('bbox_file')
    # mmpose opens bbox_file as given (unlike ann_file, it is not joined with data_root)
    if bbox_file and '://' not in bbox_file and not osp.isfile(bbox_file):
        raise DatasetError(f'{name}: bbox_file {bbox_file} does not exist (it is read as given, '
                           f'not relative to data_root={root!r})')


def _coco_keypoint_problem(ann_path: str, num_keypoints: Optional[int]) -> Optional[str]:
    """Why a COCO-style keypoint annotation file gives no usable samples (None: no idea)."""
    try:
        with open(ann_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        return f'{ann_path} is not a readable JSON file ({type(error).__name__}: {error})'
    if not isinstance(data, dict):
        return f'{ann_path} is not a COCO annotation file (top level is a {type(data).__name__})'
    missing = [k for k in ('images', 'annotations', 'categories') if k not in data]
    if missing:
        return f'{ann_path} is not a COCO annotation file: no {", ".join(missing)}'
    if not data['images']:
        return f'{ann_path} lists no images'
    anns = data['annotations']
    if not anns:
        return f'{ann_path} has no annotations'
    with_kp = [a for a in anns if isinstance(a, dict) and a.get('keypoints')]
    if not with_kp:
        cats = [c.get('name') for c in data['categories'] if isinstance(c, dict)]
        has_names = any(isinstance(c, dict) and c.get('keypoints') for c in data['categories'])
        return (f'{ann_path} has no keypoints: none of its {len(anns)} annotations has a '
                f"'keypoints' field (categories {cats}"
                f"{'' if has_names else ', none with keypoint names'}); is it a detection or "
                f'captions file instead of person_keypoints_*.json?')
    if num_keypoints:
        bad = [a for a in with_kp if len(a['keypoints']) != 3 * num_keypoints]
        if bad:
            return (f'{ann_path}: annotation id {bad[0].get("id")} has '
                    f'{len(bad[0]["keypoints"])} keypoint numbers, the dataset expects '
                    f'{3 * num_keypoints} ({num_keypoints} keypoints x (x, y, v)); '
                    f'{len(bad)} of {len(with_kp)} annotations differ')
    if not any(max(a['keypoints'][2::3] or [0]) > 0 for a in with_kp):
        return (f'{ann_path}: no annotation has a labelled keypoint (every visibility flag is '
                f'0), so there is nothing to train on')
    return None


def _build(cfg, task: str):
    from mmengine.registry import DATASETS, DefaultScope
    cfg = copy.deepcopy(cfg)
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    cfg['serialize_data'] = False  # no pickled copy; an empty list must not crash numpy
    cfg.pop('lazy_init', None)
    with DefaultScope.overwrite_default_scope(task):
        return DATASETS.build(cfg)


def _sample(n: int, k: int) -> List[int]:
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def _read_unchanged(path: str):
    import cv2
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:  # some formats OpenCV does not read: try Pillow
        try:
            from PIL import Image
            with Image.open(path) as image:
                array = np.asarray(image)
        except Exception:  # noqa: BLE001
            return None
    return array


def _check_seg_labels(ds, name: str, path: str, info: dict) -> None:
    label = _read_unchanged(path)
    if label is None:
        raise DatasetError(f'{name}: label map {path} cannot be decoded as an image')
    label = np.squeeze(label)
    if label.ndim != 2:
        raise DatasetError(f'{name}: label map {path} has shape {label.shape}; expected a '
                           f'single-channel map of class indices (a colour-coded map?)')
    values = np.unique(label).astype(np.int64)
    mapped = values.copy()
    if info.get('reduce_zero_label', getattr(ds, 'reduce_zero_label', False)):
        mapped = np.where(mapped == 0, 255, mapped - 1)
        mapped[mapped == 254] = 255
    label_map = info.get('label_map') or getattr(ds, 'label_map', None)
    if label_map:
        mapped = np.array([label_map.get(int(v), int(v)) for v in mapped], np.int64)
    classes = ds.metainfo.get('classes') or ()
    num_classes = len(classes)
    ignore = getattr(ds, 'ignore_index', 255)
    bad = sorted({int(v) for v, m in zip(values, mapped)
                  if not (0 <= m < num_classes or m == ignore)})
    if bad:
        raise DatasetError(
            f'{name}: label map {path} has values {bad[:10]}{" ..." if len(bad) > 10 else ""} '
            f'outside the {num_classes} classes (0..{num_classes - 1}) and ignore_index '
            f'{ignore}' + (' (after reduce_zero_label/label_map)' if len(mapped) and
                           (mapped != values).any() else '') +
            f'; for Cityscapes use the *_labelTrainIds.png maps, not *_labelIds.png')


def _check_pose_sample(ds, name: str, info: dict) -> None:
    k = ds.metainfo.get('num_keypoints')
    keypoints = info.get('keypoints')
    if keypoints is None:
        raise DatasetError(f'{name}: sample {info.get("img_path")} has no keypoints')
    keypoints = np.asarray(keypoints)
    if k and (keypoints.ndim != 3 or keypoints.shape[1] != k):
        raise DatasetError(f'{name}: sample {info.get("img_path")} has keypoints of shape '
                           f'{keypoints.shape}; the dataset metainfo has {k} keypoints')


def validate_dataset(dataset_cfg, task: str, max_files: int = 5000, max_reads: int = 8):
    """Raise :class:`DatasetError` if ``dataset_cfg`` (a dataloader's ``dataset``) cannot be
    trained on; return the built dataset otherwise.

    Args:
        dataset_cfg: the dataset config (wrappers such as ``ConcatDataset`` / ``RepeatDataset``
            are looked through).
        task: 'mmseg', 'mmpose' or 'mmdet' (the config's ``default_scope``).
        max_files: entries whose files must exist (evenly spread over the dataset).
        max_reads: entries whose image (and label map) are decoded and checked.
    """
    if dataset_cfg is None:
        return None
    if not isinstance(dataset_cfg, dict):
        return None  # a built dataset object: nothing to check before building
    kind = dataset_cfg.get('type')
    if kind in _WRAPPERS_MANY:
        for inner in dataset_cfg.get('datasets', []):
            validate_dataset(inner, task, max_files, max_reads)
        return None
    if kind in _WRAPPERS_ONE:
        return validate_dataset(dataset_cfg.get('dataset'), task, max_files, max_reads)

    name = _name(dataset_cfg)
    _check_paths(dataset_cfg)
    root = dataset_cfg.get('data_root')
    ann_file = dataset_cfg.get('ann_file')
    ann_path = _join(root, ann_file) if ann_file else None
    is_json = bool(ann_path) and ann_path.endswith('.json') and osp.isfile(ann_path)

    try:
        ds = _build(dataset_cfg, task)
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - diagnose, then report with the paths
        problem = _coco_keypoint_problem(ann_path, None) if (task == 'mmpose' and is_json) \
            else None
        if problem:
            raise DatasetError(f'{name}: {problem}') from None
        where = ', '.join(f'{k}={dataset_cfg.get(k)!r}' for k in
                          ('data_root', 'ann_file', 'data_prefix') if dataset_cfg.get(k))
        raise DatasetError(f'{name} ({where}) could not be built: '
                           f'{type(error).__name__}: {error}') from error

    if len(ds) == 0:
        if task == 'mmpose' and is_json:
            problem = _coco_keypoint_problem(ann_path, ds.metainfo.get('num_keypoints'))
            if problem:
                raise DatasetError(f'{name}: {problem}')
        detail = ''
        if task == 'mmseg':
            prefix = dataset_cfg.get('data_prefix') or {}
            detail = (f"; looked for images '*{getattr(ds, 'img_suffix', '')}' under "
                      f"{_join(root, prefix.get('img_path', ''))} with label maps "
                      f"'*{getattr(ds, 'seg_map_suffix', '')}'")
        raise DatasetError(f'{name} is empty: no samples (data_root={root!r}, '
                           f'ann_file={ann_file!r}, '
                           f'data_prefix={dict(dataset_cfg.get("data_prefix") or {})}){detail}')

    indices = _sample(len(ds), max_files)
    reads = set(_sample(len(ds), max_reads))
    checked = set()
    for i in indices:
        info = ds.get_data_info(i)
        for key, what in (('img_path', 'image'), ('seg_map_path', 'label map')):
            path = info.get(key)
            if not path or path in checked or '://' in str(path):
                continue
            checked.add(path)
            if not osp.isfile(path):
                raise DatasetError(f'{name}: {what} {path} (sample {i} of {len(ds)}) does not '
                                   f'exist')
            if i in reads:
                if key == 'img_path' and _read_unchanged(path) is None:
                    raise DatasetError(f'{name}: image {path} cannot be decoded (truncated or '
                                       f'not an image)')
                if key == 'seg_map_path':
                    _check_seg_labels(ds, name, path, info)
        if task == 'mmpose' and i in reads:
            _check_pose_sample(ds, name, info)
    return ds
