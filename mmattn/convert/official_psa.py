"""Convert the released PSA Cityscapes checkpoints (NVIDIA semantic-segmentation format) into
checkpoints of :class:`mmattn.models.HierarchicalMultiScaleSegmentor` configs.

The released checkpoints (DeLightCMU/PSA README: HRNetV2-OCR + PSA_p, 86.95 mIoU, and + PSA_s,
86.72) are state dicts of NVIDIA semantic-segmentation's ``ocrnet.HRNet_Mscale`` (``MscaleOCR``
in ``network/ocrnet.py``) with the PSA repo's ``network/hrnetv2.py`` as trunk, saved from a
DataParallel/DDP wrapper (``module.`` prefix), under ``state_dict`` next to ``optimizer``,
``epoch`` ... or at the top level. Three groups of keys:

``module.backbone.*``
    HRNetV2 (``conv1/bn1/conv2/bn2``, ``layer1``, ``transition1..3``,
    ``stage2..4.{m}.branches.{b}.{k}.*``, ``stage*.{m}.fuse_layers.{i}.{j}.*``), with a PSA
    block ``deattn`` in every BasicBlock. mmseg's HRNet has the same names and shapes, and
    ``AttentionBackbone`` with the ``'released'`` plugin preset adds ``deattn`` under the same
    name, so these keys map to ``backbone.*`` unchanged.
``module.ocr.*``
    NVIDIA's ``OCR_block``; mapped to mmseg's cascade of an ``FCNHead`` (``decode_head.0``,
    soft object regions) and an OCR head (``decode_head.1``), see :data:`OCR_RULES`. The two
    convolutions followed by BatchNorm that carry a bias in the release (``conv3x3_ocr.0``,
    ``aux_head.0``) have none in mmcv's ConvModule: the bias is folded into the BN running mean
    (``BN(Wx + b) = BN'(Wx)`` with ``running_mean' = running_mean - b``; exact).
``module.scale_attn.*``
    the hierarchical multi-scale attention head, mapped to ``scale_attn_head.*``.

The PSA variant follows from the keys: ``deattn.conv_up.weight`` (one conv) is PSA_p,
``deattn.conv_up.0.weight`` (bottleneck with LayerNorm) is PSA_s.
"""
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

__all__ = [
    'ConversionError', 'CONFIGS', 'OCR_RULES', 'SCALE_ATTN_RULES', 'load_released_state_dict',
    'detect_variant', 'convert_state_dict', 'check_against_model', 'convert_checkpoint',
    'default_config'
]

#: evaluation config (relative to the repository root) for each variant
CONFIGS = {
    'PSA_p': 'configs/psa/hms-ocrnet_hr48-psa-p_cityscapes-1024x2048.py',
    'PSA_s': 'configs/psa/hms-ocrnet_hr48-psa-s_cityscapes-1024x2048.py',
}

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'

