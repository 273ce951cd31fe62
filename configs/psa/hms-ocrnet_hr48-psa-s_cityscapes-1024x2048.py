# As hms-ocrnet_hr48-psa-p_cityscapes-1024x2048.py with PSA_s (sequential): the model of the
# released PSA_s Cityscapes checkpoint (DeLightCMU/PSA README: 86.72 val mIoU).
#
#   python tools/convert/official_psa_to_mmattn.py PSA_s.pth psa_s_mmattn.pth
#   python tools/test.py configs/psa/hms-ocrnet_hr48-psa-s_cityscapes-1024x2048.py psa_s_mmattn.pth
_base_ = './hms-ocrnet_hr48-psa-p_cityscapes-1024x2048.py'
model = dict(
    backbone=dict(plugins=[
        dict(preset='released', cfg=dict(type='PolarizedSelfAttention', mode='sequential'))
    ]))
