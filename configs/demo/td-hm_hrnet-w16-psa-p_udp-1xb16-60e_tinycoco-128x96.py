# The README's pose job: UDP-Pose with a small HRNet (W16, one module per stage) + PSA_p
# (released placement) trained from scratch on the tiny COCO-keypoints dataset that
# tools/misc/make_tiny_data.py generates, evaluated by mmpose's CocoMetric on detected boxes.
_base_ = '../psa/td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.py'

data_root = 'data/tiny/coco/'
codec = dict(type='UDPHeatmap', input_size=(96, 128), heatmap_size=(24, 32), sigma=2)
width = 16
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        init_cfg=None,  # no ImageNet download here; the data is learnable from scratch
        extra=dict(
            stage1=dict(num_blocks=(2, )),
            stage2=dict(num_blocks=(2, 2), num_channels=(width, 2 * width)),
            stage3=dict(num_modules=1, num_blocks=(2, 2, 2),
                        num_channels=(width, 2 * width, 4 * width)),
            stage4=dict(num_modules=1, num_blocks=(2, 2, 2, 2),
                        num_channels=(width, 2 * width, 4 * width, 8 * width))),
        plugins=[
            dict(
                preset='released',
                cfg=dict(type='PolarizedSelfAttention', mode='parallel'))
        ]),
    head=dict(in_channels=width, decoder=codec))

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='RandomBBoxTransform', scale_factor=(0.8, 1.2), rotate_factor=20),
    dict(type='TopdownAffine', input_size=codec['input_size'], use_udp=True),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs')
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size'], use_udp=True),
    dict(type='PackPoseInputs')
]
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        bbox_file=data_root + 'person_detection_results/'
        'COCO_val2017_detections_AP_H_56_person.json',
        pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/person_keypoints_val2017.json')
test_evaluator = val_evaluator

max_epochs = 60
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(type='Adam', lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', begin=0, end=30, start_factor=0.01, by_epoch=False),
    dict(type='CosineAnnealingLR', begin=0, end=max_epochs, T_max=max_epochs, by_epoch=True,
         eta_min=1e-5)
]
auto_scale_lr = dict(base_batch_size=16)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=20, max_keep_ckpts=2, save_best=None))
randomness = dict(seed=0)
