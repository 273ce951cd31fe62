"""Convert a released PSA Cityscapes checkpoint (HRNetV2-W48-OCR + hierarchical multi-scale
attention, NVIDIA semantic-segmentation format, DeLightCMU/PSA README) into an mmseg checkpoint
of mmattn's evaluation config.

    python tools/convert/official_psa_to_mmattn.py IN.pth OUT.pth [--config CONFIG]

The PSA variant (PSA_p / PSA_s) is read from the keys and picks the config
(configs/psa/hms-ocrnet_hr48-psa-{p,s}_cityscapes-1024x2048.py) unless --config names one.
Every tensor must map onto the config's model, key for key and shape for shape; otherwise the
tool exits with status 1 and lists the keys. Then evaluate with
``python tools/test.py CONFIG OUT.pth``. The logic lives in mmattn.convert.official_psa.
"""
import argparse
import sys

from mmattn.convert.official_psa import ConversionError, convert_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a released PSA (NVIDIA semantic-segmentation format) checkpoint '
        'to an mmattn/mmseg checkpoint')
    parser.add_argument('src', metavar='IN', help='released checkpoint (.pth)')
    parser.add_argument('dst', metavar='OUT', help='converted checkpoint to write')
    parser.add_argument('--config', default=None,
                        help='mmseg config whose model the checkpoint is for (default: the '
                        'evaluation config of the detected variant)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert_checkpoint(args.src, args.dst, config=args.config)
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
