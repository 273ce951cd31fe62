from .backbones import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .layers import build_attention, list_attention  # noqa: F401
from .necks import *  # noqa: F401,F403
from .plugins import add_block_plugins  # noqa: F401
from .segmentors import *  # noqa: F401,F403
