"""Markdown tables, the plot and the target checks of a benchmark run."""
import math
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from .memory import GiB, MiB
from .models import ModelResult
from .modules import CaseResult

__all__ = ['module_table', 'compile_table', 'peer_table', 'split_peer_flags',
           'model_table', 'target_rows', 'target_table', 'plot_results', 'TARGETS', 'FLAG_BELOW',
           'OUTPUT_RTOL']

# peer / mmattn ratios below this are flagged (mmattn slower or hungrier by more than 5%)
FLAG_BELOW = 0.95
# largest relative difference of a peer's forward output from mmattn's that counts as equal
OUTPUT_RTOL = {'float32': 1e-4, 'autocast': 5e-2}


def _ms(seconds: Optional[float]) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return '-'
    ms = 1000.0 * seconds
    if ms >= 100:
        return f'{ms:.0f}'
    if ms >= 10:
        return f'{ms:.1f}'
    return f'{ms:.2f}'


def _mib(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return '-'
    mib = nbytes / MiB
    return f'{mib:.0f}' if mib >= 10 else f'{mib:.1f}'


def _ratio(base: Optional[float], value: Optional[float]) -> str:
    if not base or not value:
        return ''
    return f' ({base / value:.2f}x)'


def _cell(r: CaseResult, phase: str, what: str) -> str:
    """``module / plain (plain / module x)`` for times or peaks of one phase."""
    values = r.times.get(phase, {}) if what == 'time' else r.peak.get(phase, {})
    fmt = _ms if what == 'time' else _mib
    skipped = r.skipped.get(phase, {})
    text = skipped['module'] if 'module' in skipped else fmt(values.get('module'))
    if r.plain:
        if 'plain' in skipped:
            text += f' / {skipped["plain"]}'
        else:
            text += f' / {fmt(values.get("plain"))}' + _ratio(values.get('plain'),
                                                              values.get('module'))
    return text


def module_table(results: Sequence[CaseResult]) -> str:
    """One row per case: times (ms, median) and peak memory (MiB) of the module and of its
    plain formulation, with the ratio plain / module (> 1: the module is faster / lighter)."""
    head = ('| module | plain baseline | C x H x W | N | dtype | fwd ms | fwd+bwd ms | '
            'peak fwd MiB | peak fwd+bwd MiB | reps |')
    lines = [head, '|' + '---|' * 10]
    for r in results:
        if r.error:
            lines.append(f'| {r.name} | | {r.shape} | {r.batch} | {r.dtype} | {r.error} '
                         f'| | | | |')
            continue
        base = r.plain or 'itself'
        reps = '/'.join(str(len(r.samples.get(p, {}).get('module', []))) +
                        ('p' if p in r.profiled_time else '') for p in ('fwd', 'fwdbwd'))
        lines.append(f'| {r.name} | {base} | {r.shape} | {r.batch} | {r.dtype} | '
                     f'{_cell(r, "fwd", "time")} | {_cell(r, "fwdbwd", "time")} | '
                     f'{_cell(r, "fwd", "peak")} | {_cell(r, "fwdbwd", "peak")} | {reps} |')
    return '\n'.join(lines)


def compile_table(results: Sequence[CaseResult]) -> str:
    """``torch.compile`` against eager for the cases run with ``--compile``."""
    rows = [r for r in results if 'compiled' in r.times.get('fwd', {}) or
            'compiled' in r.times.get('fwdbwd', {}) or r.compile_error]
    if not rows:
        return ''
    lines = ['| module | C x H x W | N | dtype | fwd ms eager / compiled | '
             'fwd+bwd ms eager / compiled | peak fwd+bwd MiB eager / compiled | '
             'compile s | graph breaks | note |', '|' + '---|' * 10]
    for r in rows:
        cells = []
        for phase in ('fwd', 'fwdbwd'):
            t = r.times.get(phase, {})
            cells.append(f'{_ms(t.get("module"))} / {_ms(t.get("compiled"))}' +
                         _ratio(t.get('module'), t.get('compiled')))
        p = r.peak.get('fwdbwd', {})
        cells.append(f'{_mib(p.get("module"))} / {_mib(p.get("compiled"))}')
        note = r.compile_error or ''
        breaks = '-' if r.graph_breaks is None else str(r.graph_breaks)
        comp = '-' if r.compile_s is None else f'{r.compile_s:.0f}'
        lines.append(f'| {r.name} | {r.shape} | {r.batch} | {r.dtype} | {" | ".join(cells)} '
                     f'| {comp} | {breaks} | {note} |')
    return '\n'.join(lines)


def _peer_ratio(r: CaseResult, what: str, phase: str, peer: str) -> Optional[float]:
    values = r.times.get(phase, {}) if what == 'time' else r.peak.get(phase, {})
    mine, theirs = values.get('module'), values.get(peer)
    if not mine or not theirs:
        return None
    return theirs / mine


# (measure, phase, column label) of the peer table, in its order
_PEER_COLUMNS = (('time', 'fwd', 'time fwd'), ('time', 'fwdbwd', 'time fwd+bwd'),
                 ('peak', 'fwd', 'peak fwd'), ('peak', 'fwdbwd', 'peak fwd+bwd'))


def _peer_cell(r: CaseResult, what: str, phase: str, peer: str) -> str:
    ratio = _peer_ratio(r, what, phase, peer)
    if ratio is None:
        skipped = r.skipped.get(phase, {}).get(peer)
        return skipped or '-'
    values = r.times.get(phase, {}) if what == 'time' else r.peak.get(phase, {})
    fmt = _ms if what == 'time' else _mib
    text = f'{ratio:.2f} ({fmt(values[peer])} / {fmt(values["module"])})'
    return f'**{text}**' if ratio < FLAG_BELOW else text


def _output_check(r: CaseResult, peer: str) -> str:
    err = r.max_rel_err.get(peer)
    if err is None:
        return '-'
    ok = err <= OUTPUT_RTOL.get(r.dtype, OUTPUT_RTOL['autocast'])
    return f'{err:.1e}' + ('' if ok else ' DIFFERS')


def peer_table(results: Sequence[CaseResult]) -> str:
    """One row per case and peer (the A/A control too): ratios peer / mmattn of the median
    time and of the peak memory, forward and forward+backward, with ``peer / mmattn`` values
    in brackets (ms, MiB); ratios below :data:`FLAG_BELOW` in bold (mmattn loses); the largest
    relative difference of the peer's forward output from mmattn's."""
    rows = [r for r in results if r.peers and not r.error]
    if not rows:
        return ''
    labels = ' | '.join(label for _, _, label in _PEER_COLUMNS)
    lines = [f'| module | peer | C x H x W | N | dtype | {labels} | output rel. diff |',
             '|' + '---|' * (len(_PEER_COLUMNS) + 6)]
    for r in rows:
        for peer in r.peers:
            cells = ' | '.join(_peer_cell(r, w, p, peer) for w, p, _ in _PEER_COLUMNS)
            lines.append(f'| {r.name} | {peer} | {r.shape} | {r.batch} | {r.dtype} | {cells} '
                         f'| {_output_check(r, peer)} |')
    return '\n'.join(lines)


def _within_noise(ratio: float, control: Optional[float]) -> bool:
    """A peer ratio is within the run's noise when the A/A control of the same cell is
    itself flagged, or when the ratio is no further below 1 than twice the control's
    distance from 1."""
    if control is None:
        return False
    return control < FLAG_BELOW or ratio >= 1 - 2 * abs(1 - control)


def split_peer_flags(results: Sequence[CaseResult]) -> Tuple[List[str], List[str]]:
    """One line per peer ratio below :data:`FLAG_BELOW` and per peer whose output differs,
    in two lists: beyond the noise that the A/A control of the same case and cell shows, and
    within it (the A/A control's own flags included; an output difference is always beyond)."""
    from .peers import AA_CONTROL
    beyond, within = [], []
    for r in results:
        for peer in r.peers:
            where = f'{r.name} vs {peer} at {r.shape} N={r.batch} {r.dtype}'
            for what, phase, label in _PEER_COLUMNS:
                ratio = _peer_ratio(r, what, phase, peer)
                if ratio is None or ratio >= FLAG_BELOW:
                    continue
                line = f'{where}: {label} {ratio:.2f}'
                control = _peer_ratio(r, what, phase, AA_CONTROL) \
                    if AA_CONTROL in r.peers else None
                if peer == AA_CONTROL or _within_noise(ratio, control):
                    if peer != AA_CONTROL:
                        line += f' (A/A {control:.2f})'
                    within.append(line)
                else:
                    beyond.append(line)
            if _output_check(r, peer).endswith('DIFFERS'):
                beyond.append(f'{where}: output differs by {r.max_rel_err[peer]:.1e}')
    return beyond, within


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:+.1f}%'


