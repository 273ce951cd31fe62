"""The HRNet ``extra`` dict of the plugin tests: small widths, few blocks."""


def hrnet_extra(width=18, blocks=(4, 4, 4, 4), modules=(1, 1, 4, 3), stem=64):
    """HRNet stages: a Bottleneck stage of ``stem`` channels, then 2, 3 and 4 BasicBlock branches
    of ``width * 2**b`` channels, with ``blocks[s]`` blocks per branch and ``modules[s]``
    modules per stage."""
    w = width
    return dict(
        stage1=dict(num_modules=modules[0], num_branches=1, block='BOTTLENECK',
                    num_blocks=(blocks[0], ), num_channels=(stem, )),
        stage2=dict(num_modules=modules[1], num_branches=2, block='BASIC',
                    num_blocks=(blocks[1], ) * 2, num_channels=(w, 2 * w)),
        stage3=dict(num_modules=modules[2], num_branches=3, block='BASIC',
                    num_blocks=(blocks[2], ) * 3, num_channels=(w, 2 * w, 4 * w)),
        stage4=dict(num_modules=modules[3], num_branches=4, block='BASIC',
                    num_blocks=(blocks[3], ) * 4, num_channels=(w, 2 * w, 4 * w, 8 * w)))
