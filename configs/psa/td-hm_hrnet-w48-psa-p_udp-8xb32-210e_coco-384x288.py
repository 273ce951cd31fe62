# UDP-Pose HRNet-W48 384x288 + Polarized Self-Attention (PSA_p, parallel) in the released
# placement: every BasicBlock of HRNet stages 2-4, after conv1-bn1-relu, as in DeLightCMU/PSA `network/hrnetv2.py`.
_base_ = './td-hm_hrnet-w48_udp-8xb32-210e_coco-384x288.py'
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        plugins=[
            dict(
                preset='released',
                cfg=dict(type='PolarizedSelfAttention', mode='parallel'))
        ]))
