"""Draw what the attention modules of a segmentation, pose or detection model do on one image.

    python tools/analysis/visualize_attention.py CONFIG CHECKPOINT IMAGE [--out-dir DIR] \
        [--device cpu] [--cfg-options k=v ...] [--bbox X Y W H] [--sort-channels] \
        [--cmap turbo] [--alpha 0.5] [--dpi 100]

CHECKPOINT may be ``none`` to look at an untrained model. The task is read from the config's
``default_scope``: an mmseg config runs the model's test pipeline on the image
(``mmseg.apis.inference_model``, whole-image inference); an mmpose top-down config runs
``mmpose.apis.inference_topdown`` with the whole image, or ``--bbox`` (x y w h in pixels), as
the person box (without flip test); an mmdet config runs ``mmdet.apis.inference_detector``
(the test pipeline's resize and padding). Other scopes are refused with one line.

Every mmattn attention module in the model is found, its input captured during that one
inference, and its maps computed (``mmattn.visualization.attention_maps``): the module's own
gates where it exposes them (PSA: ``a_sp`` and ``a_ch``), else the gain ``|out| / |x|``
averaged over channels / positions (an approximation). Modules are grouped by the stage,
branch and block their path names (``backbone.stage3.2.branches.1.3.deattn``: stage 3,
branch 1, module 2 / block 3). Written to ``--out-dir``:

* ``stage{s}_spatial.png``: rows = branches, columns = blocks; each panel the spatial map
  upsampled onto the image the network saw (after resize / crop / padding), the module path
  and the map's own min/max in the title.
* ``stage{s}_channel.png``: the same grid, each panel the channel weights as bars from 0
  (channel order, or sorted with ``--sort-channels``), min/max and mean in the title.
* ``summary.png``: the network input and, per stage, the spatial map of the last block of
  each branch.

All panels of a run share one scale, stated on the figures: colours (spatial) and y axes
(channel) span ``min(0, lowest value)`` to ``max(1, highest value)`` over every module's maps,
i.e. [0, 1] for gates. A gate that barely varies looks flat, and the numbers in the titles say
by how much it varies (a per-panel scale would stretch a 1e-5 variation into full colour).
* ``attention_stats.json``: per module its path, type, stage/branch/block, channels, feature
  size, where the maps came from, and min/max/mean/std of the spatial and channel maps.
"""
import argparse
import importlib.util
import json
import math
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TASKS = ('mmseg', 'mmpose', 'mmdet')
FALLBACK_SOURCE = 'gain |out|/|x| (approximation)'