def model_table(results: Sequence[ModelResult]) -> str:
    lines = ['| config | baseline | input | N | inference ms (model / baseline) | '
             'inference overhead | train iter ms (model / baseline) | train overhead | '
             'peak inference MiB (model / baseline) | peak train iter MiB (model / baseline) | '
             'FLOPs overhead executed / released | inference time overhead / FLOPs overhead '
             '(executed; released) | reps |', '|' + '---|' * 13]
    for r in results:
        name = osp.splitext(osp.basename(r.config))[0]
        base = osp.splitext(osp.basename(r.baseline))[0] if r.baseline else '-'
        if r.error:
            lines.append(f'| {name} | {base} | | {r.batch} | {r.error} | | | | | | | | |')
            continue
        cells = []
        for phase in ('infer', 'train'):
            t = r.times.get(phase, {})
            cells.append(f'{_ms(t.get("model"))} / {_ms(t.get("baseline"))}')
            cells.append(_pct(r.time_overhead(phase)))
        peaks = []
        for phase in ('infer', 'train'):
            p = r.peak.get(phase, {})
            peaks.append(f'{_mib(p.get("model"))} / {_mib(p.get("baseline"))} '
                         f'({_pct(r.peak_overhead(phase))})')
        fe, fr = r.flops_overhead('executed'), r.flops_overhead('released')
        ti = r.time_overhead('infer')
        ratios = []
        for f in (fe, fr):
            ratios.append('-' if f is None or ti is None or f <= 0 else f'{ti / f:.1f}x')
        reps = '/'.join(str(r.reps.get(p, '-')) for p in ('infer', 'train'))
        lines.append(f'| {name} | {base} | {r.input_hw[0]}x{r.input_hw[1]} | {r.batch} | '
                     f'{cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {peaks[0]} | '
                     f'{peaks[1]} | {_pct(fe)} / {_pct(fr)} | {ratios[0]}; {ratios[1]} | '
                     f'{reps} |')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------- targets
