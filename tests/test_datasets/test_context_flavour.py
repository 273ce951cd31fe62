"""The 'context' flavour of the tiny street scenes needs long-range context.

Claim: on vehicle pixels (labelled car or truck by the colour of a sign far above them), no
model whose receptive field is a (2r+1) x (2r+1) window can beat a bound close to 1/2, while a
rule that looks at the whole image labels every one of them correctly.

Proof used here (exact, no training): the generator draws the cue independently of the rest of
the scene with probability 1/2 each, and forcing it gives twin images that differ only inside
the sign and twin label maps that differ only on the vehicles. A local model sees identical
inputs at a vehicle pixel of both twins whenever its window misses the sign, so it is right on
at most one of the two; its accuracy over the twins is at most ``(near + far / 2) / all``. The
expected accuracy over the flavour's distribution equals the accuracy over such twin pairs, so
the bound holds for the generated data in expectation, whatever the model learned.
"""
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mmattn.datasets.synthetic import (CAR, CITYSCAPES_FLAVOURS, CONTEXT_CUE_COLOURS,
                                       TRAFFIC_SIGN, TRUCK, cityscapes_sample,
                                       make_tiny_cityscapes)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
H, W = 64, 128
N_SCENES = 48


def _twins(index, split_id=0, seed=0):
    car = cityscapes_sample(seed, split_id, index, H, W, 'context', cue=CAR)
    truck = cityscapes_sample(seed, split_id, index, H, W, 'context', cue=TRUCK)
    plain = cityscapes_sample(seed, split_id, index, H, W, 'plain')
    return car, truck, plain