class VisualizeError(RuntimeError):
    """A problem with the user's input, reported as one clear message."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Save PNGs of what the attention modules of a model do on an image: '
        'spatial maps overlaid on the image and channel weights as bars, per stage.')
    parser.add_argument('config', help='mmseg, mmpose (top-down) or mmdet config file')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none' for an untrained model")
    parser.add_argument('image', help='image file')
    parser.add_argument('--out-dir', default=None,
                        help='where to write (default: work_dirs/attention_maps/<config name>)')
    parser.add_argument('--device', default=None,
                        help="device, e.g. 'cpu' or 'cuda:0' (default: cuda:0 if available)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy format')
    parser.add_argument('--bbox', nargs=4, type=float, metavar=('X', 'Y', 'W', 'H'),
                        help='person box for a pose model (default: the whole image)')
    parser.add_argument('--sort-channels', action='store_true',
                        help='sort channel weights in descending order (default: channel order)')
    parser.add_argument('--cmap', default='turbo', help='matplotlib colormap of the maps')
    parser.add_argument('--alpha', type=float, default=0.55,
                        help='opacity of the maps over the image (0-1)')
    parser.add_argument('--dpi', type=int, default=100, help='resolution of the PNGs')
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs
def check_inputs(args) -> Optional[str]:
    """Fail early, before anything heavy is imported, on paths that do not exist. Returns the
    checkpoint path or None for 'none'."""
    if not osp.isfile(args.config):
        raise VisualizeError(f'config file not found: {args.config}')
    if not osp.isfile(args.image):
        raise VisualizeError(f'image file not found: {args.image}')
    if args.bbox is not None and (args.bbox[2] <= 0 or args.bbox[3] <= 0):
        raise VisualizeError(f'--bbox X Y W H needs a positive width and height, got '
                             f'{args.bbox}')
    if not 0 <= args.alpha <= 1:
        raise VisualizeError(f'--alpha must be in [0, 1], got {args.alpha}')
    if args.checkpoint.lower() == 'none':
        return None
    if args.checkpoint.startswith(('http://', 'https://', 's3://')):
        return args.checkpoint
    if not osp.isfile(args.checkpoint):
        raise VisualizeError(f"checkpoint file not found: {args.checkpoint} (pass 'none' to "
                             f'visualise the untrained model)')
    return args.checkpoint


def read_image(path: str) -> np.ndarray:
    import mmcv
    try:
        img = mmcv.imread(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the user
        raise VisualizeError(f'cannot read image {path}: {e}') from e
    if img is None or img.size == 0:
        raise VisualizeError(f'cannot read image {path} (not an image file?)')
    return img


def load_config(args):
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(args.config)
    except Exception as e:  # noqa: BLE001
        raise VisualizeError(f'cannot load config {args.config}: {type(e).__name__}: {e}') from e
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    task = cfg.get('default_scope')
    if task not in TASKS:
        raise VisualizeError(f'config default_scope is {task!r}; this tool runs configs of '
                             f'{TASKS} (mmseg segmentors, mmpose top-down estimators, mmdet '
                             f'detectors)')
    if importlib.util.find_spec(task) is None:
        raise VisualizeError(f'config default_scope is {task!r}, but the package {task!r} is '
                             f'not installed')
    notes = []
    if task == 'mmseg':
        test_cfg = cfg.model.get('test_cfg') or {}
        if test_cfg.get('mode', 'whole') != 'whole':
            # one forward over the whole image, so each module has one map to draw
            cfg.model.test_cfg = dict(mode='whole')
            notes.append(f"test_cfg mode '{test_cfg.get('mode')}' replaced by 'whole'")
        if args.bbox is not None:
            raise VisualizeError('--bbox is for pose (mmpose top-down) configs; this is an '
                                 'mmseg config')
    elif task == 'mmdet':
        if args.bbox is not None:
            raise VisualizeError('--bbox is for pose (mmpose top-down) configs; this is an '
                                 'mmdet config')
    else:
        if cfg.model.get('type') != 'TopdownPoseEstimator':
            raise VisualizeError(f'only top-down pose configs are supported; this model is '
                                 f"{cfg.model.get('type')}")
        test_cfg = cfg.model.get('test_cfg') or {}
        if test_cfg.get('flip_test'):
            # the flipped pass would run every module a second time
            cfg.model.test_cfg.flip_test = False
            notes.append('flip test disabled')
    return cfg, task, notes


def build_model(cfg, task: str, checkpoint: Optional[str], device: str):
    if task == 'mmseg':
        from mmseg.apis import init_model
    elif task == 'mmdet':
        from mmdet.apis import init_detector as init_model
    else:
        from mmpose.apis import init_model
    model = init_model(cfg, None, device=device)
    if checkpoint is None:
        return model, None
    from mmengine.runner import load_checkpoint
    try:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu')
    except Exception as e:  # noqa: BLE001
        raise VisualizeError(f'cannot load checkpoint {checkpoint}: {type(e).__name__}: '
                             f'{e}') from e
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    keys = {k[len('module.'):] if k.startswith('module.') else k for k in state}
    return model, keys


def run_inference(model, task: str, image: str, bbox: Optional[Sequence[float]]):
    if task == 'mmseg':
        from mmseg.apis import inference_model
        return inference_model(model, image)
    if task == 'mmdet':
        from mmdet.apis import inference_detector
        return inference_detector(model, image)
    from mmpose.apis import inference_topdown
    bboxes = None
    if bbox is not None:
        x, y, w, h = bbox
        bboxes = np.array([[x, y, x + w, y + h]], dtype=np.float32)
    return inference_topdown(model, image, bboxes=bboxes, bbox_format='xyxy')


def network_image(model, inputs) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image the backbone saw, from its normalised input tensor."""
    t = inputs[0].detach().float().cpu()
    dp = getattr(model, 'data_preprocessor', None)
    if getattr(dp, '_enable_normalize', False):
        t = t * dp.std.detach().float().cpu().view(-1, 1, 1) \
            + dp.mean.detach().float().cpu().view(-1, 1, 1)
    converted = getattr(dp, 'channel_conversion', getattr(dp, '_channel_conversion', False))
    img = t.permute(1, 2, 0).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif not converted:
        img = img[..., ::-1]  # images are loaded as BGR
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- collection
def collect(model, sites, recorded) -> List[dict]:
    """Maps and stats of every site (sample 0 of the batch)."""
    from mmattn.visualization import attention_maps, has_own_maps, map_stats
    records = []
    for site in sites:
        rec = OrderedDict(
            path=site.path, type=site.kind,
            stage=site.group if isinstance(site.group, int) else None,
            group=site.group, branch=site.branch, block=site.block,
            channels=getattr(site.module, 'in_channels', None), feature_size=None,
            source=None, spatial=None, channel=None)
        entry = dict(site=site, record=rec, spatial=None, channel=None)
        if site.path not in recorded:
            rec['source'] = 'not run during inference'
            records.append(entry)
            continue
        x, out = recorded[site.path]
        rec['channels'] = int(x.shape[1])
        rec['feature_size'] = [int(x.shape[2]), int(x.shape[3])]
        rec['source'] = 'module.attention_maps' if has_own_maps(site.module) else \
            FALLBACK_SOURCE
        maps = attention_maps(site.module, x, out=out, precise=True)
        for key in ('spatial', 'channel'):
            value = maps.get(key)
            if value is not None:
                value = value[0].detach().double().cpu()
                entry[key] = value
            rec[key] = map_stats(value)
        records.append(entry)
    return records


