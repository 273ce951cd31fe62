# RetinaNet R-50-FPN with CBAM after conv3 of every Bottleneck in stages 2-4 (stage 1 is frozen by
# the base config's frozen_stages=1, attention there included), inserted by mmattn's
# AttentionBackbone into mmdet's ResNet: the flat spelling keeps every ResNet key of the base
# config; mmattn's plugins go in `attention_plugins` because ResNet has a `plugins=` of its own.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='ResNet',
        attention_plugins=[
            dict(cfg=dict(type='cbam'), position='after_conv3', stages=(2, 3, 4))
        ]))
