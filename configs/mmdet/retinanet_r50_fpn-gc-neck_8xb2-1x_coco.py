# RetinaNet R-50-FPN with a global context block (GCNet) on each of the five FPN outputs:
# AttentionNeck after FPN (a list of necks runs in order).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'
model = dict(neck=[
    dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5),
    dict(type='AttentionNeck', in_channels=[256] * 5, attention='gc')
])