def group_key(group) -> tuple:
    return (0, group, '') if isinstance(group, int) else (1, 0, str(group))


def group_label(group) -> str:
    return f'stage {group}' if isinstance(group, int) else str(group)


def group_file(group) -> str:
    return f'stage{group}' if isinstance(group, int) else ''.join(
        c if c.isalnum() or c in '-_' else '_' for c in str(group))


def layout(entries: List[dict]):
    """Grid of one group: ``(branches, blocks, {(branch, block): entry})`` in model order."""
    branches, blocks, cells = [], [], {}
    for e in entries:
        site = e['site']
        if site.branch not in branches:
            branches.append(site.branch)
        if site.block not in blocks:
            blocks.append(site.block)
        cells[(site.branch, site.block)] = e
    return sorted(branches), blocks, cells


# ----------------------------------------------------------------------------- drawing
def _upsample(m, size):
    import torch
    import torch.nn.functional as F
    t = m[None, None].double()
    nan = torch.isnan(t)
    if nan.any():
        # interpolate the finite values, keep undefined positions undefined
        filled = torch.where(nan, torch.zeros_like(t), t)
        up = F.interpolate(filled, size=size, mode='bilinear', align_corners=False)
        mask = F.interpolate(nan.float(), size=size, mode='nearest') > 0
        up[mask] = float('nan')
        return up[0, 0].numpy()
    return F.interpolate(t, size=size, mode='bilinear', align_corners=False)[0, 0].numpy()


