# OCRNet HRNetV2-W18 with a global context block (GCNet, ratio 1/16, channel add) on each of
# the four HRNet outputs, as a neck between backbone and heads: no change inside the backbone.
_base_ = '../psa/ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py'
model = dict(
    neck=dict(
        type='AttentionNeck',
        in_channels=[18, 36, 72, 144],
        attention=dict(type='GlobalContextBlock')))