TARGETS = OrderedDict([
    ('nonlocal', 'Non-local, C=512, 128x256, N=2: peak >= 10x lower than explicit, time no '
                 'worse'),
    ('danet_pam', 'DANet PAM, C=512, 128x256, N=2: peak >= 10x lower than explicit, time no '
                  'worse'),
    ('acmix', 'ACmix, C=64, 56x56, N=8: fwd+bwd >= 3x faster and peak >= 5x lower than '
              'the unfold form'),
    ('psa_p', 'PSA_p at HRNet-W48 shapes: fwd+bwd >= 1.2x faster than released code'),
    ('psa_s', 'PSA_s at HRNet-W48 shapes: fwd+bwd >= 1.2x faster than released code'),
])


def _peak_or_predicted(r: CaseResult, phase: str, variant: str):
    """(bytes, 'measured' | 'predicted')."""
    value = r.peak.get(phase, {}).get(variant)
    if value is not None:
        return value, 'measured'
    value = r.predicted.get(phase, {}).get(variant)
    return value, 'predicted'


def _find(results, name, label, batch, dtype='float32'):
    for r in results:
        if r.name == name and r.shape == label and r.batch == batch and r.dtype == dtype \
                and not r.error:
            return r
    return None


def target_rows(results: Sequence[CaseResult],
                models: Sequence[ModelResult] = ()) -> List[Dict[str, str]]:
    """The performance targets of TARGETS, evaluated on what this run measured (absent ones are left out)."""
    rows = []
    for name in ('nonlocal', 'danet_pam'):
        r = _find(results, name, '512x128x256', 2)
        if r is None:
            continue
        parts, met = [], True
        for phase, label in (('fwd', 'fwd'), ('fwdbwd', 'fwd+bwd')):
            mod, how_m = _peak_or_predicted(r, phase, 'module')
            pln, how_p = _peak_or_predicted(r, phase, 'plain')
            if mod and pln:
                ratio = pln / mod
                met &= ratio >= 10
                parts.append(f'{label} peak {mod / GiB:.2f} GiB ({how_m}) vs {pln / GiB:.1f} '
                             f'GiB ({how_p}): {ratio:.0f}x')
        tm = r.times.get('fwdbwd', {}).get('module')
        if tm:
            parts.append(f'fwd+bwd {tm:.1f} s (module)')
        # time: at the largest size where the explicit form ran
        smaller = [s for s in results if s.name == name and s.channels == 512 and
                   s.batch == 2 and s.dtype == 'float32' and
                   'plain' in s.times.get('fwdbwd', {})]
        if smaller:
            s = max(smaller, key=lambda c: c.height * c.width)
            t = s.times['fwdbwd']
            ratio = t['plain'] / t['module']
            met &= ratio >= 1.0
            parts.append(f'time at {s.height}x{s.width} (largest that fits the explicit form): '
                         f'fwd+bwd {1000 * t["module"]:.0f} ms vs {1000 * t["plain"]:.0f} ms '
                         f'({ratio:.2f}x)')
            tf = s.times.get('fwd', {})
            if 'plain' in tf:
                parts.append(f'fwd {1000 * tf["module"]:.0f} vs {1000 * tf["plain"]:.0f} ms '
                             f'({tf["plain"] / tf["module"]:.2f}x)')
        rows.append(dict(target=TARGETS[name], measured='; '.join(parts),
                         met='yes' if met and parts else 'no'))
    r = _find(results, 'acmix', '64x56x56', 8)
    if r is not None and 'plain' in r.times.get('fwdbwd', {}):
        t, p = r.times['fwdbwd'], r.peak.get('fwdbwd', {})
        speed = t['plain'] / t['module']
        mem = (p.get('plain') or 0) / max(p.get('module') or 1, 1)
        rows.append(dict(
            target=TARGETS['acmix'],
            measured=f'fwd+bwd {1000 * t["module"]:.0f} ms vs {1000 * t["plain"]:.0f} ms '
                     f'({speed:.2f}x); peak {_mib(p.get("module"))} vs {_mib(p.get("plain"))} '
                     f'MiB ({mem:.1f}x)',
            met='yes' if speed >= 3 and mem >= 5 else 'no'))
    for name in ('psa_p', 'psa_s'):
        rs = [r for r in results if r.name == name and r.channels in (48, 96, 192, 384) and
              'plain' in r.times.get('fwdbwd', {}) and r.dtype == 'float32']
        if not rs:
            continue
        ratios = [(r.times['fwdbwd']['plain'] / r.times['fwdbwd']['module'], r) for r in rs]
        worst = min(ratios, key=lambda x: x[0])
        best = max(ratios, key=lambda x: x[0])
        n_ok = sum(1 for x, _ in ratios if x >= 1.2)
        rows.append(dict(
            target=TARGETS[name],
            measured=f'fwd+bwd speed-up {worst[0]:.2f}x ({worst[1].shape}, N={worst[1].batch}) '
                     f'to {best[0]:.2f}x ({best[1].shape}, N={best[1].batch}); >= 1.2x in '
                     f'{n_ok} of {len(ratios)} float32 cases',
            met='yes' if n_ok == len(ratios) else f'no ({n_ok}/{len(ratios)})'))
    for m in models:
        if m.error or 'infer' not in m.times:
            continue
        ti, fe, fr = m.time_overhead('infer'), m.flops_overhead('executed'), \
            m.flops_overhead('released')
        tt = m.time_overhead('train')
        name = osp.splitext(osp.basename(m.config))[0]
        text = (f'{name}, N={m.batch}: inference time overhead {_pct(ti)}, FLOPs overhead '
                f'{_pct(fe)} executed / {_pct(fr)} released; ratio ')
        ok = []
        for f in (fe, fr):
            if f and f > 0 and ti is not None:
                text += f'{ti / f:.1f}x '
                ok.append(ti <= 1.5 * f)
        text += f'(exec; rel); training iteration overhead {_pct(tt)}'
        if ok:
            met = 'yes' if ok[0] else ('only vs released FLOPs' if len(ok) > 1 and ok[1]
                                       else 'no')
        else:
            met = '-'
        rows.append(dict(target='Whole model: inference time overhead <= 1.5x FLOPs overhead',
                         measured=text, met=met))
    return rows