def _sign_mask(sign):
    y0, x0, side = sign
    mask = np.zeros((H, W), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def _decode_cue(img):
    """A global rule: the cue colour with more pixels near it anywhere in the image."""
    counts = {
        cls: int((np.linalg.norm(img.astype(np.float64) - np.asarray(col), axis=-1) < 40).sum())
        for cls, col in CONTEXT_CUE_COLOURS.items()
    }
    return max(counts, key=counts.get), counts


@pytest.fixture(scope='module')
def twins():
    return [_twins(i) for i in range(N_SCENES)]


def test_twins_differ_only_in_sign_and_vehicle_labels(twins):
    vehicles = 0
    for (img_c, lab_c, inst_c, info_c), (img_t, lab_t, inst_t, info_t), plain in twins:
        assert info_c['sign'] == info_t['sign'] and info_c['cue'] == CAR
        sign = _sign_mask(info_c['sign'])
        # pixels: only the sign differs, and it does differ (its colour is the cue)
        differ = (img_c != img_t).any(-1)
        assert not differ[~sign].any()
        assert differ[sign].mean() > 0.9
        # labels: the sign is a traffic sign in both; vehicles are cars / trucks; nothing else moves
        assert (lab_c[sign] == TRAFFIC_SIGN).all() and (lab_t[sign] == TRAFFIC_SIGN).all()
        veh = lab_c == CAR
        np.testing.assert_array_equal(lab_t == TRUCK, veh)
        np.testing.assert_array_equal(lab_c[~veh], lab_t[~veh])
        assert CAR not in lab_t and TRUCK not in lab_c
        # ... and they are exactly the plain flavour's cars (outside the sign): the vehicles look
        # the same and the cue is the only new information
        np.testing.assert_array_equal(veh, (plain[1] == CAR) & ~sign)
        np.testing.assert_array_equal(img_c[~sign], plain[0][~sign])
        np.testing.assert_array_equal(inst_c, inst_t)
        vehicles += int(veh.sum())
    assert vehicles > 0.05 * N_SCENES * H * W  # vehicles are a sizeable part of the images


def _local_bound(twins, radius):
    """Upper bound on the accuracy over vehicle pixels of any model seeing a (2r+1)^2 window,
    and the counts behind it (see the module docstring)."""
    near = far = 0
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    for (img_c, lab_c, _, info), (img_t, _, _, _), _ in twins:
        differ = (img_c != img_t).any(-1).astype(np.uint8)
        # pixels whose window contains a differing pixel (the window is clipped at the border,
        # as zero padding would be: identical padding on both twins)
        sees = cv2.dilate(differ, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        veh = lab_c == CAR
        near += int((veh & sees).sum())
        far += int((veh & ~sees).sum())
        # on 'far' pixels the twins' windows are identical: a local model answers alike
        ys, xs = np.nonzero(veh & ~sees)
        for y, x in zip(ys[::97], xs[::97]):  # spot-check the claim on actual windows
            win = (slice(max(0, y - radius), y + radius + 1),
                   slice(max(0, x - radius), x + radius + 1))
            np.testing.assert_array_equal(img_c[win], img_t[win])
    return (near + far / 2) / (near + far), near, far


@pytest.mark.parametrize('radius,bound', [(8, 0.501), (16, 0.51), (24, 0.56)])
def test_small_receptive_field_cannot_beat_half(twins, radius, bound):
    acc_max, near, far = _local_bound(twins, radius)
    assert far > 0
    assert acc_max <= bound, (radius, near, far)


def test_whole_image_rule_labels_every_vehicle(twins):
    """A rule that sees the sign (anywhere in the image) and the vehicle pixels (local colour,
    as in the plain flavour) is right on every vehicle pixel of every image."""
    for twin in twins:
        for img, lab, _, info in twin[:2]:
            cue, counts = _decode_cue(img)
            assert cue == info['cue'], counts
            side = info['sign'][2]
            # the sign stands out: most of it matches its colour, stray scene pixels hardly
            assert counts[cue] >= side * side // 2 > 2 * counts[CAR + TRUCK - cue], counts
            pred = np.where(twin[2][1] == CAR, cue, lab)  # plain cars -> decoded class
            pred[_sign_mask(info['sign'])] = TRAFFIC_SIGN
            np.testing.assert_array_equal(pred, lab)


def test_cue_is_random_and_balanced():
    cues = [cityscapes_sample(0, 0, i, H, W, 'context')[3]['cue'] for i in range(200)]
    frac = cues.count(TRUCK) / len(cues)
    assert 0.4 < frac < 0.6


def test_errors():
    with pytest.raises(ValueError, match='flavour must be one of'):
        cityscapes_sample(0, 0, 0, H, W, 'long-range')
    with pytest.raises(ValueError, match='cue must be CAR'):
        cityscapes_sample(0, 0, 0, H, W, 'context', cue=3)
    with pytest.raises(ValueError, match="only used by flavour='context'"):
        cityscapes_sample(0, 0, 0, H, W, 'plain', cue=CAR)
    assert CITYSCAPES_FLAVOURS == ('plain', 'context')


def test_written_dataset_reads_in_mmseg(tmp_path):
    """The files of the flavour go through mmseg's CityscapesDataset and mmattn's dataset check;
    the written labels are the sample's; plain and context share everything but the cue."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from mmattn.datasets import validate_dataset
    init_default_scope('mmseg')
    import mmseg.datasets  # noqa: F401
    info = make_tiny_cityscapes(str(tmp_path / 'ctx'), num_train=6, num_val=4, height=H, width=W,
                                flavour='context')
    assert info['flavour'] == 'context'
    cfg = dict(type='CityscapesDataset', data_root=info['root'],
               data_prefix=info['val']['data_prefix'],
               pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                         dict(type='PackSegInputs')])
    validate_dataset(cfg, 'mmseg')
    ds = DATASETS.build(cfg)
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        index = int(osp.basename(ds.get_data_info(i)['img_path']).split('_')[2])  # <city>_0_N
        img, lab, _, meta = cityscapes_sample(0, 1, index, H, W, 'context')
        np.testing.assert_array_equal(sample['data_samples'].gt_sem_seg.data[0].numpy(), lab)
        np.testing.assert_array_equal(sample['inputs'].numpy().transpose(1, 2, 0), img[..., ::-1])
        seen.add(meta['cue'])
    assert seen <= {CAR, TRUCK}


def test_cli_flavour(tmp_path):
    proc = subprocess.run(
        [sys.executable, 'tools/misc/make_tiny_data.py', 'cityscapes', '--flavour', 'context',
         '--out', str(tmp_path), '--num-train', '2', '--num-val', '1'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'cityscapes_context' / 'leftImg8bit' / 'val').is_dir()
    assert not (tmp_path / 'cityscapes').exists()
    bad = subprocess.run(
        [sys.executable, 'tools/misc/make_tiny_data.py', 'coco', '--flavour', 'context', '--out',
         str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'cityscapes only' in bad.stderr
