"""Looking at what attention modules do: maps per module, discovery, capture (no plotting here;
``tools/analysis/visualize_attention.py`` draws them)."""
from .attention_maps import (AttentionSite, attention_classes, attention_maps,  # noqa: F401
                             capture_inputs, find_attention_modules, gain_maps, has_own_maps,
                             map_stats, parse_site)

__all__ = [
    'AttentionSite', 'attention_classes', 'attention_maps', 'capture_inputs',
    'find_attention_modules', 'gain_maps', 'has_own_maps', 'map_stats', 'parse_site'
]
