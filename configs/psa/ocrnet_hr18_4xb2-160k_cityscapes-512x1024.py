# Baseline: mmseg's OCRNet HRNetV2-W18, unchanged (the reference the +PSA configs compare to).
_base_ = 'mmseg::ocrnet/ocrnet_hr18_4xb2-160k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmattn'], allow_failed_imports=False)
# atomic checkpoints, resume from the last complete one, random states saved (mmattn.engine)
runner_type = 'ResumableRunner'
