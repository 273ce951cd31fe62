"""Attention ablations: the baseline and each attention variant of one config trained and
evaluated on the same seeds through ``tools/train.py`` / ``tools/test.py``, compared in one table
with their params, FLOPs, time and memory (``tools/analysis/compare_attention.py``)."""
from .compare import (DEFAULT_METRICS, CompareOptions, WorkDirBusy, parse_cfg_options,
                      run_comparison)
from .report import summarise, write_outputs
from .runs import Launcher, RunSpec, one_line_error, run_one, train_seconds_per_iter
from .variants import (BASELINE, Variant, VariantError, attention_variants, load_variants_file,
                       plugin_key, variant_config_text)

__all__ = [
    'DEFAULT_METRICS', 'CompareOptions', 'WorkDirBusy', 'parse_cfg_options', 'run_comparison', 'summarise',
    'write_outputs', 'Launcher', 'RunSpec', 'one_line_error', 'run_one', 'train_seconds_per_iter',
    'BASELINE', 'Variant', 'VariantError', 'attention_variants', 'load_variants_file',
    'plugin_key', 'variant_config_text'
]
