# UDP-Pose HRNet-W48 256x192 + Polarized Self-Attention (PSA_s, sequential) in the released
# placement: every BasicBlock of HRNet stages 2-4, after conv1-bn1-relu, as in DeLightCMU/PSA `network/hrnetv2.py`.
_base_ = './td-hm_hrnet-w48_udp-8xb32-210e_coco-256x192.py'
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        plugins=[
            dict(
                preset='released',
                cfg=dict(type='PolarizedSelfAttention', mode='sequential'))
        ]))
