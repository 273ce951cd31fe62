"""Tiny synthetic datasets in the real Cityscapes and COCO-keypoints on-disk formats.

They are read unchanged by mmseg's ``CityscapesDataset`` and mmpose's ``CocoDataset`` and scored
by their real metrics (``IoUMetric`` / ``CityscapesMetric``, ``CocoMetric``). The content is
learnable: in the street scenes a class is identified by its colour (plus noise and texture, with
thin poles and small persons to test resolution); in the pose images each of the 17 COCO keypoints
is a small blob whose colour identifies the keypoint, on stick figures in random poses.

The ``context`` flavour of the street scenes (``make_tiny_cityscapes(..., flavour='context')``)
makes part of the label depend on a cue far from the pixel: a small sign in the top rows of the
image is white or orange, and every vehicle of the scene is a ``car`` or a ``truck`` accordingly,
while the vehicles themselves look the same for both classes. Only a model that relates the
vehicle pixels to the sign (tens of pixels away) can tell the two classes apart; a model whose
receptive field does not reach the sign can do no better than guess (see
:func:`cityscapes_sample` and its test).

Only numpy and OpenCV are needed, so this module is cheap to import and fast to run (well under a
second per dataset at the default sizes). Output is deterministic for a given seed.
"""
import colorsys
import json
import os
import os.path as osp

import cv2
import numpy as np

__all__ = [
    'make_tiny_cityscapes', 'cityscapes_sample', 'CITYSCAPES_FLAVOURS', 'CONTEXT_CUE_COLOURS', 'make_tiny_coco', 'CITYSCAPES_TRAINID_TO_LABELID',
    'CITYSCAPES_LABELID_TO_TRAINID', 'CITYSCAPES_LABEL_NAMES', 'COCO_KEYPOINT_NAMES',
    'COCO_SKELETON', 'COCO_KEYPOINT_COLORS', 'COCO_BBOX_FILE'
]

# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------

# The 19 evaluated classes of cityscapesscripts/helpers/labels.py: trainId -> (labelId, name).
# The names are those of mmseg's CityscapesDataset.METAINFO['classes'], in train-id order.
_CITYSCAPES_TRAIN_LABELS = [
    (7, 'road'), (8, 'sidewalk'), (11, 'building'), (12, 'wall'), (13, 'fence'), (17, 'pole'),
    (19, 'traffic light'), (20, 'traffic sign'), (21, 'vegetation'), (22, 'terrain'),
    (23, 'sky'), (24, 'person'), (25, 'rider'), (26, 'car'), (27, 'truck'), (28, 'bus'),
    (31, 'train'), (32, 'motorcycle'), (33, 'bicycle')
]
CITYSCAPES_TRAINID_TO_LABELID = {t: lid for t, (lid, _) in enumerate(_CITYSCAPES_TRAIN_LABELS)}
CITYSCAPES_TRAINID_TO_LABELID[255] = 0  # ignore -> 'unlabeled'
CITYSCAPES_LABELID_TO_TRAINID = {lid: t for t, lid in CITYSCAPES_TRAINID_TO_LABELID.items()}
CITYSCAPES_LABEL_NAMES = {lid: name for lid, name in _CITYSCAPES_TRAIN_LABELS}
CITYSCAPES_LABEL_NAMES[0] = 'unlabeled'

# train ids of the classes the scenes use
ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 8, 10, 11, 13
TRAFFIC_SIGN, TRUCK = 7, 14  # used by the 'context' flavour only
IGNORE = 255
# Cityscapes classes with instances (hasInstances=True) among those used
_INSTANCE_CLASSES = (PERSON, CAR)

# base colours (RGB); distinct enough that colour identifies the class under the noise below
_CS_COLOURS = {
    ROAD: (100, 100, 106),
    SIDEWALK: (142, 128, 118),
    BUILDING: (122, 86, 64),
    POLE: (205, 190, 60),
    VEGETATION: (72, 124, 56),
    SKY: (125, 170, 225),
    PERSON: (190, 55, 80),
    CAR: (50, 62, 150),
}

_CS_CITIES = {'train': ('aachen', 'bremen'), 'val': ('frankfurt', 'munster')}

