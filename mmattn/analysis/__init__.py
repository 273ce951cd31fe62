"""Model analysis: parameters and FLOPs of a config's model and the share of its attention
modules (``tools/analysis/get_flops.py``)."""
from .complexity import (ANALYTIC_COUNTS, GIGA, PAPER_GIGA, Complexity, ConfigError,  # noqa: F401
                         Failure, analyze_config, analyze_model, attention_modules, build_model,
                         default_input_shape, disable_pretrained, find_baseline, format_report,
                         load_config, markdown_table, psa_released_macs, write_markdown)

__all__ = [
    'ANALYTIC_COUNTS', 'GIGA', 'PAPER_GIGA', 'Complexity', 'ConfigError', 'Failure',
    'analyze_config', 'analyze_model', 'attention_modules', 'build_model', 'default_input_shape',
    'disable_pretrained', 'find_baseline', 'format_report', 'load_config', 'markdown_table',
    'psa_released_macs', 'write_markdown'
]
