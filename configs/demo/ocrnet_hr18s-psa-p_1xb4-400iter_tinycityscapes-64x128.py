# The README's main job: OCRNet HRNetV2-W18-small + PSA_p (released placement) trained from
# scratch on the tiny Cityscapes-format dataset that tools/misc/make_tiny_data.py generates.
# Everything but the data size, crop and schedule is mmseg's own Cityscapes OCRNet config.
_base_ = 'mmseg::ocrnet/ocrnet_hr18s_4xb2-160k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'

data_root = 'data/tiny/cityscapes/'
crop_size = (64, 128)
model = dict(
    pretrained=None,  # ImageNet weights cannot be downloaded here; the data is learnable
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        plugins=[
            dict(
                preset='released',
                cfg=dict(type='PolarizedSelfAttention', mode='parallel'))
        ]))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=20, end=400, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=400, val_interval=400)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2))
randomness = dict(seed=0)