CITYSCAPES_FLAVOURS = ('plain', 'context')
# 'context' flavour: sign colour (RGB) -> class of every vehicle in the scene. Far from every
# class colour above (and from each other) under the rendering noise, so the cue is unambiguous.
CONTEXT_CUE_COLOURS = {CAR: (245, 245, 245), TRUCK: (240, 120, 0)}


def _smooth_noise(rng, h, w, cells, amp):
    """Low-frequency noise: a coarse random grid upsampled bilinearly."""
    grid = rng.normal(0, amp, size=(cells[0], cells[1])).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def _cityscapes_scene(rng, h, w):
    """One street-like scene: returns (RGB uint8 image, trainId map, instance-id map)."""
    lab = np.full((h, w), SKY, np.uint8)
    inst = np.zeros((h, w), np.int32)  # instance index (1-based) per class, 0 = none
    inst_masks = []  # (class, instance index, mask), in drawing order

    horizon = int(round(rng.uniform(0.38, 0.52) * h))
    # buildings and trees along the horizon, left to right
    x = 0
    while x < w:
        bw = int(rng.integers(max(3, w // 10), max(4, w // 4)))
        kind = rng.choice(3, p=[0.55, 0.3, 0.15])  # building, tree, gap
        if kind == 0:
            top = int(rng.uniform(0.03, 0.7) * horizon)
            lab[top:horizon, x:x + bw] = BUILDING
        elif kind == 1:
            cy = int(horizon - rng.uniform(0.2, 0.5) * horizon)
            ry = int(max(2, rng.uniform(0.2, 0.4) * horizon))
            cv2.ellipse(lab, (x + bw // 2, cy), (max(2, bw // 2), ry), 0, 0, 360,
                        int(VEGETATION), -1)
            lab[cy:horizon, x:x + bw] = VEGETATION
        x += bw

    # road: a trapezoid from a vanishing point on the horizon; sidewalk beside it
    vp = rng.uniform(0.35, 0.65) * w
    spread_l, spread_r = rng.uniform(0.45, 0.9, size=2) * w
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    t = np.clip((ys - horizon) / max(1, h - 1 - horizon), 0, 1)
    left = vp - (0.03 * w + spread_l * t)
    right = vp + (0.03 * w + spread_r * t)
    ground = ys >= horizon
    lab[ground & (xs >= left) & (xs <= right)] = ROAD
    lab[ground & ((xs < left) | (xs > right))] = SIDEWALK

    # poles: thin vertical lines at the road edge (small objects)
    for _ in range(int(rng.integers(1, 3))):
        y_base = int(rng.integers(horizon + 1, h))
        tb = (y_base - horizon) / max(1, h - 1 - horizon)
        side = rng.choice([-1, 1])
        xb = vp + side * (0.03 * w + (spread_r if side > 0 else spread_l) * tb) + side * 2
        xb = int(np.clip(round(xb), 0, w - 2))
        pw = 1 if tb < 0.5 else 2
        ph = int((0.25 + 0.5 * tb) * h)
        lab[max(0, y_base - ph):y_base, xb:xb + pw] = POLE

    # cars on the road and persons on the sidewalk, drawn far to near
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        objects.append((CAR, int(rng.integers(horizon + 2, h))))
    for _ in range(int(rng.integers(1, 4))):
        objects.append((PERSON, int(rng.integers(horizon + 2, h))))
    objects.sort(key=lambda o: o[1])
    counts = {CAR: 0, PERSON: 0}
    for cls, yb in objects:
        tb = (yb - horizon) / max(1, h - 1 - horizon)
        lft, rgt = vp - (0.03 * w + spread_l * tb), vp + (0.03 * w + spread_r * tb)
        mask = np.zeros((h, w), np.uint8)
        if cls == CAR:
            cw = max(4, int((0.1 + 0.25 * tb) * w))
            ch = max(3, int(0.45 * cw))
            cx = rng.uniform(lft + cw / 2, max(lft + cw / 2 + 1, rgt - cw / 2))
            x0, x1 = int(cx - cw / 2), int(cx + cw / 2)
            mask[max(0, yb - ch):yb, max(0, x0):max(0, x1)] = 1  # body
            cv2.rectangle(mask, (x0 + cw // 5, yb - ch - ch // 2), (x1 - cw // 5, yb - ch), 1, -1)
        else:
            ph = max(5, int((0.12 + 0.3 * tb) * h))
            pw = max(2, int(0.35 * ph))
            # on a sidewalk with room for the person, or anywhere (crossing the road)
            spans = [(pw, lft - pw), (rgt + pw, w - 1 - pw)]
            spans = [sp for sp in spans if sp[1] > sp[0]]
            if not spans or rng.random() < 0.2:
                spans = [(pw, w - 1 - pw)]
            a, b = spans[int(rng.integers(len(spans)))]
            cx = int(round(rng.uniform(a, b)))
            cv2.ellipse(mask, (cx, yb - ph // 2), (max(1, pw // 2), max(2, ph // 2)), 0, 0, 360,
                        1, -1)
        mask = mask.astype(bool)
        if not mask.any():
            continue
        counts[cls] += 1
        lab[mask] = cls
        inst[mask] = 0
        inst_masks.append((cls, counts[cls], mask))

    # rebuild instance ids from the final (occlusion-resolved) label map
    for cls, k, mask in inst_masks:
        inst[mask & (lab == cls)] = k

    img = _cityscapes_render(rng, lab, inst, horizon)

    # ignore pixels: part of the border of every car and person
    for cls, k, mask in inst_masks:
        visible = (mask & (lab == cls) & (inst == k)).astype(np.uint8)
        if not visible.any():
            continue
        border = (cv2.dilate(visible, np.ones((3, 3), np.uint8)) > 0) & (
            cv2.erode(visible, np.ones((3, 3), np.uint8)) == 0)
        drop = border & (rng.random((h, w)) < 0.35)
        lab[drop] = IGNORE
        inst[drop] = 0
    return img, lab, inst


def _cityscapes_render(rng, lab, inst, horizon):
    h, w = lab.shape
    img = np.zeros((h, w, 3), np.float32)
    global_shift = rng.uniform(-12, 12, size=3)
    for cls, base in _CS_COLOURS.items():
        m = lab == cls
        if not m.any():
            continue
        colour = np.asarray(base, np.float32) + global_shift + rng.uniform(-8, 8, size=3)
        img[m] = colour
    # per-instance colour variation of cars and persons
    for cls in _INSTANCE_CLASSES:
        for k in np.unique(inst[lab == cls]):
            if k > 0:
                img[(lab == cls) & (inst == k)] += rng.uniform(-25, 25, size=3)
    ys, xs = np.mgrid[0:h, 0:w]
    # textures: sky gradient, building windows, blotchy vegetation, lane marks on the road
    sky = lab == SKY
    img[sky] += (ys[sky, None] / max(1, horizon) * 25.0)
    bld = lab == BUILDING
    period = int(rng.integers(4, 7))
    windows = bld & (ys % period < period // 2) & (xs % period < period // 2)
    img[windows] -= 35.0
    veg = lab == VEGETATION
    img[veg] += _smooth_noise(rng, h, w, (max(2, h // 6), max(2, w // 6)), 22)[veg][:, None]
    road = lab == ROAD
    lane_x = int(rng.integers(w // 3, 2 * w // 3))
    lanes = road & (np.abs(xs - lane_x) <= 0) & ((ys // 3) % 2 == 0)
    img[lanes] += 45.0
    # shading and per-pixel noise everywhere
    img += _smooth_noise(rng, h, w, (3, 5), 12)[..., None]
    img += rng.normal(0, 14, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _context_sign(rng_pos, h, w):
    """(y0, x0, side) of the sign: a square in the top fifth of the image (sky, or a building
    or tree reaching up there), so that it lies far above most vehicle pixels."""
    side = max(3, int(round(h / 10)))
    y0 = int(rng_pos.integers(1, max(2, h // 5 - side + 1)))
    x0 = int(rng_pos.integers(1, max(2, w - side)))
    return y0, x0, side


def cityscapes_sample(seed, split_id, index, height=64, width=128, flavour='plain', cue=None):
    """One generated street scene, as ``make_tiny_cityscapes`` writes it: ``(RGB uint8 image,
    trainId map, instance-index map, info)``.

    ``flavour='context'`` draws the scene of the ``plain`` flavour from the same random stream,
    then paints a square sign (class ``traffic sign``) in the top fifth of the image, white or
    orange (``CONTEXT_CUE_COLOURS``), and labels every vehicle pixel ``car`` or ``truck`` to
    match. The vehicles are rendered as cars before the relabelling, so their pixels do not
    depend on the cue. The cue is drawn (probability 1/2 each) from a stream of its own and the
    sign's position and noise from another, so ``cue=CAR`` / ``cue=TRUCK`` (forcing it) gives
    two images that differ only inside the sign and two label maps that differ only on the
    vehicles. ``info`` holds ``cue`` and ``sign`` (y0, x0, side); None for ``plain``.
    """
    if flavour not in CITYSCAPES_FLAVOURS:
        raise ValueError(f'flavour must be one of {CITYSCAPES_FLAVOURS}, got {flavour!r}')
    rng = np.random.default_rng([seed, split_id, index])
    img, lab, inst = _cityscapes_scene(rng, height, width)
    info = dict(cue=None, sign=None)
    if flavour == 'plain':
        if cue is not None:
            raise ValueError("cue is only used by flavour='context'")
        return img, lab, inst, info
    if cue is None:
        cue = (CAR, TRUCK)[int(np.random.default_rng([seed, split_id, index, 1]).integers(2))]
    if cue not in CONTEXT_CUE_COLOURS:
        raise ValueError(f'cue must be CAR ({CAR}) or TRUCK ({TRUCK}), got {cue!r}')
    rng_pos = np.random.default_rng([seed, split_id, index, 2])
    y0, x0, side = _context_sign(rng_pos, height, width)
    lab = lab.copy()
    lab[lab == CAR] = cue
    sign = (slice(y0, y0 + side), slice(x0, x0 + side))
    noise = rng_pos.normal(0, 6, size=(side, side, 3))
    img = img.copy()
    img[sign] = np.clip(np.rint(np.asarray(CONTEXT_CUE_COLOURS[cue], np.float64) + noise), 0,
                        255).astype(np.uint8)
    lab[sign] = TRAFFIC_SIGN
    inst = inst.copy()
    inst[sign] = 0
    info.update(cue=cue, sign=(y0, x0, side))
    return img, lab, inst, info


def make_tiny_cityscapes(root, num_train=8, num_val=4, height=64, width=128, seed=0,
                         flavour='plain'):
    """Write a tiny Cityscapes-format dataset under ``root``.

    Layout (the one mmseg's ``CityscapesDataset`` and cityscapesscripts read)::

        leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png   RGB, 8 bit
        gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png  uint8, 0..18 / 255 ignore
        gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png       uint8 Cityscapes label ids
        gtFine/{train,val}/<city>/<stem>_gtFine_instanceIds.png    uint16, id*1000+k for
                                                                   person/car/truck, else label id

    ``flavour``: ``'plain'`` (a class is identified by its colour) or ``'context'`` (vehicles
    are cars or trucks according to a sign far above them; see :func:`cityscapes_sample`).

    Returns:
        dict: ``root``, ``flavour`` and, per split, ``img_dir`` / ``ann_dir`` (absolute), ``data_prefix``
        (relative to root, as a config writes it), ``num_samples`` and the sample ``stems``.
    """
    root = osp.abspath(root)
    if flavour not in CITYSCAPES_FLAVOURS:
        raise ValueError(f'flavour must be one of {CITYSCAPES_FLAVOURS}, got {flavour!r}')
    out = dict(root=root, flavour=flavour)
    for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        img_dir = osp.join(root, 'leftImg8bit', split)
        ann_dir = osp.join(root, 'gtFine', split)
        cities = _CS_CITIES[split]
        stems = []
        for i in range(num):
            img, lab, inst, _ = cityscapes_sample(seed, split_id, i, height, width, flavour)
            city = cities[i % len(cities)]
            stem = f'{city}_000000_{i:06d}'
            os.makedirs(osp.join(img_dir, city), exist_ok=True)
            os.makedirs(osp.join(ann_dir, city), exist_ok=True)
            label_ids = _lut(CITYSCAPES_TRAINID_TO_LABELID)[lab]
            instance_ids = label_ids.astype(np.int32)
            has_inst = inst > 0
            instance_ids[has_inst] = (
                label_ids[has_inst].astype(np.int32) * 1000 + inst[has_inst] - 1)
            _imwrite(osp.join(img_dir, city, f'{stem}_leftImg8bit.png'), img[..., ::-1])
            _imwrite(osp.join(ann_dir, city, f'{stem}_gtFine_labelTrainIds.png'), lab)
            _imwrite(osp.join(ann_dir, city, f'{stem}_gtFine_labelIds.png'), label_ids)
            _imwrite(
                osp.join(ann_dir, city, f'{stem}_gtFine_instanceIds.png'),
                instance_ids.astype(np.uint16))
            stems.append(osp.join(city, stem))
        out[split] = dict(
            img_dir=img_dir,
            ann_dir=ann_dir,
            data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'),
            num_samples=num,
            stems=stems)
    return out


def _lut(mapping):
    lut = np.zeros(256, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def _imwrite(path, arr, params=()):
    if not cv2.imwrite(path, arr, list(params)):
        raise IOError(f'failed to write {path}')


# --------------------------------------------------------------------------------------------
# COCO keypoints
# --------------------------------------------------------------------------------------------

COCO_KEYPOINT_NAMES = [
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip',
    'left_knee', 'right_knee', 'left_ankle', 'right_ankle'
]
# 1-based, as in person_keypoints_*.json
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7],
                 [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5],
                 [4, 6], [5, 7]]
# mmpose's default for top-down evaluation with detected boxes
COCO_BBOX_FILE = 'person_detection_results/COCO_val2017_detections_AP_H_56_person.json'


def _keypoint_colours():
    """17 saturated RGB colours; hue index 7k mod 17 puts left/right partners far apart."""
    cols = []
    for k in range(17):
        hue = ((7 * k) % 17) / 17.0
        r, g, b = colorsys.hsv_to_rgb(hue, 1.0, 1.0)
        cols.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    return np.array(cols, np.uint8)


COCO_KEYPOINT_COLORS = _keypoint_colours()  # (17, 3) RGB

# canonical pose, units of person height, origin at the hip centre, y down, +x = person's left
# when the person faces the camera
# (a big head, so that the five face blobs stay apart on small figures)
_HEAD = {0: (0.0, -0.38), 1: (0.075, -0.46), 2: (-0.075, -0.46), 3: (0.16, -0.40),
         4: (-0.16, -0.40)}
_SHOULDER_DX, _SHOULDER_Y, _HIP_DX = 0.13, -0.29, 0.085
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.16, 0.14, 0.23, 0.22


def _sample_pose(rng, scale):
    """17 keypoints (x, y) of a stick figure of height ``scale``, centred at the origin."""
    kp = np.zeros((17, 2), np.float64)
    face = 1.0 if rng.random() < 0.7 else -1.0  # facing the camera or away (mirror)
    for k, (x, y) in _HEAD.items():
        kp[k] = (face * x, y)
    kp[:5, 0] += rng.uniform(-0.03, 0.03)  # head turn

    def direction(angle, side):
        return np.array([side * np.sin(angle), np.cos(angle)])

    for side_idx, side in ((0, 1.0), (1, -1.0)):  # person's left, right
        s = side * face
        sh = np.array([s * _SHOULDER_DX, _SHOULDER_Y])
        hip = np.array([s * _HIP_DX, 0.0])
        a1 = np.deg2rad(rng.uniform(-10, 160))
        b1 = np.deg2rad(rng.uniform(-20, 110))
        elbow = sh + _UPPER_ARM * rng.uniform(0.9, 1.1) * direction(a1, s)
        wrist = elbow + _FOREARM * rng.uniform(0.9, 1.1) * direction(a1 + b1, s)
        a2 = np.deg2rad(rng.uniform(-5, 35))
        b2 = np.deg2rad(rng.uniform(-40, 5))
        knee = hip + _THIGH * rng.uniform(0.9, 1.1) * direction(a2, s)
        ankle = knee + _SHIN * rng.uniform(0.9, 1.1) * direction(a2 + b2, s)
        kp[5 + side_idx] = sh
        kp[7 + side_idx] = elbow
        kp[9 + side_idx] = wrist
        kp[11 + side_idx] = hip
        kp[13 + side_idx] = knee
        kp[15 + side_idx] = ankle
    kp -= kp.mean(axis=0)  # centre the figure
    theta = np.deg2rad(rng.uniform(-20, 20))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return kp @ rot.T * scale


def _person_box(kp, scale, width, height):
    """xywh body box around the keypoints (head top, hands and feet padded), clipped."""
    pad = 0.05 * scale
    x0 = max(0.0, kp[:, 0].min() - pad)
    x1 = min(width - 1.0, kp[:, 0].max() + pad)
    y0 = max(0.0, kp[:, 1].min() - 0.08 * scale)
    y1 = min(height - 1.0, kp[:, 1].max() + pad)
    return [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]


def _boxes_overlap(a, b, gap=2.0):
    return not (a[0] + a[2] + gap < b[0] or b[0] + b[2] + gap < a[0]
                or a[1] + a[3] + gap < b[1] or b[1] + b[3] + gap < a[1])


def _coco_image(rng, height, width, num_persons):
    """One image: returns (RGB uint8 image, list of (keypoints int (17, 2), bbox xywh))."""
    base = rng.uniform(60, 190)
    img = np.full((height, width, 3), base, np.float32)
    img += rng.uniform(-8, 8, size=3)  # slight tint, low saturation
    img += _smooth_noise(rng, height, width, (4, 3), 25)[..., None]
    # clutter: a few grey bars
    for _ in range(int(rng.integers(0, 4))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        g = float(rng.uniform(40, 220))
        cv2.line(img, p0, p1, (g, g, g), int(rng.integers(1, 3)))
    img += rng.normal(0, 5, size=img.shape)

    persons = []
    # one vertical strip of the image per person, in random order, so that they fit side by side
    slots = rng.permutation(num_persons)
    for j in range(num_persons):
        sx0, sx1 = slots[j] * width / num_persons, (slots[j] + 1) * width / num_persons
        for _attempt in range(50):
            lo, hi = (0.5, 0.8) if num_persons == 1 else (0.4, 0.62)
            hi = min(hi * height, (sx1 - sx0) / 0.65)  # a figure is ~0.65 scale wide
            lo = min(lo * height, 0.7 * hi)
            scale = rng.uniform(lo, hi)
            kp = _sample_pose(rng, scale)
            radius = 2 if scale < 100 else 3
            margin = radius + 1
            span_min, span_max = kp.min(axis=0), kp.max(axis=0)
            lo_xy = np.array([sx0 + margin, margin]) - span_min
            hi_xy = np.array([sx1 - 1 - margin, height - 1 - margin]) - span_max
            if np.any(hi_xy < lo_xy):
                continue
            kp = np.rint(kp + rng.uniform(lo_xy, hi_xy)).astype(np.int64)
            # distinct blobs: no two keypoints of a person closer than a blob diameter
            d = np.linalg.norm(kp[:, None] - kp[None], axis=-1)
            d[np.diag_indices(17)] = np.inf
            if d.min() < 2 * radius + 1:
                continue
            box = _person_box(kp.astype(np.float64), scale, width, height)
            if any(_boxes_overlap(box, p[1]) for p in persons):
                continue
            persons.append((kp, box, scale, radius))
            break

    for kp, box, scale, radius in persons:
        grey = float(rng.uniform(110, 160))
        thick = max(1, int(round(scale / 50)))
        for a, b in COCO_SKELETON:
            cv2.line(img, tuple(int(v) for v in kp[a - 1]), tuple(int(v) for v in kp[b - 1]),
                     (grey, grey, grey), thick, cv2.LINE_AA)
        for k in range(17):
            cv2.circle(img, tuple(int(v) for v in kp[k]), radius,
                       tuple(float(c) for c in COCO_KEYPOINT_COLORS[k]), -1, cv2.LINE_8)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, [(kp, box) for kp, box, _, _ in persons]


def _coco_categories():
    return [
        dict(
            supercategory='person',
            id=1,
            name='person',
            keypoints=list(COCO_KEYPOINT_NAMES),
            skeleton=[list(s) for s in COCO_SKELETON])
    ]


def make_tiny_coco(root,
                   num_train=16,
                   num_val=8,
                   height=128,
                   width=96,
                   persons_per_image=(1, 2),
                   seed=0):
    """Write a tiny COCO person-keypoints dataset under ``root``.

    Layout (the one mmpose's ``CocoDataset`` and ``CocoMetric`` read)::

        annotations/person_keypoints_{train,val}2017.json
        {train,val}2017/<12-digit image id>.jpg
        person_detection_results/COCO_val2017_detections_AP_H_56_person.json

    ``persons_per_image`` is an inclusive (min, max) range. Every keypoint is visible (v=2) and
    drawn as a blob of radius 2 (3 for large persons) in ``COCO_KEYPOINT_COLORS[k]`` (RGB) at the
    annotated integer coordinates; persons never overlap.

    Returns:
        dict: ``root``, ``bbox_file`` and, per split, ``ann_file`` / ``img_dir`` (absolute),
        ``ann_file_rel`` / ``data_prefix`` (relative to root, as a config writes them),
        ``num_images`` and ``num_instances``.
    """
    root = osp.abspath(root)
    pmin, pmax = persons_per_image
    out = dict(root=root, bbox_file=osp.join(root, COCO_BBOX_FILE))
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if hasattr(cv2, 'IMWRITE_JPEG_SAMPLING_FACTOR'):  # keep full colour resolution (4:4:4)
        jpeg_params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    for split_id, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations, detections = [], [], []
        ann_id = (split_id + 1) * 100000
        for i in range(num):
            rng = np.random.default_rng([seed, 100 + split_id, i])
            img_id = (split_id + 1) * 100000 + i + 1
            file_name = f'{img_id:012d}.jpg'
            n = int(rng.integers(pmin, pmax + 1))
            img, persons = _coco_image(rng, height, width, n)
            _imwrite(osp.join(img_dir, file_name), img[..., ::-1], jpeg_params)
            images.append(
                dict(id=img_id, file_name=file_name, height=height, width=width, license=1))
            for kp, box in persons:
                ann_id += 1
                x, y, w, h = box
                vis = np.full((17, 1), 2, np.int64)
                kps = np.concatenate([kp, vis], axis=1).reshape(-1).tolist()
                annotations.append(
                    dict(
                        id=ann_id,
                        image_id=img_id,
                        category_id=1,
                        iscrowd=0,
                        num_keypoints=17,
                        keypoints=[int(v) for v in kps],
                        bbox=[float(v) for v in box],
                        area=round(float(w * h), 2),
                        segmentation=[[
                            round(v, 2) for v in (x, y, x + w, y, x + w, y + h, x, y + h)
                        ]]))
                jit = rng.uniform(-0.04, 0.04, size=4) * np.array([w, h, w, h])
                dx0, dy0 = max(0.0, x + jit[0]), max(0.0, y + jit[1])
                detections.append(
                    dict(
                        image_id=img_id,
                        category_id=1,
                        bbox=[
                            round(dx0, 2),
                            round(dy0, 2),
                            round(min(width - 1.0, x + w + jit[2]) - dx0, 2),
                            round(min(height - 1.0, y + h + jit[3]) - dy0, 2)
                        ],
                        score=round(float(rng.uniform(0.85, 1.0)), 4)))
        ann_rel = f'annotations/person_keypoints_{split}2017.json'
        ann_file = osp.join(root, ann_rel)
        coco = dict(
            info=dict(
                description=f'mmattn tiny synthetic COCO keypoints ({split}, seed {seed})',
                version='1.0',
                year=2017),
            licenses=[dict(id=1, name='synthetic', url='')],
            images=images,
            annotations=annotations,
            categories=_coco_categories())
        with open(ann_file, 'w') as f:
            json.dump(coco, f)
        if split == 'val':
            os.makedirs(osp.dirname(out['bbox_file']), exist_ok=True)
            with open(out['bbox_file'], 'w') as f:
                json.dump(detections, f)
        out[split] = dict(
            ann_file=ann_file,
            ann_file_rel=ann_rel,
            img_dir=img_dir,
            data_prefix=dict(img=f'{split}2017/'),
            num_images=num,
            num_instances=len(annotations))
    return out
