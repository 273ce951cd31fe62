# RetinaNet ResNet-18 FPN trained from scratch on the persons of the tiny COCO-format data that
# tools/misc/make_tiny_data.py generates (its keypoint annotations carry COCO person boxes),
# evaluated by mmdet's CocoMetric (bbox). The small detection base config of the attention
# comparison; everything but the data, the one class and the schedule is mmdet's own
# RetinaNet-R18 config.
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'

data_root = 'data/tiny/coco/'
metainfo = dict(classes=('person', ), palette=[(220, 20, 60)])
model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet download here; the data is learnable
    bbox_head=dict(num_classes=1))

# the images are 96 x 128 already; Resize records the scale factor the predictions use
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(96, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/person_keypoints_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/person_keypoints_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/person_keypoints_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=200, T_max=180, eta_min=1e-4)
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=200, val_interval=200)
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=1))
randomness = dict(seed=0)