def _decimals(lo: float, hi: float) -> int:
    """Decimal places that tell ``lo`` and ``hi`` apart (gates often vary in the 4th-7th
    decimal of values near 0.5)."""
    span = abs(hi - lo)
    if span == 0 or not math.isfinite(span):
        return 3
    return int(min(9, max(2, math.ceil(-math.log10(span)) + 1)))


def _fmt(v: float, d: int = 4) -> str:
    return f'{v:.{d}f}' if abs(v) < 1e4 else f'{v:.4g}'


def _range_text(s: dict) -> str:
    if s['min'] == s['max']:
        return f"constant {_fmt(s['min'], 3)}"
    d = _decimals(s['min'], s['max'])
    return f"min {_fmt(s['min'], d)}  max {_fmt(s['max'], d)}"


def value_scale(maps) -> Tuple[float, float]:
    """One scale for every panel of a run: from ``min(0, lowest value)`` to ``max(1, highest
    value)`` over the finite values of ``maps``. Gates (sigmoid, softmax) lie in [0, 1] and are
    shown on that whole range, so a gate that varies by 1e-5 looks flat and a sharp one does
    not; gains of the approximate maps above 1 widen the top."""
    import torch
    lo, hi = 0.0, 1.0
    for m in maps:
        if m is None:
            continue
        v = m.detach().double().flatten()
        v = v[torch.isfinite(v)]
        if v.numel():
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    return lo, hi


def _norm(scale):
    from matplotlib import colors
    return colors.Normalize(vmin=scale[0], vmax=scale[1])