#: (released key regex after ``ocr.``, mmseg key template) - ``\1``.. are the regex groups
OCR_RULES: List[Tuple[str, str]] = [
    # soft object regions: Conv(bias) - BN - ReLU - Conv(bias)
    (r'aux_head\.0\.weight', 'decode_head.0.convs.0.conv.weight'),
    (r'aux_head\.1\.0\.' + _BN, r'decode_head.0.convs.0.bn.\1'),
    (r'aux_head\.2\.(weight|bias)', r'decode_head.0.conv_seg.\1'),
    # OCR head
    (r'conv3x3_ocr\.0\.weight', 'decode_head.1.bottleneck.conv.weight'),
    (r'conv3x3_ocr\.1\.0\.' + _BN, r'decode_head.1.bottleneck.bn.\1'),
    (r'ocr_distri_head\.object_context_block\.f_pixel\.([02])\.weight',
     lambda m: f'decode_head.1.object_context_block.query_project.{int(m[1]) // 2}.conv.weight'),
    (r'ocr_distri_head\.object_context_block\.f_pixel\.([13])\.0\.' + _BN,
     lambda m: f'decode_head.1.object_context_block.query_project.{int(m[1]) // 2}.bn.{m[2]}'),
    (r'ocr_distri_head\.object_context_block\.f_object\.([02])\.weight',
     lambda m: f'decode_head.1.object_context_block.key_project.{int(m[1]) // 2}.conv.weight'),
    (r'ocr_distri_head\.object_context_block\.f_object\.([13])\.0\.' + _BN,
     lambda m: f'decode_head.1.object_context_block.key_project.{int(m[1]) // 2}.bn.{m[2]}'),
    (r'ocr_distri_head\.object_context_block\.f_down\.0\.weight',
     'decode_head.1.object_context_block.value_project.conv.weight'),
    (r'ocr_distri_head\.object_context_block\.f_down\.1\.0\.' + _BN,
     r'decode_head.1.object_context_block.value_project.bn.\1'),
    (r'ocr_distri_head\.object_context_block\.f_up\.0\.weight',
     'decode_head.1.object_context_block.out_project.conv.weight'),
    (r'ocr_distri_head\.object_context_block\.f_up\.1\.0\.' + _BN,
     r'decode_head.1.object_context_block.out_project.bn.\1'),
    (r'ocr_distri_head\.conv_bn_dropout\.0\.weight',
     'decode_head.1.object_context_block.bottleneck.conv.weight'),
    (r'ocr_distri_head\.conv_bn_dropout\.1\.0\.' + _BN,
     r'decode_head.1.object_context_block.bottleneck.bn.\1'),
    (r'cls_head\.(weight|bias)', r'decode_head.1.conv_seg.\1'),
]

#: biases of convolutions followed by BN: released key (after ``ocr.``) -> the mmseg BN whose
#: running mean absorbs it
FOLDED_BIASES = {
    'aux_head.0.bias': 'decode_head.0.convs.0.bn',
    'conv3x3_ocr.0.bias': 'decode_head.1.bottleneck.bn',
}

#: (released key regex after ``scale_attn.``, mmseg key template)
SCALE_ATTN_RULES: List[Tuple[str, str]] = [
    (r'conv([01])\.weight', r'scale_attn_head.convs.\1.conv.weight'),
    (r'bn([01])\.' + _BN, r'scale_attn_head.convs.\1.bn.\2'),
    (r'conv2\.weight', 'scale_attn_head.conv_attn.weight'),
]

