"""The comparison table: per variant the metric over seeds (mean, standard deviation, runs),
the difference to the baseline, params, GFLOPs, time and memory; written as ``comparison.md``,
``comparison.csv``, ``comparison.json`` and plotted in ``comparison.png``."""
import csv
import math
import os
import os.path as osp
import statistics
from typing import Dict, List, Optional, Sequence

from .runs import write_json

__all__ = ['summarise', 'write_outputs', 'COLUMNS', 'plot']

# (json key, csv/markdown header, markdown format)
COLUMNS = [
    ('variant', 'variant', '{}'),
    ('metric_mean', '{metric} mean', '{:.{d}f}'),
    ('metric_std', '{metric} std', '{:.{d}f}'),
    ('n_ok', 'seeds ok', '{}'),
    ('delta', 'delta vs baseline', '{:+.{d}f}'),
    ('params_m', 'params (M)', '{:.3f}'),
    ('params_pct', 'params vs baseline', '{:+.2f}%'),
    ('gflops', 'GFLOPs executed', '{:.3f}'),
    ('gflops_pct', 'GFLOPs vs baseline', '{:+.2f}%'),
    ('gflops_released', 'GFLOPs released', '{:.3f}'),
    ('train_ms_per_iter', 'train ms/iter', '{:.0f}'),
    ('infer_ms_per_img', 'infer ms/img', '{:.1f}'),
    ('peak_train_mib', 'peak train MiB', '{:.0f}'),
    ('train_s_per_iter', 'train s/iter (runs)', '{:.3f}'),
    ('status', 'status', '{}'),
]


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN for a single run."""
    return statistics.stdev(values) if len(values) > 1 else float('nan')


def summarise(variants: Sequence, records: Dict[str, List[dict]], complexity: Dict[str, dict],
              bench: Optional[dict], seeds: Sequence[int], metric: str,
              baseline: str = 'baseline') -> List[dict]:
    """One row per variant (in the given order) from the run records, the counts and the
    benchmark. ``records[name]`` holds the record of each finished run (ok or failed)."""
    rows = []
    bench_rows = (bench or {}).get('variants', {})
    for variant in variants:
        name = variant.name
        runs = sorted(records.get(name, []), key=lambda r: r['seed'])
        ok = [r for r in runs if r.get('status') == 'ok']
        values = [float(r['value']) for r in ok]
        errors = sorted({r['error'] for r in runs if r.get('status') == 'failed'})
        cost = complexity.get(name, {})
        if cost.get('error'):
            errors = [cost['error']] + [e for e in errors if e != cost['error']]
        row = dict(
            variant=name, description=variant.description, plugins=variant.plugins,
            notes=list(variant.notes), metric=metric,
            values={str(r['seed']): float(r['value']) for r in ok},
            metric_mean=statistics.fmean(values) if values else float('nan'),
            metric_std=_std(values), n_ok=len(values), n_seeds=len(seeds),
            n_failed=sum(r.get('status') == 'failed' for r in runs),
            n_pending=len(seeds) - len(runs), errors=errors,
            train_s_per_iter=statistics.median(
                [r['train_s_per_iter'] for r in ok if 'train_s_per_iter' in r])
            if any('train_s_per_iter' in r for r in ok) else float('nan'))
        for key in ('params_m', 'gflops', 'gflops_released', 'attn_params', 'input_hw'):
            row[key] = cost.get(key, float('nan'))
        b = bench_rows.get(name, {})
        for key in ('train_ms_per_iter', 'infer_ms_per_img', 'peak_train_mib'):
            row[key] = b.get(key, float('nan'))
        if b.get('error'):
            row['bench_error'] = b['error']
        if errors:
            row['status'] = ('failed: ' if not values else 'partly failed: ') + errors[0]
        elif row['n_pending']:
            row['status'] = f'{len(runs)}/{len(seeds)} runs done'
        else:
            row['status'] = 'ok'
        rows.append(row)
    base = next((r for r in rows if r['variant'] == baseline), None)
    for row in rows:
        if base is None or not base['n_ok'] or not row['n_ok']:
            row['delta'] = float('nan')
        else:
            row['delta'] = row['metric_mean'] - base['metric_mean']
        for key in ('params_m', 'gflops'):
            ref = base.get(key) if base else None
            row[key.split('_')[0] + '_pct'] = float('nan') if _nan(ref) or _nan(
                row[key]) or not ref else 100.0 * (row[key] / ref - 1.0)
    return rows


def _cell(value, fmt: str, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    if isinstance(value, (list, tuple)):
        return 'x'.join(str(v) for v in value)
    return fmt.format(value, d=digits)


def metric_digits(rows: List[dict]) -> int:
    """Decimals for the metric: 4 on a 0-1 scale (COCO AP), 2 on a percentage (mIoU)."""
    values = [v for r in rows for v in r['values'].values()]
    return 4 if values and max(abs(v) for v in values) <= 1.0 else 2


def _md_escape(text: str) -> str:
    return str(text).replace('|', '\\|').replace('\n', ' ')


def markdown(rows: List[dict], metric: str, header: Sequence[str] = ()) -> str:
    heads = [h.format(metric=metric) for _, h, _ in COLUMNS]
    digits = metric_digits(rows)
    lines = list(header) + ['| ' + ' | '.join(heads) + ' |',
                            '|' + '|'.join(['---'] + ['---:'] * (len(heads) - 2) + ['---']) + '|']
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            if key == 'variant' and row['variant'] == 'baseline':
                value = '**baseline**'
            if key == 'n_ok':
                value = f"{row['n_ok']}/{row['n_seeds']}"
            cells.append(_md_escape(_cell(value, fmt, digits)))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: List[dict], metric: str, path: str, x_key: str = 'gflops',
         title: str = '') -> Optional[str]:
    """Metric against ``x_key`` (``gflops``, ``gflops_released`` or ``params_m``): one point per
    variant at its mean, a bar from the lowest to the highest seed and a +-1 std cap, every
    seed as a small dot, the baseline as a star with a dashed line at its mean."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = {'gflops': 'GFLOPs (executed)', 'gflops_released': 'GFLOPs (released convention)',
              'params_m': 'params (M)'}
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    drawn = [r for r in rows if r['n_ok'] and not _nan(r.get(x_key))]
    for row in drawn:
        x, y = row[x_key], row['metric_mean']
        vals = list(row['values'].values())
        base = row['variant'] == 'baseline'
        ax.plot([x, x], [min(vals), max(vals)], color='0.6', lw=1, zorder=1)
        ax.scatter([x] * len(vals), vals, s=10, color='0.45', zorder=2)
        if not _nan(row['metric_std']):
            ax.errorbar([x], [y], yerr=[row['metric_std']], fmt='none', ecolor='C0', capsize=4,
                        lw=1.5, zorder=3)
        ax.scatter([x], [y], s=160 if base else 45, marker='*' if base else 'o',
                   color='C3' if base else 'C0', zorder=4, edgecolors='k', linewidths=0.5)
        ax.annotate(row['variant'], (x, y), textcoords='offset points', xytext=(6, 4),
                    fontsize=8)
        if base:
            ax.axhline(y, color='C3', ls='--', lw=1, zorder=0, label=f'baseline {y:.2f}')
    failed = [r['variant'] for r in rows if not r['n_ok']]
    ax.set_xlabel(labels.get(x_key, x_key))
    ax.set_ylabel(f'{metric} (mean over seeds; bar: min-max, cap: +-1 std)')
    note = f'; no result: {", ".join(failed)}' if failed else ''
    ax.set_title((title + note)[:150], fontsize=9)
    if any(r['variant'] == 'baseline' for r in drawn):
        ax.legend(loc='best', fontsize=8)
    ax.margins(x=0.15, y=0.1)  # room for the labels right of the points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(work_dir: str, rows: List[dict], metric: str, info: dict,
                  plot_x: str = 'gflops') -> Dict[str, str]:
    """Write comparison.{md,csv,json,png} into ``work_dir``; returns their paths."""
    paths = {ext: osp.join(work_dir, f'comparison.{ext}') for ext in ('md', 'csv', 'json', 'png')}
    header = [f'# Attention comparison: {info.get("base_config", "")}', '',
              f'{metric}: mean and sample standard deviation over seeds '
              f'{" ".join(str(s) for s in info.get("seeds", []))}; delta = mean - baseline mean. '
              'GFLOPs: one input of {hw}, multiply-adds (mmattn.analysis). Time and memory: '
              '{bench}.'.format(hw=_cell(next((r.get('input_hw') for r in rows
                                               if isinstance(r.get('input_hw'), list)), None),
                                          '{}'),
                                bench=info.get('bench_text', 'not measured')), '']
    text = markdown(rows, metric, header)
    failures = [r for r in rows if r['errors']]
    if failures:
        text += '\nErrors:\n\n' + ''.join(f'- {r["variant"]}: {_md_escape(e)}\n'
                                           for r in failures for e in r['errors'])
    digits = metric_digits(rows)
    text += '\nPer seed:\n\n' + ''.join(
        f'- {r["variant"]}: ' + (', '.join(f'seed {s}: {v:.{digits}f}'
                                           for s, v in r['values'].items())
                                 or 'none') + '\n' for r in rows)
    tmp = paths['md'] + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, paths['md'])
    tmp = paths['csv'] + '.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        seeds = [str(s) for s in info.get('seeds', [])]
        writer.writerow([h.format(metric=metric) for _, h, _ in COLUMNS] +
                        [f'{metric} seed {s}' for s in seeds] + ['errors'])
        for row in rows:
            cells = []
            for key, _, _ in COLUMNS:
                value = row.get(key)
                cells.append('' if _nan(value) else value)
            cells += [row['values'].get(s, '') for s in seeds]
            cells.append(' / '.join(row['errors']))
            writer.writerow(cells)
    os.replace(tmp, paths['csv'])
    write_json(paths['json'], _jsonable(dict(info, metric=metric, variants=rows)))
    try:
        plot(rows, metric, paths['png'], plot_x, title=osp.basename(info.get('base_config', '')))
    except ImportError as exc:  # matplotlib missing: the tables are still written
        paths.pop('png')
        print(f'comparison.png not written: {exc}')
    return paths