def target_table(rows: Sequence[Dict[str, str]]) -> str:
    if not rows:
        return ''
    lines = ['| target | measured | met |', '|---|---|---|']
    lines += [f'| {r["target"]} | {r["measured"]} | {r["met"]} |' for r in rows]
    return '\n'.join(lines)


# -------------------------------------------------------------------------------------- plot
def plot_results(results: Sequence[CaseResult], path: str, dtype: str = 'float32') -> Optional[str]:
    """PNG: per module, fwd+bwd time and peak fwd+bwd memory against the feature-map size
    (H x W pixels, log-log), module solid, plain formulation dashed, one colour per batch size.
    Returns the path, or None when there is nothing to plot."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ok = [r for r in results if not r.error and r.times]
    if ok and not any(r.dtype == dtype for r in ok):
        dtype = ok[0].dtype  # e.g. an autocast-only run
    rows = [r for r in ok if r.dtype == dtype and r.tag != 'target'] or \
        [r for r in ok if r.dtype == dtype]
    if not rows:
        return None
    names = list(OrderedDict.fromkeys(r.name for r in rows))
    batches = sorted({r.batch for r in rows})
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    cols = 4
    grid_rows = math.ceil(len(names) / 2)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4 * cols, 2.8 * grid_rows),
                             squeeze=False)
    for i, name in enumerate(names):
        ax_t, ax_m = axes[i // 2][2 * (i % 2)], axes[i // 2][2 * (i % 2) + 1]
        for j, batch in enumerate(batches):
            case = sorted((r for r in rows if r.name == name and r.batch == batch),
                          key=lambda r: r.height * r.width)
            for variant, style in (('module', '-'), ('plain', '--')):
                pts_t = [(r.height * r.width, 1000 * r.times['fwdbwd'][variant]) for r in case
                         if variant in r.times.get('fwdbwd', {})]
                pts_m = [(r.height * r.width, r.peak['fwdbwd'][variant] / MiB) for r in case
                         if variant in r.peak.get('fwdbwd', {})]
                label = f'N={batch}' + (' plain' if variant == 'plain' else '')
                for ax, pts in ((ax_t, pts_t), (ax_m, pts_m)):
                    if pts:
                        ax.plot(*zip(*pts), style, marker='o', ms=3,
                                color=colours[j % len(colours)], label=label)
        ax_t.set_title(f'{name}: fwd+bwd time', fontsize=9)
        ax_m.set_title(f'{name}: peak fwd+bwd memory', fontsize=9)
        ax_t.set_ylabel('ms', fontsize=8)
        ax_m.set_ylabel('MiB', fontsize=8)
        for ax in (ax_t, ax_m):
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
            ax.set_xlabel('H x W (pixels)', fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which='both', alpha=0.3)
        ax_t.legend(fontsize=6)
    for k in range(len(names), grid_rows * 2):
        axes[k // 2][2 * (k % 2)].axis('off')
        axes[k // 2][2 * (k % 2) + 1].axis('off')
    fig.suptitle(f'mmattn modules, {dtype}, {rows[0].device}: HRNet-W48 branch shapes '
                 f'(C grows as H x W shrinks); dashed = plain formulation', fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