#: keys of loss modules NVIDIA's model holds as ``self.criterion`` (class weights of a loss);
#: not model weights, dropped with a note
_IGNORED_PREFIXES = ('criterion.', )


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and lists the keys."""


def _list(keys, limit: int = 40) -> str:
    keys = sorted(keys)
    shown = '\n  '.join(keys[:limit])
    more = f'\n  ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return f'\n  {shown}{more}'


def load_released_state_dict(path: str) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict of a released checkpoint file, ``module.`` prefix removed.

    Loads with ``weights_only=True`` first; a checkpoint that pickles other objects (e.g. an
    argparse namespace) is loaded again without that restriction, as torch < 2.6 did: only
    convert files whose origin you trust.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    # truncated / corrupt files: one message naming the file (mmattn.utils.checkpoint)
    from mmattn.utils.checkpoint import CheckpointError, check_checkpoint_file
    try:
        check_checkpoint_file(path)
    except CheckpointError as error:
        raise ConversionError(str(error)) from None
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as safe_error:
        if 'Weights only load failed' not in str(safe_error):
            raise ConversionError(f'{path} is not a PyTorch checkpoint ({safe_error})') from None
        try:
            obj = torch.load(path, map_location='cpu', weights_only=False)
        except Exception as error:  # noqa: BLE001 - report any unpickling failure plainly
            raise ConversionError(f'{path} is not a loadable PyTorch checkpoint '
                                  f'({type(error).__name__}: {error})') from None
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f'{path} is not a PyTorch checkpoint '
                              f'({type(error).__name__}: {error})') from None
    state = obj.get('state_dict', obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        raise ConversionError(f'{path} holds a {type(obj).__name__}, not a state dict (a dict '
                              f'of tensors at the top level or under "state_dict")')
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f'{path}: the state dict has entries that are not tensors, so '
                              f'it is not a model state dict:{_list(map(str, not_tensors))}')
    out = OrderedDict()
    for key, value in state.items():
        out[key[len('module.'):] if key.startswith('module.') else key] = value
    return out


def detect_variant(state: Dict[str, torch.Tensor]) -> str:
    """'PSA_p' or 'PSA_s' from the ``deattn.conv_up`` keys."""
    parallel = [k for k in state if k.endswith('.deattn.conv_up.weight')]
    sequential = [k for k in state if k.endswith('.deattn.conv_up.0.weight')]
    if parallel and sequential:
        raise ConversionError(
            f'both PSA_p ({len(parallel)} deattn.conv_up.weight) and PSA_s '
            f'({len(sequential)} deattn.conv_up.0.weight) blocks found; a released checkpoint '
            f'has one variant')
    if parallel:
        return 'PSA_p'
    if sequential:
        return 'PSA_s'
    raise ConversionError(
        'no PSA block found (no key ending in deattn.conv_up.weight [PSA_p] or '
        'deattn.conv_up.0.weight [PSA_s]); this is not a released PSA checkpoint. First keys:'
        + _list(list(state)[:10]))


def _apply_rules(key: str, rules) -> Optional[str]:
    for pattern, target in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return target(match) if callable(target) else match.expand(target)
    return None


def convert_state_dict(state: Dict[str, torch.Tensor]
                       ) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """Map a released state dict (``module.`` removed) to the mmseg layout.

    Returns ``(converted, info)``; ``info`` has ``variant``, ``counts`` (per group) and
    ``ignored`` (dropped ``criterion.*`` keys). Raises :class:`ConversionError` listing every
    key no rule maps (and every bias whose BN is missing).
    """
    variant = detect_variant(state)
    out = OrderedDict()
    counts = OrderedDict(backbone=0, psa=0, ocr=0, scale_attn=0, folded_biases=0)
    leftover, ignored, biases = [], [], {}
    for key, value in state.items():
        if key.startswith(_IGNORED_PREFIXES):
            ignored.append(key)
            continue
        if key.startswith('backbone.'):
            out[key] = value
            counts['psa' if '.deattn.' in key else 'backbone'] += 1
            continue
        target = None
        if key.startswith('ocr.'):
            sub = key[len('ocr.'):]
            if sub in FOLDED_BIASES:
                biases[sub] = value
                continue
            target = _apply_rules(sub, OCR_RULES)
            group = 'ocr'
        elif key.startswith('scale_attn.'):
            target = _apply_rules(key[len('scale_attn.'):], SCALE_ATTN_RULES)
            group = 'scale_attn'
        if target is None:
            leftover.append(key)
            continue
        out[target] = value
        counts[group] += 1
    if leftover:
        raise ConversionError(f'{len(leftover)} key(s) of the {variant} checkpoint have no '
                              f'counterpart in the mmseg model:{_list(leftover)}')
    absent = [f'ocr.{sub}' for sub, bn in FOLDED_BIASES.items()
              if sub not in biases and f'{bn}.running_mean' in out]
    if absent:
        raise ConversionError(f'{len(absent)} released key(s) missing from the {variant} '
                              f'checkpoint (a conv bias in front of a BatchNorm):{_list(absent)}')
    for sub, bias in biases.items():
        mean_key = FOLDED_BIASES[sub] + '.running_mean'
        if mean_key not in out:
            raise ConversionError(f'ocr.{sub} cannot be folded: its BatchNorm running mean '
                                  f'(released {sub.replace(".0.bias", ".1.0.running_mean")}) '
                                  f'is missing')
        if out[mean_key].shape != bias.shape:
            raise ConversionError(f'ocr.{sub} has shape {tuple(bias.shape)} but its BatchNorm '
                                  f'has {tuple(out[mean_key].shape)} channels')
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)
        counts['folded_biases'] += 1
    return out, dict(variant=variant, counts=counts, ignored=ignored)


def check_against_model(converted: Dict[str, torch.Tensor], model: torch.nn.Module,
                        variant: Optional[str] = None) -> List[str]:
    """Raise :class:`ConversionError` unless ``converted`` has exactly the model's keys with
    its shapes. ``num_batches_tracked`` counters absent from the checkpoint (BN saved by old
    torch) are added as 0 and returned by name."""
    expected = model.state_dict()
    filled = []
    for key, value in expected.items():
        if key.endswith('num_batches_tracked') and key not in converted:
            converted[key] = torch.zeros_like(value)
            filled.append(key)
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    wrong = [f'{k}: checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)}'
             for k, v in expected.items() if k in converted and converted[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} model key(s) missing from the checkpoint:'
                        f'{_list(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} checkpoint key(s) the model does not have:'
                        f'{_list(unexpected)}')
    if wrong:
        problems.append(f'{len(wrong)} shape mismatch(es):{_list(wrong)}')
    if problems:
        what = f'the {variant} checkpoint' if variant else 'the checkpoint'
        raise ConversionError(f'{what} does not match the model of the config:\n' +
                              '\n'.join(problems))
    return filled


def default_config(variant: str, root: Optional[str] = None) -> str:
    """Path of the evaluation config for ``variant`` in the repository ``root`` (default: the
    shipped configs, of the installed package or of the checkout)."""
    if root is not None:
        return osp.join(root, CONFIGS[variant])
    from mmattn.utils.paths import configs_root
    return osp.join(configs_root(), CONFIGS[variant][len('configs/'):])


def build_model(config: str) -> torch.nn.Module:
    """The (randomly initialised, CPU) segmentor of an mmseg ``config``."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import mmattn  # noqa: F401  (registers the modules)
    cfg = Config.fromfile(config)
    model_cfg = cfg.model
    model_cfg.pop('pretrained', None)
    model_cfg.get('backbone', {}).pop('init_cfg', None)
    from mmseg.registry import MODELS
    scope = cfg.get('default_scope', 'mmseg')
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(model_cfg)


