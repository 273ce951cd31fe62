# RetinaNet R-50-FPN with CBAM after conv3 of every Bottleneck in stages 2-4, through ResNet's
# own `plugins=` argument (mmcv's plugin mechanism, as mmdet's GCNet configs use it). mmcv looks
# the type up in the registry by name, so mmattn's class names work there; short names such as
# 'cbam' are for mmattn's own plugin insertion.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'
model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='CBAM'), stages=(False, True, True, True), position='after_conv3')
    ]))