def _overlay(ax, image_grey, m, cmap, alpha, scale):
    """Draw map ``m`` upsampled over the grey image on the shared ``scale``, blended into one
    RGB image (one image artist per panel draws much faster than two)."""
    from matplotlib import colormaps
    h, w = image_grey.shape
    up = _upsample(m, (h, w))
    vmin, vmax = scale
    cmap = colormaps[cmap] if isinstance(cmap, str) else cmap
    coloured = cmap(np.clip((np.nan_to_num(up, nan=vmin) - vmin) / (vmax - vmin), 0, 1))[..., :3]
    a = np.where(np.isfinite(up), alpha, 0.0)[..., None]
    grey = (image_grey / 255.0)[..., None]
    ax.imshow((1 - a) * grey + a * coloured, interpolation='antialiased')
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar(fig, axes, cmap, scale, label):
    """One colorbar for all panels of a figure, labelled with the shared scale."""
    from matplotlib import cm, colormaps
    cmap = colormaps[cmap] if isinstance(cmap, str) else cmap
    cb = fig.colorbar(cm.ScalarMappable(norm=_norm(scale), cmap=cmap), ax=axes,
                      fraction=0.03, pad=0.01, shrink=0.9)
    cb.set_label(label, fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return cb


def _scale_text(scale) -> str:
    return f'{_fmt(scale[0], 2)} to {_fmt(scale[1], 2)}'


def _grey(image: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    # lift and compress the contrast so the colour map stays readable over the image
    return 60 + 0.6 * grey


def _panel_inches(image: np.ndarray, width: float = 2.6):
    h, w = image.shape[:2]
    return width, width * h / w


def _row_label(ax, text):
    ax.set_ylabel(text, fontsize=7)


def _approx_note(entries) -> str:
    kinds = sorted({e['site'].kind for e in entries if e['record']['source'] == FALLBACK_SOURCE})
    return f"\napproximate maps, {FALLBACK_SOURCE.split(' (')[0]}: {', '.join(kinds)}" \
        if kinds else ''


def _label_axes(ax, text):
    """A text-only axes holding a row label (a y label beside an image axes of fixed aspect
    can end up outside the canvas under constrained layout)."""
    ax.axis('off')
    ax.text(0.5, 0.5, text, rotation=90, ha='center', va='center', fontsize=7,
            transform=ax.transAxes)


def _sub_title(kind_scale_label, entries, scale) -> str:
    return (f'rows: branches, columns: blocks; each title: that map\'s own range\n'
            f'one {kind_scale_label} for all panels: {_scale_text(scale)}{_approx_note(entries)}')


def draw_spatial(path, group, entries, image, args, title_suffix, scale):
    """The spatial maps of one group on the shared colour ``scale``; returns the figure."""
    import matplotlib.pyplot as plt
    branches, blocks, cells = layout(entries)
    pw, ph = _panel_inches(image)
    fig, axes = plt.subplots(len(branches), len(blocks) + 1, squeeze=False,
                             figsize=(max(5.0, 0.35 + len(blocks) * (pw + 0.3) + 0.9),
                                      len(branches) * (ph + 0.45) + 0.9),
                             gridspec_kw=dict(width_ratios=[0.35] + [pw + 0.3] * len(blocks)),
                             layout='constrained')
    grey = _grey(image)
    for i, b in enumerate(branches):
        first = next(cells[(b, k)] for k in blocks if (b, k) in cells)['record']
        size = 'x'.join(str(v) for v in first['feature_size'])
        _label_axes(axes[i][0], f"branch {b}\n{first['channels']} ch, {size}")
        for j, k in enumerate(blocks):
            ax = axes[i][j + 1]
            e = cells.get((b, k))
            if e is None or e['spatial'] is None:
                ax.axis('off')
                if e is not None:
                    ax.set_title(f"{e['site'].short_path}\nno spatial map", fontsize=6)
                continue
            _overlay(ax, grey, e['spatial'], args.cmap, args.alpha, scale)
            s = e['record']['spatial']
            ax.set_title(f"{e['site'].short_path}\n{_range_text(s)}", fontsize=6)
    _colorbar(fig, axes[:, 1:].ravel().tolist(), args.cmap, scale, 'spatial map value')
    types = sorted({e['site'].kind for e in entries})
    fig.suptitle(f"{group_label(group).capitalize()}: spatial attention ({', '.join(types)})\n"
                 f'{title_suffix}\n{_sub_title("colour scale", entries, scale)}', fontsize=8)
    fig.savefig(path, dpi=args.dpi)
    return fig


def _bars(ax, values, bottom, colours):
    """A bar chart as one PolyCollection (hundreds of Rectangle patches draw slowly)."""
    from matplotlib.collections import PolyCollection
    x = np.arange(values.size, dtype=float)
    verts = np.stack([np.stack([x - 0.5, np.full_like(x, bottom)], -1),
                      np.stack([x - 0.5, values], -1),
                      np.stack([x + 0.5, values], -1),
                      np.stack([x + 0.5, np.full_like(x, bottom)], -1)], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=colours, edgecolors='none',
                                     linewidths=0, antialiaseds=False))


def draw_channel(path, group, entries, image, args, title_suffix, scale):
    """The channel weights of one group as bars from 0, every panel's y axis spanning the
    shared ``scale``; returns the figure."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib import colormaps
    branches, blocks, cells = layout(entries)
    cmap = colormaps[args.cmap]
    norm = _norm(scale)
    fig, axes = plt.subplots(len(branches), len(blocks), squeeze=False,
                             figsize=(max(5.0, len(blocks) * 2.8), len(branches) * 1.9 + 0.9),
                             layout='constrained')
    for i, b in enumerate(branches):
        for j, k in enumerate(blocks):
            ax = axes[i][j]
            e = cells.get((b, k))
            if e is None or e['channel'] is None:
                ax.axis('off')
                if e is not None:
                    ax.set_title(f"{e['site'].short_path}\nno channel weights", fontsize=6)
                continue
            v = e['channel'].numpy()
            if args.sort_channels:
                v = np.sort(np.where(np.isnan(v), -np.inf, v))[::-1]
                v = np.where(np.isinf(v), np.nan, v)
            colours = cmap(norm(np.nan_to_num(v, nan=0.0)))
            _bars(ax, np.nan_to_num(v, nan=0.0), 0.0, colours)
            s = e['record']['channel']
            ax.axhline(s['mean'], color='k', linestyle='--', linewidth=0.7)
            ax.set_ylim(*scale)
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
            ax.set_xlim(-0.5, v.size - 0.5)
            ax.tick_params(labelsize=6)
            d = _decimals(s['min'], s['max'])
            ax.set_title(f"{e['site'].short_path}\n{_range_text(s)}  mean {_fmt(s['mean'], d)}",
                         fontsize=6)
            if i == len(branches) - 1 or cells.get((branches[i + 1], k)) is None:
                ax.set_xlabel('channel (sorted)' if args.sort_channels else 'channel',
                              fontsize=6)
            if j == 0 or cells.get((b, blocks[j - 1])) is None:
                _row_label(ax, f"branch {b}\n({e['record']['channels']} ch)")
    types = sorted({e['site'].kind for e in entries})
    fig.suptitle(f"{group_label(group).capitalize()}: channel attention ({', '.join(types)})\n"
                 f'{title_suffix}\n{_sub_title("y axis", entries, scale)}; bars from 0, '
                 f'dashed line: mean', fontsize=8)
    fig.savefig(path, dpi=args.dpi)
    return fig


def draw_summary(path, groups: Dict, image, args, title_suffix, scale):
    """The network input and the spatial map of the last block of each branch per group, on
    the shared colour ``scale``; returns the figure."""
    import matplotlib.pyplot as plt
    rows = []
    for group, entries in groups.items():
        branches, blocks, cells = layout(entries)
        last = []
        for b in branches:
            with_map = [cells[(b, k)] for k in blocks
                        if (b, k) in cells and cells[(b, k)]['spatial'] is not None]
            last.append((b, with_map[-1] if with_map else None))
        rows.append((group, last))
    ncols = max([len(last) for _, last in rows] + [1])
    pw, ph = _panel_inches(image, 2.4)
    iw = 1.6 * pw  # the input image, larger
    fig = plt.figure(figsize=(iw + ncols * (pw + 0.3) + 0.9,
                              max(1, len(rows)) * (ph + 0.45) + 0.8), layout='constrained')
    gs = fig.add_gridspec(max(1, len(rows)), ncols + 1,
                          width_ratios=[iw / (pw + 0.3)] + [1.0] * ncols)
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(image)
    ax.set_title(f'network input ({image.shape[0]}x{image.shape[1]})', fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    grey = _grey(image)
    panels = []
    for i, (group, last) in enumerate(rows):
        for j, (b, e) in enumerate(last):
            ax = fig.add_subplot(gs[i, j + 1])
            if e is None:
                ax.axis('off')
                ax.set_title(f'{group_label(group)}, branch {b}: no spatial map', fontsize=6)
                continue
            _overlay(ax, grey, e['spatial'], args.cmap, args.alpha, scale)
            panels.append(ax)
            s = e['record']['spatial']
            ax.set_title(f"{group_label(group)}, branch {b}: {e['site'].block}\n"
                         f'{_range_text(s)}', fontsize=6)
    if panels:
        _colorbar(fig, panels, args.cmap, scale, 'spatial map value')
    fig.suptitle(f'Spatial attention of the last block of each branch\n{title_suffix}\n'
                 f'one colour scale for all panels: {_scale_text(scale)}', fontsize=8)
    fig.savefig(path, dpi=args.dpi)
    return fig


# ----------------------------------------------------------------------------- main
def default_out_dir(config: str) -> str:
    return osp.join('work_dirs', 'attention_maps', osp.splitext(osp.basename(config))[0])


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the tool; returns ``dict(files=[written paths], stats=<the JSON content>)``.
    Raises :class:`VisualizeError` for problems with the inputs."""
    args = parse_args(argv)
    checkpoint = check_inputs(args)
    read_image(args.image)

    import matplotlib
    matplotlib.use('Agg')
    import torch

    import mmattn  # noqa: F401 - registers the modules, fixes checkpoint loading
    from mmattn.visualization import attention_classes, capture_inputs, find_attention_modules

    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    cfg, task, notes = load_config(args)
    model, ckpt_keys = build_model(cfg, task, checkpoint, device)

    classes = attention_classes()
    sites = find_attention_modules(model, classes)
    if not sites:
        plugins = getattr(getattr(model, 'backbone', None), 'attention_plugins', None)
        raise VisualizeError(
            f'no attention modules found in the model of {args.config}: searched '
            f'{sum(1 for _ in model.modules())} modules of {type(model).__name__} for instances '
            f"of mmattn's attention classes ({', '.join(classes)}); "
            f'backbone.attention_plugins = {plugins!r}. Add them with '
            f"backbone=dict(type='AttentionBackbone', plugins=[...]) or an AttentionNeck.")

    if ckpt_keys is not None:
        untrained = [s.path for s in sites
                     if not any(k.startswith(s.path + '.') for k in ckpt_keys)
                     and any(True for _ in s.module.parameters())]
        if untrained:
            notes.append(f'{len(untrained)} of {len(sites)} attention modules have no weights '
                         f'in the checkpoint and are untrained (e.g. {untrained[0]})')

    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        raise VisualizeError(f'{type(model).__name__} has no backbone to read the network '
                             f'input from')
    with torch.no_grad(), capture_inputs(sites, extra={'<input>': backbone}) as cap:
        run_inference(model, task, args.image, args.bbox)
    if '<input>' not in cap.recorded:
        raise VisualizeError('the inference did not run the backbone')
    image = network_image(model, cap.recorded['<input>'][0])
    records = collect(model, sites, cap.recorded)

    out_dir = args.out_dir or default_out_dir(args.config)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_name = 'untrained' if checkpoint is None else osp.basename(checkpoint)
    suffix = f'{osp.basename(args.config)} ({ckpt_name})'

    groups: Dict = OrderedDict()
    for e in sorted((e for e in records if e['record']['feature_size'] is not None),
                    key=lambda e: group_key(e['site'].group)):
        groups.setdefault(e['site'].group, []).append(e)

    import matplotlib.pyplot as plt
    spatial_scale = value_scale(e['spatial'] for e in records)
    channel_scale = value_scale(e['channel'] for e in records)
    files = []
    for group, entries in groups.items():
        if any(e['spatial'] is not None for e in entries):
            path = osp.join(out_dir, f'{group_file(group)}_spatial.png')
            plt.close(draw_spatial(path, group, entries, image, args, suffix, spatial_scale))
            files.append(path)
        if any(e['channel'] is not None for e in entries):
            path = osp.join(out_dir, f'{group_file(group)}_channel.png')
            plt.close(draw_channel(path, group, entries, image, args, suffix, channel_scale))
            files.append(path)
    path = osp.join(out_dir, 'summary.png')
    plt.close(draw_summary(path, groups, image, args, suffix, spatial_scale))
    files.append(path)

    stats = OrderedDict(
        config=args.config, checkpoint=checkpoint, image=args.image, task=task,
        bbox_xywh=args.bbox, input_size=[int(image.shape[0]), int(image.shape[1])],
        notes=notes, num_modules=len(records), modules=[e['record'] for e in records])
    path = osp.join(out_dir, 'attention_stats.json')
    with open(path, 'w') as f:
        json.dump(stats, f, indent=1)
    files.append(path)

    for note in notes:
        print(f'note: {note}')
    print(f'{len(sites)} attention modules ({", ".join(sorted({s.kind for s in sites}))}) in '
          f'{len(groups)} groups; network input {image.shape[0]}x{image.shape[1]} (HxW)')
    for path in files:
        print(f'wrote {path}')
    return dict(files=files, stats=stats)


if __name__ == '__main__':
    try:
        main()
    except VisualizeError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