def convert_checkpoint(src: str, dst: str, config: Optional[str] = None,
                       log=print) -> dict:
    """Convert the released checkpoint ``src`` into an mmseg checkpoint ``dst`` for
    ``config`` (default: the evaluation config of the detected variant), checking it against
    the config's model (every key, every shape). Returns the info dict (``variant``,
    ``counts``, ``config``, ``ignored``, ``filled``)."""
    state = load_released_state_dict(src)
    converted, info = convert_state_dict(state)
    variant = info['variant']
    config = config or default_config(variant)
    if not osp.isfile(config):
        raise ConversionError(f'config {config} not found')
    model = build_model(config)
    filled = check_against_model(converted, model, variant)
    meta = dict(converted_from=osp.basename(src), variant=variant, config=osp.basename(config),
                converter='mmattn.convert.official_psa',
                note='NVIDIA semantic-segmentation MscaleOCR (HRNetV2 + PSA) -> '
                'HierarchicalMultiScaleSegmentor; conv biases before BN folded into '
                'running_mean')
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(state_dict=converted, meta=meta), dst)
    info.update(config=config, filled=filled, total=len(converted))
    counts = ', '.join(f'{k} {v}' for k, v in info['counts'].items())
    log(f'variant: {variant}')
    log(f'converted {len(state)} released tensors -> {len(converted)} mmseg tensors '
        f'({counts})')
    if info['ignored']:
        log(f'dropped {len(info["ignored"])} loss-module key(s): {", ".join(info["ignored"])}')
    if filled:
        log(f'added {len(filled)} num_batches_tracked counter(s) the checkpoint lacked')
    log(f'saved {dst}')
    log(f'evaluate with: python tools/test.py {config} {dst}')
    return info
