"""Every shipped config builds its model, trains one iteration and evaluates once on tiny data.

The configs keep their real model (HRNet-W48 and all); only the data (tiny generated
Cityscapes / COCO), the crop of segmentation configs, the schedule and downloads are overridden,
through the same ``cfg-options`` mechanism a user has.
"""
import copy
import pathlib

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmattn  # noqa: F401
from mmattn.datasets import make_tiny_cityscapes, make_tiny_coco
from mmattn.models.layers import attention_class_names
from mmattn.utils import build_runner

ATTENTION_CLASSES = attention_class_names()

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
SEG_CROP = (64, 128)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny')
    return dict(
        cityscapes=make_tiny_cityscapes(root / 'cityscapes', num_train=2, num_val=1),
        coco=make_tiny_coco(root / 'coco', num_train=2, num_val=1, persons_per_image=(1, 1)))


def _seg_overrides(cfg, data):
    cfg.model.pretrained = None
    if cfg.model.get('data_preprocessor') is not None:
        cfg.model.data_preprocessor.size = SEG_CROP
    cfg.data_preprocessor = cfg.model.get('data_preprocessor')
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=SEG_CROP),
        dict(type='PackSegInputs')
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(128, 64), keep_ratio=True),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    root = data['cityscapes']['root']
    cfg.train_dataloader.dataset.update(data_root=root, pipeline=train_pipeline)
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key].dataset.update(data_root=root, pipeline=test_pipeline)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=1)


def _pose_overrides(cfg, data):
    coco = data['coco']
    cfg.model.backbone.init_cfg = None
    if cfg.model.backbone.get('backbone') is not None:
        cfg.model.backbone.backbone.init_cfg = None
    cfg.train_dataloader.dataset.update(data_root=coco['root'])
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key].dataset.update(data_root=coco['root'], bbox_file=coco['bbox_file'])
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = coco['val']['ann_file']
    cfg.train_cfg.update(max_epochs=1, val_interval=1)


def _det_overrides(cfg, data):
    """mmdet configs on the tiny COCO data: its person boxes as a one-class detection set."""
    coco = data['coco']
    cfg.model.backbone.init_cfg = None
    if cfg.model.backbone.get('backbone') is not None:
        cfg.model.backbone.backbone.init_cfg = None
    cfg.model.bbox_head.num_classes = 1
    # an untrained detector scores everything below mmdet's 0.05, and CocoMetric returns nothing
    # for an empty prediction set: keep every box so the evaluation really runs
    cfg.model.test_cfg.score_thr = 0.0
    metainfo = dict(classes=('person', ))
    size = (96, 128)
    for key, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                       ('test_dataloader', 'val')):
        dataset = cfg[key].dataset
        dataset.update(data_root=coco['root'], ann_file=coco[split]['ann_file_rel'],
                       data_prefix=coco[split]['data_prefix'], metainfo=metainfo)
        if split == 'train':  # the tiny persons are smaller than mmdet's 32-pixel filter
            dataset.filter_cfg = dict(filter_empty_gt=True, min_size=1)
        for step in dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = size
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file = coco['val']['ann_file']
    if cfg.train_cfg.get('type') == 'IterBasedTrainLoop':
        cfg.train_cfg.update(max_iters=1, val_interval=1)
    else:
        cfg.train_cfg.update(max_epochs=1, val_interval=1)


def _tiny_cfg(path, data, work_dir):
    cfg = Config.fromfile(str(path))
    scope = cfg.default_scope
    if scope == 'mmseg':
        _seg_overrides(cfg, data)
    elif scope == 'mmpose':
        _pose_overrides(cfg, data)
    elif scope == 'mmdet':
        _det_overrides(cfg, data)
    else:
        pytest.fail(f'{path.name}: unexpected default_scope {scope}')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].update(batch_size=1 if key != 'train_dataloader' else 2, num_workers=0,
                        persistent_workers=False)
    cfg.default_hooks.logger.interval = 1
    # no checkpoint files: W48 configs would write ~300 MB each per run
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    return cfg


def test_every_config_is_collected():
    names = {p.name for p in CONFIGS}
    assert len(CONFIGS) >= 20
    assert 'ocrnet_hr48-psa-p_4xb2-160k_cityscapes-512x1024.py' in names
    assert 'td-hm_hrnet-w48-psa-s_udp-8xb32-210e_coco-384x288.py' in names


def _registry_of(scope):
    import importlib
    return importlib.import_module(f'{scope}.registry').MODELS


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_its_model_with_the_attention_it_names(path):
    """Each config parses, imports what its custom_imports name, and builds its full model; the
    attention plugins and necks it adds are there (counted by the modules' registered names)."""
    cfg = Config.fromfile(str(path))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = _registry_of(cfg.default_scope).build(model_cfg)
    text = path.read_text()
    if any(k in text for k in ('AttentionBackbone', 'plugins=', 'AttentionNeck')):
        found = {type(m).__name__ for m in model.modules()} & set(ATTENTION_CLASSES)
        assert found, f'{path.name} names attention, but its model has no mmattn module'
    if 'AttentionNeck' in text:
        assert any(type(m).__name__ == 'AttentionNeck' for m in model.modules()), path.name


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_one_iteration_and_evaluates(path, tiny_data, tmp_path):
    cfg = _tiny_cfg(path, tiny_data, tmp_path)
    runner = build_runner(copy.deepcopy(cfg))  # as tools/train.py (the configs' runner_type)
    weights_before = {k: v.clone() for k, v in runner.model.state_dict().items()
                      if v.dtype.is_floating_point}
    runner.train()
    assert runner.iter >= 1
    changed = [k for k, v in runner.model.state_dict().items()
               if k in weights_before and not torch.equal(v, weights_before[k])]
    assert changed, 'one training iteration changed no weight'
    prefixes = tuple(f'backbone.{p}.' for p in getattr(runner.model.backbone,
                                                       'attention_plugins', []))
    if getattr(runner.model, 'neck', None) is not None:
        prefixes += ('neck.', )
    if prefixes:  # the inserted attention modules are trained too
        assert any(k.startswith(prefixes) for k in changed)
    metrics = runner.val_loop.run() if runner.val_loop is not None else {}
    key = dict(mmseg='mIoU', mmpose='coco/AP', mmdet='coco/bbox_mAP')[cfg.default_scope]
    assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
