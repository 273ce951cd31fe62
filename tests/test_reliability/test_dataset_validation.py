"""Dataset mistakes fail before training starts, with a message naming the file or setting
(``validate_dataset``, run by tools/train.py after building the config), instead of a crash at
iteration N inside a data pipeline.

Faults injected: a missing label map, a missing image, a wrong data_root / data_prefix, label
values outside the classes, a colour-coded label map, an empty split, a COCO file without
keypoints, a COCO file with the wrong keypoint count, a missing ann_file, a corrupt image."""
import copy
import json
import pathlib
import runpy
import sys

import cv2
import numpy as np
import pytest
from mmengine.config import Config

import mmattn  # noqa: F401
from mmattn.datasets import (DatasetError, make_tiny_cityscapes, make_tiny_coco,
                             validate_dataset)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEG_DEMO = ROOT / 'configs/demo/ocrnet_hr18s-psa-p_1xb4-400iter_tinycityscapes-64x128.py'
POSE_DEMO = ROOT / 'configs/demo/td-hm_hrnet-w16-psa-p_udp-1xb16-60e_tinycoco-128x96.py'


@pytest.fixture
def seg(tmp_path):
    data = make_tiny_cityscapes(tmp_path / 'cityscapes', num_train=3, num_val=1)
    cfg = copy.deepcopy(Config.fromfile(str(SEG_DEMO)).train_dataloader.dataset)
    cfg.data_root = data['root']
    return data, cfg


@pytest.fixture
def pose(tmp_path):
    data = make_tiny_coco(tmp_path / 'coco', num_train=3, num_val=1, persons_per_image=(1, 1))
    cfg = copy.deepcopy(Config.fromfile(str(POSE_DEMO)).train_dataloader.dataset)
    cfg.data_root = data['root'] + '/'
    return data, cfg


def _labels(data, split='train'):
    return sorted(pathlib.Path(data[split]['ann_dir']).rglob('*_labelTrainIds.png'))


def test_valid_datasets_pass(seg, pose):
    assert len(validate_dataset(seg[1], 'mmseg')) == 3
    assert len(validate_dataset(pose[1], 'mmpose')) == 3


def test_seg_missing_label_map(seg):
    data, cfg = seg
    missing = _labels(data)[1]
    missing.unlink()
    with pytest.raises(DatasetError, match=f'label map {missing} .*does not exist'):
        validate_dataset(cfg, 'mmseg')


def test_seg_wrong_data_root_and_prefix(seg, tmp_path):
    _, cfg = seg
    with pytest.raises(DatasetError, match='data_root .*nowhere does not exist'):
        validate_dataset(dict(cfg, data_root=str(tmp_path / 'nowhere')), 'mmseg')
    bad = dict(cfg, data_prefix=dict(img_path='leftImg8bit/training', seg_map_path='gtFine/train'))
    with pytest.raises(DatasetError, match="data_prefix img_path='leftImg8bit/training' -> "):
        validate_dataset(bad, 'mmseg')


def test_seg_labels_out_of_range(seg):
    data, cfg = seg
    path = _labels(data)[0]
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 33  # a Cityscapes *label id* (bicycle), not a train id
    cv2.imwrite(str(path), label)
    with pytest.raises(DatasetError, match=rf'label map {path} has values \[33\] outside the 19 '
                       r'classes \(0..18\) and ignore_index 255'):
        validate_dataset(cfg, 'mmseg')


def test_seg_colour_label_map(seg):
    data, cfg = seg
    path = _labels(data)[0]
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), np.stack([label] * 3, axis=-1))
    with pytest.raises(DatasetError, match='expected a single-channel map'):
        validate_dataset(cfg, 'mmseg')


def test_seg_empty_split(seg):
    data, cfg = seg
    for image in pathlib.Path(data['train']['img_dir']).rglob('*.png'):
        image.unlink()
    with pytest.raises(DatasetError, match=r"CityscapesDataset is empty: no samples .* looked "
                       r"for images '\*_leftImg8bit.png' under"):
        validate_dataset(cfg, 'mmseg')


def test_seg_corrupt_image(seg):
    data, cfg = seg
    image = sorted(pathlib.Path(data['train']['img_dir']).rglob('*.png'))[0]
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(DatasetError, match=f'image {image} cannot be decoded'):
        validate_dataset(cfg, 'mmseg')


