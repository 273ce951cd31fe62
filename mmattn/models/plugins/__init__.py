from .block_plugins import (POSITIONS, PRESETS, add_block_plugins, block_kind,  # noqa: F401
                            find_blocks)
