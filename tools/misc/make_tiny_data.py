"""Write tiny synthetic datasets in the real Cityscapes / COCO-keypoints formats.

    python tools/misc/make_tiny_data.py {cityscapes,coco,all} --out data/tiny \
        [--num-train N] [--num-val N] [--seed S] [--flavour {plain,context}]

``cityscapes`` goes to ``<out>/cityscapes`` (read by mmseg's ``CityscapesDataset``), ``coco`` to
``<out>/coco`` (read by mmpose's ``CocoDataset``, and by mmdet's with ``classes=('person', )``).

``--flavour context`` (Cityscapes only) writes street scenes in which part of the label depends
on a cue far from the pixel, to ``<out>/cityscapes_context``: a small sign in the top rows is
white or orange, and every vehicle of the image is labelled ``car`` or ``truck`` to match, while
the vehicles look the same for both. Without long-range context a model can only guess which of
the two a vehicle is; on the plain flavour everything is decided by local colour. Without ``--num-train`` / ``--num-val`` each
dataset keeps its own defaults (Cityscapes 8/4 images, COCO 16/8 images).
"""
import argparse
import os.path as osp
import sys

# find the in-tree ``mmattn`` when run as a script from a checkout (repo root = two levels up)
_REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write tiny synthetic Cityscapes / COCO-keypoints datasets')
    parser.add_argument('dataset', choices=['cityscapes', 'coco', 'all'])
    parser.add_argument('--out', default='data/tiny', help='output folder (default data/tiny)')
    parser.add_argument('--num-train', type=int, default=None, help='training images')
    parser.add_argument('--num-val', type=int, default=None, help='validation images')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--flavour', choices=['plain', 'context'], default='plain',
        help="cityscapes: 'context' makes vehicles cars or trucks according to a sign far "
        'above them (written to <out>/cityscapes_context)')
    args = parser.parse_args(argv)
    if args.flavour != 'plain' and args.dataset != 'cityscapes':
        parser.error(f'--flavour {args.flavour} exists for cityscapes only')
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmattn.datasets.synthetic import make_tiny_cityscapes, make_tiny_coco

    sizes = {}
    if args.num_train is not None:
        sizes['num_train'] = args.num_train
    if args.num_val is not None:
        sizes['num_val'] = args.num_val
    written = {}
    if args.dataset in ('cityscapes', 'all'):
        folder = 'cityscapes' if args.flavour == 'plain' else f'cityscapes_{args.flavour}'
        info = make_tiny_cityscapes(
            osp.join(args.out, folder), seed=args.seed, flavour=args.flavour, **sizes)
        written['cityscapes'] = info
        print(f"cityscapes ({args.flavour}): {info['root']}")
        for split in ('train', 'val'):
            s = info[split]
            print(f"  {split}: {s['num_samples']} images in {s['img_dir']}, "
                  f"labels (labelTrainIds/labelIds/instanceIds) in {s['ann_dir']}")
    if args.dataset in ('coco', 'all'):
        info = make_tiny_coco(osp.join(args.out, 'coco'), seed=args.seed, **sizes)
        written['coco'] = info
        print(f"coco: {info['root']}")
        for split in ('train', 'val'):
            s = info[split]
            print(f"  {split}: {s['num_images']} images, {s['num_instances']} persons; "
                  f"{s['ann_file']}, images in {s['img_dir']}")
        print(f"  detections: {info['bbox_file']}")
    return written


if __name__ == '__main__':
    main()
