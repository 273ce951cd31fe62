"""The tiny synthetic datasets are read by the real mmseg / mmpose datasets and metrics.

Every check goes through the downstream code a training config uses (mmseg's
``CityscapesDataset`` + ``IoUMetric``, mmpose's ``CocoDataset`` + ``CocoMetric``), so a wrong
file name, suffix, dtype or json field fails here. Positive and negative controls on the metrics
prove that they read the generated labels, and a trivial colour-based predictor shows that the
content is learnable.
"""
import filecmp
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from mmattn.datasets.synthetic import (CITYSCAPES_LABEL_NAMES, CITYSCAPES_LABELID_TO_TRAINID,
                                       CITYSCAPES_TRAINID_TO_LABELID, COCO_BBOX_FILE,
                                       COCO_KEYPOINT_COLORS, COCO_KEYPOINT_NAMES, COCO_SKELETON,
                                       make_tiny_cityscapes, make_tiny_coco)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
H_CS, W_CS = 64, 128
H_COCO, W_COCO = 128, 96


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cs(tmp_path_factory):
    return make_tiny_cityscapes(
        str(tmp_path_factory.mktemp('cityscapes')), num_train=8, num_val=4, height=H_CS,
        width=W_CS, seed=0)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    return make_tiny_coco(
        str(tmp_path_factory.mktemp('coco')), num_train=16, num_val=8, height=H_COCO,
        width=W_COCO, persons_per_image=(1, 2), seed=0)


def _seg_dataset(root, split, pipeline=True):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    import mmseg.datasets  # noqa: F401  (registers the datasets and transforms)
    pipe = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ] if pipeline else []
    return DATASETS.build(
        dict(
            type='CityscapesDataset',
            data_root=root,
            data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'),
            pipeline=pipe))


def _pose_dataset(root, **kwargs):
    from mmengine.registry import init_default_scope
    from mmpose.registry import DATASETS
    init_default_scope('mmpose')
    import mmpose.datasets  # noqa: F401
    cfg = dict(
        type='CocoDataset',
        data_root=root,
        ann_file='annotations/person_keypoints_val2017.json',
        data_prefix=dict(img='val2017/'),
        data_mode='topdown',
        pipeline=[])
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def _iou_metric(dataset, samples_and_preds):
    """mmseg's IoUMetric over (packed sample, predicted label map) pairs."""
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dataset.metainfo
    for data_sample, pred in samples_and_preds:
        data_sample = data_sample.clone()
        data_sample.pred_sem_seg = PixelData(data=torch.as_tensor(pred)[None].long())
        metric.process({}, [data_sample.to_dict()])
    return metric.evaluate(len(samples_and_preds))


def _coco_metric(dataset, ann_file, instances):
    """mmpose's CocoMetric over (data_info, keypoints (1, 17, 2), bbox_score) triples."""
    from mmpose.evaluation import CocoMetric
    metric = CocoMetric(ann_file=ann_file)
    metric.dataset_meta = dataset.metainfo
    for info, kpts, score in instances:
        pred = dict(
            id=info['id'],
            img_id=info['img_id'],
            category_id=1,
            pred_instances=dict(
                keypoints=np.asarray(kpts, np.float32).reshape(1, 17, 2),
                keypoint_scores=np.ones((1, 17), np.float32),
                bbox_scores=np.asarray([score], np.float32)),
            gt_instances=dict(),
            raw_ann_info=info.get('raw_ann_info', {}),
        )
        metric.process([{}], [pred])
    return metric.evaluate(len(instances))


# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------
def test_cityscapes_layout_and_dataset(cs):
    train = _seg_dataset(cs['root'], 'train')
    val = _seg_dataset(cs['root'], 'val')
    assert len(train) == 8 and len(val) == 4
    # the dataset found the generated files, through the real suffixes
    found = sorted(
        osp.relpath(train.get_data_info(i)['img_path'], cs['train']['img_dir'])
        for i in range(len(train)))
    assert found == sorted(f'{s}_leftImg8bit.png' for s in cs['train']['stems'])
    info = train.get_data_info(0)
    assert info['seg_map_path'].endswith('_gtFine_labelTrainIds.png')
    assert osp.isfile(info['seg_map_path'])
    assert info['reduce_zero_label'] is False

    allowed = set(range(19)) | {255}
    for ds in (train, val):
        for i in range(len(ds)):
            packed = ds[i]
            img = packed['inputs']
            gt = packed['data_samples'].gt_sem_seg.data
            assert tuple(img.shape) == (3, H_CS, W_CS) and img.dtype == torch.uint8
            assert tuple(gt.shape) == (1, H_CS, W_CS)
            values = set(torch.unique(gt).tolist())
            assert values <= allowed
            assert {0, 2, 10, 11, 13} <= values  # road, building, sky, person, car in every scene
            assert 255 in values  # some ignore pixels at object borders
            # the label the pipeline produced is the file on disk
            on_disk = cv2.imread(ds.get_data_info(i)['seg_map_path'], cv2.IMREAD_UNCHANGED)
            assert on_disk.dtype == np.uint8 and on_disk.ndim == 2
            np.testing.assert_array_equal(gt[0].numpy(), on_disk)


