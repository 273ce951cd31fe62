# OCRNet HRNetV2-W48 + Polarized Self-Attention (PSA_p, parallel) in the released placement:
# every BasicBlock of HRNet stages 2-4, after conv1-bn1-relu, as in DeLightCMU/PSA `network/hrnetv2.py`.
_base_ = './ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py'
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        plugins=[
            dict(
                preset='released',
                cfg=dict(type='PolarizedSelfAttention', mode='parallel'))
        ]))
