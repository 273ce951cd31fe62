# UDP-Pose HRNet-W32 256x192 + CBAM at the end of every residual block (before the residual
# add, where the CBAM paper puts it), BasicBlocks and Bottlenecks of all stages alike.
_base_ = '../psa/td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.py'
model = dict(
    backbone=dict(
        type='AttentionBackbone',
        backbone_type='HRNet',
        plugins=[dict(cfg=dict(type='CBAM'), position='before_add')]))
