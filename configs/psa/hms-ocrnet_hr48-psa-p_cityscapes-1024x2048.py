# HRNetV2-W48-OCR + PSA_p with NVIDIA's hierarchical multi-scale attention (Tao et al. 2020):
# the model of the released PSA Cityscapes checkpoint (DeLightCMU/PSA README: 86.95 val mIoU).
# Evaluation as the NVIDIA code evaluates it: full 1024x2048 images, scales 0.5/1.0/2.0 fused
# hierarchically, no flip (their eval_cityscapes.yml sets n_scales 0.5,1.0,2.0 and no do_flip).
#
#   python tools/convert/official_psa_to_mmattn.py PSA_p.pth psa_p_mmattn.pth
#   python tools/test.py configs/psa/hms-ocrnet_hr48-psa-p_cityscapes-1024x2048.py psa_p_mmattn.pth
#
# The training part (crop, schedule, losses) is mmseg's Cityscapes default, not NVIDIA's recipe
# (RMI loss, 1024x2048 crops, Mapillary pre-training), which is not reproduced here.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py'
]
# mmattn.models.segmentors: the mmseg-only parts (segmentor, heads); plain `mmattn` stays light
custom_imports = dict(
    imports=['mmattn', 'mmattn.models.segmentors'], allow_failed_imports=False)
runner_type = 'ResumableRunner'  # atomic checkpoints, exact resume (mmattn.engine)

norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (512, 1024)
hrnet_channels = (48, 96, 192, 384)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet mean/std of RGB in [0, 255], as NVIDIA's
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='HierarchicalMultiScaleSegmentor',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='AttentionBackbone',
        backbone=dict(
            type='HRNet',
            norm_cfg=norm_cfg,
            norm_eval=False,
            extra=dict(
                stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK',
                            num_blocks=(4, ), num_channels=(64, )),
                stage2=dict(num_modules=1, num_branches=2, block='BASIC',
                            num_blocks=(4, 4), num_channels=hrnet_channels[:2]),
                stage3=dict(num_modules=4, num_branches=3, block='BASIC',
                            num_blocks=(4, 4, 4), num_channels=hrnet_channels[:3]),
                stage4=dict(num_modules=3, num_branches=4, block='BASIC',
                            num_blocks=(4, 4, 4, 4), num_channels=hrnet_channels))),
        # every BasicBlock of stages 2-4, after conv1-bn1-relu, child named 'deattn'
        plugins=[dict(preset='released',
                      cfg=dict(type='PolarizedSelfAttention', mode='parallel'))]),
    decode_head=[
        # soft object regions (NVIDIA ocr.aux_head): 1x1 conv-BN-ReLU, 1x1 conv
        dict(
            type='FCNHead',
            in_channels=list(hrnet_channels),
            channels=sum(hrnet_channels),
            in_index=(0, 1, 2, 3),
            input_transform='resize_concat',
            kernel_size=1,
            num_convs=1,
            concat_input=False,
            dropout_ratio=-1,
            num_classes=19,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        # OCR (NVIDIA ocr.conv3x3_ocr / ocr_distri_head / cls_head), Dropout2d(0.05)
        dict(
            type='MscaleOCRHead',
            in_channels=list(hrnet_channels),
            in_index=(0, 1, 2, 3),
            input_transform='resize_concat',
            channels=512,
            ocr_channels=256,
            dropout_ratio=0.05,
            num_classes=19,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    ],
    # NVIDIA scale_attn: (3x3 conv-BN-ReLU) x 2, 1x1 conv, sigmoid, on the OCR features
    scale_attn_head=dict(type='ScaleAttentionHead', in_channels=512, channels=256, num_convs=2,
                         norm_cfg=norm_cfg),
    train_scales=(0.5, 1.0),
    test_scales=(0.5, 1.0, 2.0),
    scale_loss_weight=0.05,  # NVIDIA's --supervised_mscale_loss_wt in train_cityscapes.yml
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