def test_cityscapes_label_ids_match_train_ids(cs):
    from mmseg.datasets import CityscapesDataset
    classes = CityscapesDataset.METAINFO['classes']
    # the label-id table agrees with mmseg's class order (and with cityscapesscripts if present)
    for train_id, name in enumerate(classes):
        assert CITYSCAPES_LABEL_NAMES[CITYSCAPES_TRAINID_TO_LABELID[train_id]] == name
    try:
        from cityscapesscripts.helpers.labels import id2label
    except ImportError:
        id2label = None
    if id2label is not None:
        for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
            assert id2label[label_id].trainId == train_id
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[label_id] = train_id
    for split in ('train', 'val'):
        for stem in cs[split]['stems']:
            base = osp.join(cs[split]['ann_dir'], stem)
            train_ids = cv2.imread(f'{base}_gtFine_labelTrainIds.png', cv2.IMREAD_UNCHANGED)
            label_ids = cv2.imread(f'{base}_gtFine_labelIds.png', cv2.IMREAD_UNCHANGED)
            inst = cv2.imread(f'{base}_gtFine_instanceIds.png', cv2.IMREAD_UNCHANGED)
            assert label_ids.dtype == np.uint8 and inst.dtype == np.uint16
            np.testing.assert_array_equal(lut[label_ids], train_ids)
            assert set(np.unique(label_ids)) <= set(CITYSCAPES_LABELID_TO_TRAINID)
            # instanceIds: id * 1000 + k on persons and cars, the label id elsewhere
            inst = inst.astype(np.int64)
            np.testing.assert_array_equal(np.where(inst >= 1000, inst // 1000, inst), label_ids)
            assert set(np.unique(inst[inst >= 1000] // 1000)) <= {24, 26}
            assert (inst >= 1000).any()


def test_cityscapes_iou_metric_reads_labels(cs):
    val = _seg_dataset(cs['root'], 'val')
    samples = [val[i]['data_samples'] for i in range(len(val))]
    gts = [s.gt_sem_seg.data[0].numpy() for s in samples]
    perfect = _iou_metric(val, [(s, g) for s, g in zip(samples, gts)])
    assert perfect['mIoU'] == pytest.approx(100.0)
    constant = _iou_metric(val, [(s, np.zeros_like(g)) for s, g in zip(samples, gts)])
    assert constant['mIoU'] < 15.0
    # a wrong but plausible prediction (labels shifted by 8 px) lands in between
    shifted = _iou_metric(val, [(s, np.roll(g, 8, axis=1)) for s, g in zip(samples, gts)])
    assert constant['mIoU'] < shifted['mIoU'] < 95.0


def test_cityscapes_learnable_by_colour(cs):
    """Per-pixel nearest class colour, fitted on train, scores well on val but not perfectly."""
    train = _seg_dataset(cs['root'], 'train')
    val = _seg_dataset(cs['root'], 'val')
    sums, counts = np.zeros((19, 3)), np.zeros(19)
    for i in range(len(train)):
        packed = train[i]
        img = packed['inputs'].numpy().transpose(1, 2, 0).reshape(-1, 3).astype(np.float64)
        gt = packed['data_samples'].gt_sem_seg.data[0].numpy().reshape(-1)
        for c in np.unique(gt[gt != 255]):
            sums[c] += img[gt == c].sum(0)
            counts[c] += (gt == c).sum()
    present = np.flatnonzero(counts)
    centroids = sums[present] / counts[present, None]
    pairs = []
    for i in range(len(val)):
        packed = val[i]
        img = packed['inputs'].numpy().transpose(1, 2, 0).astype(np.float64)
        dist = ((img[:, :, None, :] - centroids[None, None]) ** 2).sum(-1)
        pairs.append((packed['data_samples'], present[dist.argmin(-1)]))
    miou = _iou_metric(val, pairs)['mIoU']
    assert 50.0 < miou < 95.0, miou


def test_cityscapes_deterministic(tmp_path):
    a = make_tiny_cityscapes(str(tmp_path / 'a'), num_train=2, num_val=1, seed=3)
    b = make_tiny_cityscapes(str(tmp_path / 'b'), num_train=2, num_val=1, seed=3)
    c = make_tiny_cityscapes(str(tmp_path / 'c'), num_train=2, num_val=1, seed=4)
    for stem in a['train']['stems']:
        for sub, suffix in (('leftImg8bit', '_leftImg8bit.png'),
                            ('gtFine', '_gtFine_labelTrainIds.png')):
            fa, fb, fc = (osp.join(r['root'], sub, 'train', stem + suffix) for r in (a, b, c))
            assert filecmp.cmp(fa, fb, shallow=False)
            assert not filecmp.cmp(fa, fc, shallow=False)


@pytest.mark.skipif(
    not __import__('importlib').util.find_spec('cityscapesscripts'),
    reason='cityscapesscripts not installed')
def test_cityscapes_metric_official_eval(cs, tmp_path):
    from mmseg.evaluation import CityscapesMetric
    val = _seg_dataset(cs['root'], 'val')
    metric = CityscapesMetric(output_dir=str(tmp_path / 'cs_out'))
    metric.dataset_meta = val.metainfo
    for i in range(len(val)):
        s = val[i]['data_samples'].clone()
        s.pred_sem_seg = s.gt_sem_seg
        metric.process({}, [s.to_dict()])
    res = metric.evaluate(len(val))
    assert res['averageScoreCategories'] > 0.99


# --------------------------------------------------------------------------------------------
# COCO keypoints
# --------------------------------------------------------------------------------------------
def test_coco_files_format(coco):
    with open(coco['val']['ann_file']) as f:
        ann = json.load(f)
    assert len(ann['images']) == 8
    assert ann['categories'][0]['keypoints'] == COCO_KEYPOINT_NAMES
    assert ann['categories'][0]['skeleton'] == COCO_SKELETON
    per_image = {}
    for a in ann['annotations']:
        assert a['category_id'] == 1 and a['iscrowd'] == 0
        assert len(a['keypoints']) == 51 and set(a['keypoints'][2::3]) <= {0, 1, 2}
        assert a['num_keypoints'] == sum(v > 0 for v in a['keypoints'][2::3])
        x, y, w, h = a['bbox']
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W_COCO and y + h <= H_COCO
        assert a['area'] == pytest.approx(w * h, rel=1e-3)
        per_image[a['image_id']] = per_image.get(a['image_id'], 0) + 1
    counts = sorted(per_image.values())
    assert set(counts) <= {1, 2} and len(per_image) == 8
    with open(coco['train']['ann_file']) as f:
        train_counts = {}
        for a in json.load(f)['annotations']:
            train_counts[a['image_id']] = train_counts.get(a['image_id'], 0) + 1
    assert set(train_counts.values()) == {1, 2}  # both person counts occur
    for img in ann['images']:
        im = cv2.imread(osp.join(coco['val']['img_dir'], img['file_name']))
        assert im.shape == (img['height'], img['width'], 3) == (H_COCO, W_COCO, 3)


def test_coco_dataset_topdown(coco):
    ds = _pose_dataset(coco['root'])
    assert len(ds) == coco['val']['num_instances']
    assert ds.metainfo['num_keypoints'] == 17
    with open(coco['val']['ann_file']) as f:
        anns = {a['id']: a for a in json.load(f)['annotations']}
    for i in range(len(ds)):
        info = ds[i]
        assert info['keypoints'].shape == (1, 17, 2)
        assert info['keypoints_visible'].shape == (1, 17)
        assert (info['keypoints_visible'] == 1).all()
        assert osp.isfile(info['img_path'])
        a = anns[info['id']]
        np.testing.assert_allclose(
            info['keypoints'][0], np.array(a['keypoints']).reshape(17, 3)[:, :2])
        x, y, w, h = a['bbox']
        np.testing.assert_allclose(info['bbox'][0], [x, y, x + w, y + h], atol=1e-3)
    # the training split loads as well
    train = _pose_dataset(
        coco['root'], ann_file='annotations/person_keypoints_train2017.json',
        data_prefix=dict(img='train2017/'))
    assert len(train) == coco['train']['num_instances']


def test_coco_topdown_udp_pipeline(coco):
    """mmpose's UDP top-down training pipeline: after the affine crop the transformed keypoints
    still sit on blobs of their own colour, and the UDP heatmap targets are produced."""
    w_in, h_in = 192, 256
    pipeline = [
        dict(type='LoadImage'),
        dict(type='GetBBoxCenterScale'),
        dict(type='TopdownAffine', input_size=(w_in, h_in), use_udp=True),
        dict(
            type='GenerateTarget',
            encoder=dict(
                type='UDPHeatmap', input_size=(w_in, h_in), heatmap_size=(48, 64), sigma=2)),
    ]
    ds = _pose_dataset(coco['root'], pipeline=pipeline)
    cols = COCO_KEYPOINT_COLORS.astype(np.float64)
    for i in range(3):
        out = ds[i]
        img = out['img'][..., ::-1]  # LoadImage gives BGR
        assert img.shape == (h_in, w_in, 3)
        assert out['heatmaps'].shape == (17, 64, 48)
        assert (out['keypoint_weights'] > 0).all()
        kpts = out['transformed_keypoints'][0]
        for k, (x, y) in enumerate(kpts):
            pix = img[int(round(y)), int(round(x))].astype(np.float64)
            dist = np.abs(cols - pix).max(axis=1)
            assert dist.argmin() == k and dist[k] < 50, (i, k, pix)


def test_coco_dataset_bbox_file(coco):
    assert coco['bbox_file'] == osp.join(coco['root'], COCO_BBOX_FILE)
    ds = _pose_dataset(coco['root'], bbox_file=coco['bbox_file'], test_mode=True)
    with open(coco['bbox_file']) as f:
        dets = json.load(f)
    assert len(ds) == len(dets) == coco['val']['num_instances']
    gt = _pose_dataset(coco['root'])
    gt_boxes = {}
    for i in range(len(gt)):
        gt_boxes.setdefault(gt[i]['img_id'], []).append(gt[i]['bbox'][0])
    for i in range(len(ds)):
        info = ds[i]
        assert 0.85 <= float(info['bbox_score'][0]) <= 1.0
        box = info['bbox'][0]
        best = max(_iou(box, g) for g in gt_boxes[info['img_id']])
        assert best > 0.75


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_coco_metric_reads_annotations(coco):
    ds = _pose_dataset(coco['root'])
    infos = [ds[i] for i in range(len(ds))]
    perfect = _coco_metric(ds, coco['val']['ann_file'],
                           [(info, info['keypoints'], 1.0) for info in infos])
    assert perfect['coco/AP'] == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    wrong = []
    for info in infos:
        x0, y0, x1, y1 = info['bbox'][0]
        offset = rng.uniform(0.25, 0.5, size=(1, 17, 2)) * [x1 - x0, y1 - y0]
        offset *= rng.choice([-1, 1], size=(1, 17, 2))
        wrong.append((info, info['keypoints'] + offset, 1.0))
    assert _coco_metric(ds, coco['val']['ann_file'], wrong)['coco/AP'] < 0.05
    # left/right swapped keypoints are wrong too (so colour, not position, must tell them apart)
    flip = ds.metainfo['flip_indices']
    swapped = [(info, info['keypoints'][:, flip], 1.0) for info in infos]
    assert _coco_metric(ds, coco['val']['ann_file'], swapped)['coco/AP'] < 0.5


def test_coco_keypoint_blobs_at_annotations(coco):
    cols = COCO_KEYPOINT_COLORS.astype(np.float64)
    for split in ('train', 'val'):
        with open(coco[split]['ann_file']) as f:
            ann = json.load(f)
        files = {img['id']: img['file_name'] for img in ann['images']}
        for a in ann['annotations']:
            img = cv2.imread(osp.join(coco[split]['img_dir'], files[a['image_id']]))[..., ::-1]
            kps = np.array(a['keypoints']).reshape(17, 3)
            for k, (x, y, v) in enumerate(kps):
                assert v == 2
                pix = img[y, x].astype(np.float64)
                dist = np.abs(cols - pix).max(axis=1)
                assert dist.argmin() == k and dist[k] < 40, (split, a['id'], k, pix)


def test_coco_learnable_by_colour(coco):
    """Top-down on the detected boxes: the centroid of each keypoint colour in the box gives a
    high AP through CocoMetric."""
    ds = _pose_dataset(coco['root'], bbox_file=coco['bbox_file'], test_mode=True)
    cols = COCO_KEYPOINT_COLORS.astype(np.int32)
    preds = []
    for i in range(len(ds)):
        info = ds[i]
        img = cv2.imread(info['img_path'])[..., ::-1].astype(np.int32)
        x0, y0, x1, y1 = np.round(info['bbox'][0]).astype(int)
        x0, y0 = max(0, x0 - 2), max(0, y0 - 2)
        crop = img[y0:y1 + 3, x0:x1 + 3]
        kpts = np.zeros((17, 2), np.float32)
        for k in range(17):
            dist = np.abs(crop - cols[k]).max(-1)
            ys, xs = np.nonzero(dist < 50)
            if len(xs):
                kpts[k] = (xs.mean() + x0, ys.mean() + y0)
        preds.append((info, kpts, float(info['bbox_score'][0])))
    assert _coco_metric(ds, coco['val']['ann_file'], preds)['coco/AP'] > 0.8


def test_coco_deterministic(tmp_path):
    a = make_tiny_coco(str(tmp_path / 'a'), num_train=2, num_val=2, seed=5)
    b = make_tiny_coco(str(tmp_path / 'b'), num_train=2, num_val=2, seed=5)
    c = make_tiny_coco(str(tmp_path / 'c'), num_train=2, num_val=2, seed=6)
    assert filecmp.cmp(a['val']['ann_file'], b['val']['ann_file'], shallow=False)
    assert not filecmp.cmp(a['val']['ann_file'], c['val']['ann_file'], shallow=False)
    assert filecmp.cmp(a['bbox_file'], b['bbox_file'], shallow=False)
    for name in os.listdir(a['train']['img_dir']):
        assert filecmp.cmp(
            osp.join(a['train']['img_dir'], name), osp.join(b['train']['img_dir'], name),
            shallow=False)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_writes_both(tmp_path):
    out = tmp_path / 'tiny'
    proc = subprocess.run(
        [sys.executable, 'tools/misc/make_tiny_data.py', 'all', '--out', str(out),
         '--num-train', '2', '--num-val', '1', '--seed', '1'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'cityscapes' in proc.stdout and 'coco' in proc.stdout
    cs_root, coco_root = out / 'cityscapes', out / 'coco'
    assert len(list((cs_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))) == 2
    assert len(list((cs_root / 'gtFine' / 'val').rglob('*_gtFine_labelTrainIds.png'))) == 1
    assert len(list((cs_root / 'gtFine' / 'val').rglob('*_gtFine_labelIds.png'))) == 1
    for split in ('train', 'val'):
        assert (coco_root / 'annotations' / f'person_keypoints_{split}2017.json').is_file()
    assert len(list((coco_root / 'train2017').glob('*.jpg'))) == 2
    assert (coco_root / COCO_BBOX_FILE).is_file()
    # the same call through main() writes the same thing (importable without side effects)
    sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'misc'))
    try:
        import make_tiny_data
    finally:
        sys.path.pop(0)
    written = make_tiny_data.main(
        ['coco', '--out', str(tmp_path / 'again'), '--num-train', '2', '--num-val', '1',
         '--seed', '1'])
    assert filecmp.cmp(
        written['coco']['val']['ann_file'],
        str(coco_root / 'annotations' / 'person_keypoints_val2017.json'), shallow=False)