def test_pose_missing_image(pose):
    data, cfg = pose
    image = sorted(pathlib.Path(data['train']['img_dir']).glob('*.jpg'))[-1]
    image.unlink()
    with pytest.raises(DatasetError, match=f'image {image} .*does not exist'):
        validate_dataset(cfg, 'mmpose')


def _edit_annotations(data, edit):
    path = pathlib.Path(data['train']['ann_file'])
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return path


def test_pose_coco_file_without_keypoints(pose):
    data, cfg = pose

    def drop(coco):  # what a detection-only instances_*.json looks like
        for ann in coco['annotations']:
            ann.pop('keypoints')
            ann.pop('num_keypoints')
        coco['categories'][0].pop('keypoints')

    path = _edit_annotations(data, drop)
    with pytest.raises(DatasetError, match=rf"{path} has no keypoints: none of its 3 "
                       r"annotations has a 'keypoints' field"):
        validate_dataset(cfg, 'mmpose')


def test_pose_wrong_keypoint_count(pose):
    data, cfg = pose

    def fourteen(coco):
        for ann in coco['annotations']:
            ann['keypoints'] = ann['keypoints'][:42]

    _edit_annotations(data, fourteen)
    with pytest.raises(DatasetError, match=r'keypoints of shape \(1, 14, 2\); the dataset '
                       r'metainfo has 17 keypoints'):
        validate_dataset(cfg, 'mmpose')


def test_pose_empty_split_and_missing_ann_file(pose):
    data, cfg = pose
    path = _edit_annotations(data, lambda coco: coco.update(annotations=[]))
    with pytest.raises(DatasetError, match=f'{path} has no annotations'):
        validate_dataset(cfg, 'mmpose')
    with pytest.raises(DatasetError, match='ann_file .*person_keypoints_training.json does not '
                       'exist'):
        validate_dataset(dict(cfg, ann_file='annotations/person_keypoints_training.json'),
                         'mmpose')


# ----------------------------------------------------------------------------- tools/train.py
class _Started(Exception):
    pass


def _train_main(argv, monkeypatch):
    """Run tools/train.py's main in-process; training itself is replaced by an exception, so
    an error raised before it proves the check runs before training."""
    from mmengine.runner import Runner

    def started(cfg):
        raise _Started

    monkeypatch.setattr(Runner, 'from_cfg', staticmethod(started))
    monkeypatch.setattr(sys, 'argv', ['train.py'] + [str(a) for a in argv])
    runpy.run_path(str(ROOT / 'tools/train.py'), run_name='__main__')


def test_train_py_stops_before_training_on_bad_labels(seg, tmp_path, monkeypatch):
    data, _ = seg
    path = _labels(data)[0]
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 19
    cv2.imwrite(str(path), label)
    argv = [SEG_DEMO, '--work-dir', tmp_path / 'w', '--cfg-options',
            f'train_dataloader.dataset.data_root={data["root"]}',
            f'val_dataloader.dataset.data_root={data["root"]}']
    with pytest.raises(SystemExit) as info:
        _train_main(argv, monkeypatch)
    assert str(info.value.code).startswith(f'DatasetError: CityscapesDataset: label map {path} '
                                           f'has values [19] outside the 19 classes')
    # the check can be turned off: then training starts (and would fail later)
    with pytest.raises(_Started):
        _train_main(argv[:3] + ['--no-data-check'] + argv[3:], monkeypatch)


def test_train_py_stops_before_training_on_a_coco_file_without_keypoints(pose, tmp_path,
                                                                         monkeypatch):
    data, _ = pose
    root = data['root'] + '/'
    argv = [POSE_DEMO, '--work-dir', tmp_path / 'w', '--cfg-options',
            f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.bbox_file={data["bbox_file"]}']
    with pytest.raises(_Started):  # valid data: the check passes and training starts
        _train_main(argv, monkeypatch)
    _edit_annotations(data, lambda coco: [a.pop('keypoints') for a in coco['annotations']])
    with pytest.raises(SystemExit) as info:
        _train_main(argv, monkeypatch)
    assert str(info.value.code).startswith('DatasetError: CocoDataset: ')
    assert 'has no keypoints' in str(info.value.code)
