# Base config of the README's attention comparison: OCRNet HRNetV2-W18-small without attention,
# trained from scratch on the 'context' flavour of the tiny Cityscapes-format data
# (tools/misc/make_tiny_data.py cityscapes --flavour context): vehicles are cars or trucks
# according to a sign far above them, so telling the two apart needs long-range context.
# Everything but the data, crop and schedule is mmseg's own Cityscapes OCRNet config.
_base_ = 'mmseg::ocrnet/ocrnet_hr18s_4xb2-160k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'

data_root = 'data/tiny/cityscapes_context/'
crop_size = (64, 128)
model = dict(
    pretrained=None,  # ImageNet weights cannot be downloaded here; the data is learnable
    data_preprocessor=dict(size=crop_size))

# whole images (no crop, which could cut the sign off), flips only: the sign's colour is the
# cue, wherever it is
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0005),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=20, end=200, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=200)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=50, max_keep_ckpts=1))
randomness = dict(seed=0)
