"""The implementations users would otherwise pick, as benchmark peers of mmattn's modules.

A peer is another library's class for the same block, built with the mmattn module's
hyper-parameters and loaded with its weights (a strict ``load_state_dict`` of the renamed
keys), so that both compute the same function and the benchmark compares implementations, not
models (its report checks the outputs). Peers:

=========  ======================================================================
mmattn     peers
=========  ======================================================================
se         timm ``SEModule``; the common copy with ``nn.Linear`` layers
eca        timm ``EcaModule``; the authors' ``eca_layer`` layout
cbam       timm ``CbamModule`` (its spatial conv reads ``[mean, max]``: channels swapped);
           the common ``CBAMBlock`` layout (External-Attention-pytorch)
gc         timm ``GlobalContext`` (LayerNorm eps set to mmcv's 1e-5), mmcv ``ContextBlock``
nonlocal   timm ``NonLocalAttn`` (``W_z`` bias zero), mmcv ``NonLocal2d``
coord      timm ``CoordAttn`` (timm >= 1.0.20)
psa_p/_s   the authors' ``PSA_p`` / ``PSA_s`` (``mmattn.testing.plain``)
danet_pam  the authors' ``PAM_Module`` (explicit HW x HW softmax, ``mmattn.testing.plain``)
=========  ======================================================================

The "layout" peers are not installable libraries: they run the mmattn module's own parameters
through the operations a released or widely copied implementation uses (pooling layers,
``torch.max``, ``nn.Linear``, a transposed ``Conv1d`` input, the explicit maps), written
here, so that the comparison is between ways of computing one function. Where the copy
differs in the function itself (``CBAMBlock`` adds the input back, has no biases and no
BatchNorm) the layout peer keeps the mmattn function and only the operations.

timm is a benchmark dependency only: it is imported here, when a peer is built, and never by
``import mmattn``; without it the timm peers are skipped with a one-line reason.
"""
import copy
from typing import Callable, Dict, List, Mapping, NamedTuple, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmattn.testing.plain import plain_forward

__all__ = ['PeerUnavailable', 'Peer', 'PEERS', 'peer_names', 'build_peers', 'AA_CONTROL']

# variant name of the A/A control: the module against its own deep copy
AA_CONTROL = 'A/A copy'


class PeerUnavailable(RuntimeError):
    """A peer cannot be built here (library missing or too old); the message says why."""


class Peer(NamedTuple):
    label: str  # variant name in the reports, e.g. 'timm SEModule'
    build: Callable[[nn.Module], nn.Module]


def _timm_layers():
    try:
        import timm.layers as layers
    except ImportError as exc:
        raise PeerUnavailable(f'timm is not installed ({exc}); pip install timm to add the '
                              f'timm peers') from exc
    return layers


def _timm_class(name: str, module: str):
    """``timm.layers.<module>.<name>`` (not every class is exported by ``timm.layers``)."""
    _timm_layers()
    import importlib

    import timm
    try:
        return getattr(importlib.import_module(f'timm.layers.{module}'), name)
    except (ImportError, AttributeError) as exc:
        raise PeerUnavailable(f'timm {timm.__version__} has no timm.layers.{module}.'
                              f'{name}') from exc


def _load(peer: nn.Module, source: Mapping[str, torch.Tensor], names: Mapping[str, str],
          transform: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = {}) -> nn.Module:
    """Load ``source`` (an mmattn state dict) into ``peer`` under ``names`` (mmattn key ->
    peer key), strictly: a peer whose layout differs from the one assumed here fails with its
    keys listed instead of comparing against random weights."""
    state = {}
    for ours, theirs in names.items():
        value = source[ours]
        if ours in transform:
            value = transform[ours](value)
        state[theirs] = value
    try:
        peer.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PeerUnavailable(f'{type(peer).__name__}: unexpected layout '
                              f'({str(exc).splitlines()[0][:160]})') from exc
    return peer


def _same_names(module: nn.Module, renames: Mapping[str, str] = {}) -> Dict[str, str]:
    """Every key of ``module``'s state dict, renamed by prefix where ``renames`` says."""
    names = {}
    for key in module.state_dict():
        new = key
        for old, rep in renames.items():
            if key.startswith(old):
                new = rep + key[len(old):]
                break
        names[key] = new
    return names


# ----------------------------------------------------------------------------- builders
def _timm_se(m: nn.Module) -> nn.Module:
    act = type(m.act) if isinstance(m.act, (nn.ReLU, nn.SiLU, nn.GELU)) else None
    if act is None or not isinstance(m.gate, nn.Sigmoid):
        raise PeerUnavailable('timm SEModule: only ReLU/SiLU/GELU and a sigmoid gate mapped')
    peer = _timm_class('SEModule', 'squeeze_excite')(m.in_channels, rd_channels=m.hidden_channels,
                                   act_layer=act)
    return _load(peer, m.state_dict(), _same_names(m))


def _timm_eca(m: nn.Module) -> nn.Module:
    # channels=None: timm then takes kernel_size as given (with channels it recomputes it)
    peer = _timm_class('EcaModule', 'eca')(None, kernel_size=m.kernel_size)
    return _load(peer, m.state_dict(), _same_names(m))


def _timm_cbam(m: nn.Module) -> nn.Module:
    if m.no_spatial or not isinstance(m.act, nn.ReLU):
        raise PeerUnavailable('timm CbamModule: only the spatial gate and ReLU are mapped')
    peer = _timm_class('CbamModule', 'cbam')(m.in_channels, rd_channels=m.hidden_channels,
                                     spatial_kernel_size=m.kernel_size, mlp_bias=True)
    names = _same_names(m, {'fc1.': 'channel.fc1.', 'fc2.': 'channel.fc2.',
                            'spatial_conv.': 'spatial.conv.conv.',
                            'spatial_norm.': 'spatial.conv.bn.'})
    # mmattn (and the release) stack [max, mean], timm [mean, max]
    swap = {'spatial_conv.weight': lambda w: w.flip(1)}
    return _load(peer, m.state_dict(), names, swap)


def _gc_check(m: nn.Module):
    if m.pooling_type != 'att' or tuple(m.fusion_types) != ('channel_add', ):
        raise PeerUnavailable('GC peers: only attention pooling with channel_add is mapped')


def _timm_gc(m: nn.Module) -> nn.Module:
    _gc_check(m)
    peer = _timm_class('GlobalContext', 'global_context')(m.in_channels, fuse_add=True, fuse_scale=False,
                                        rd_channels=m.planes)
    peer.mlp_add.norm.eps = m.channel_add_conv[1].eps  # timm's LayerNorm2d: 1e-6
    names = {'conv_mask.weight': 'conv_attn.weight', 'conv_mask.bias': 'conv_attn.bias'}
    for i, part in ((0, 'fc1'), (1, 'norm'), (3, 'fc2')):
        for p in ('weight', 'bias'):
            names[f'channel_add_conv.{i}.{p}'] = f'mlp_add.{part}.{p}'
    flat = {f'channel_add_conv.1.{p}': lambda t: t.flatten() for p in ('weight', 'bias')}
    return _load(peer, m.state_dict(), names, flat)


def _mmcv_gc(m: nn.Module) -> nn.Module:
    from mmcv.cnn import ContextBlock
    _gc_check(m)
    peer = ContextBlock(m.in_channels, m.ratio, m.pooling_type, tuple(m.fusion_types))
    return _load(peer, m.state_dict(), _same_names(m))


def _nonlocal_check(m: nn.Module):
    if m.mode != 'embedded_gaussian' or m.sub_sample or m.conv_out.norm_cfg is None or \
            m.conv_out.norm_cfg.get('type') not in ('BN', 'BN2d'):
        raise PeerUnavailable('Non-local peers: only embedded Gaussian, no sub-sampling and '
                              'a BN after W_z are mapped')


def _timm_nonlocal(m: nn.Module) -> nn.Module:
    _nonlocal_check(m)
    if m.use_scale:
        raise PeerUnavailable('timm NonLocalAttn scales by C^-0.5, not (C/r)^-0.5: only '
                              'use_scale=False is mapped')
    peer = _timm_class('NonLocalAttn', 'non_local_attn')(m.in_channels, use_scale=False,
                                       rd_channels=m.inter_channels)
    sd = dict(m.state_dict())
    sd['conv_out.conv.bias'] = torch.zeros(m.in_channels)  # timm's W_z has a bias
    names = {}
    for ours, theirs in (('theta.conv', 't'), ('phi.conv', 'p'), ('g.conv', 'g'),
                         ('conv_out.conv', 'z')):
        for p in ('weight', 'bias'):
            names[f'{ours}.{p}'] = f'{theirs}.{p}'
    norm = f'conv_out.{m.conv_out.norm_name}.'  # mmcv's ConvModule names its norm 'bn'
    for key in sd:
        if key.startswith(norm):
            names[key] = 'norm.' + key[len(norm):]
    return _load(peer, sd, names)


def _mmcv_nonlocal(m: nn.Module) -> nn.Module:
    from mmcv.cnn import NonLocal2d
    _nonlocal_check(m)
    peer = NonLocal2d(m.in_channels, reduction=m.reduction, use_scale=m.use_scale,
                      norm_cfg=dict(m.conv_out.norm_cfg), mode=m.mode)
    return _load(peer, m.state_dict(), _same_names(m))


def _timm_coord(m: nn.Module) -> nn.Module:
    if not isinstance(m.norm, nn.BatchNorm2d):
        raise PeerUnavailable('timm CoordAttn: only a BatchNorm encoding is mapped')
    peer = _timm_class('CoordAttn', 'coord_attn')(m.in_channels, rd_channels=m.mip, bias=True,
                                    act_layer=nn.Hardswish)
    return _load(peer, m.state_dict(), _same_names(m, {'norm.': 'bn1.'}))


# ----------------------------------------------------------------------------- layouts
class _Layout(nn.Module):
    """A peer computing ``forward_fn(source, x)``: the parameters of ``source`` (a copy of the
    mmattn module) run through another implementation's operations."""

    def __init__(self, source: nn.Module, forward_fn: Callable[[nn.Module, torch.Tensor],
                                                                torch.Tensor]):
        super().__init__()
        self.source = source
        self.forward_fn = forward_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(self.source, x)


def _layout(forward_fn, check=None):
    def build(m: nn.Module) -> nn.Module:
        if check is not None:
            check(m)
        return _Layout(m, forward_fn)
    return build


def _se_linear_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # pooled vector through nn.Linear layers, gate broadcast with expand_as
    n, c = x.shape[:2]
    y = F.adaptive_avg_pool2d(x, 1).view(n, c)
    y = m.act(F.linear(y, m.fc1.weight.flatten(1), m.fc1.bias))
    y = m.gate(F.linear(y, m.fc2.weight.flatten(1), m.fc2.bias))
    return x * y.view(n, c, 1, 1).expand_as(x)


def _eca_released_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # the authors' eca_layer: Conv1d over the channels of the pooled (N, 1, C) transposed view
    y = F.adaptive_avg_pool2d(x, 1)
    y = m.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y).expand_as(x)


def _cbam_block_check(m: nn.Module):
    if m.no_spatial:
        raise PeerUnavailable('CBAMBlock layout: only the spatial gate is mapped')


def _cbam_block_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # CBAMBlock's operations: adaptive max/avg pooling layers and one shared conv MLP applied
    # to each; torch.max/torch.mean over channels, concatenated, conv, sigmoid
    def mlp(t):
        return F.conv2d(m.act(F.conv2d(t, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)

    out = x * torch.sigmoid(mlp(F.adaptive_max_pool2d(x, 1)) + mlp(F.adaptive_avg_pool2d(x, 1)))
    max_map, _ = torch.max(out, dim=1, keepdim=True)
    mean_map = torch.mean(out, dim=1, keepdim=True)
    spatial = m.spatial_norm(m.spatial_conv(torch.cat([max_map, mean_map], dim=1)))
    return out * torch.sigmoid(spatial)


PEERS: Dict[str, Tuple[Peer, ...]] = {
    'se': (Peer('timm SEModule', _timm_se), Peer('SE with nn.Linear', _layout(_se_linear_forward))),
    'eca': (Peer('timm EcaModule', _timm_eca),
            Peer('authors\' eca_layer', _layout(_eca_released_forward))),
    'cbam': (Peer('timm CbamModule', _timm_cbam),
             Peer('CBAMBlock layout', _layout(_cbam_block_forward, _cbam_block_check))),
    'psa_p': (Peer('authors\' PSA_p', _layout(plain_forward)), ),
    'psa_s': (Peer('authors\' PSA_s', _layout(plain_forward)), ),
    'danet_pam': (Peer('authors\' PAM_Module', _layout(plain_forward)), ),
    'gc': (Peer('timm GlobalContext', _timm_gc), Peer('mmcv ContextBlock', _mmcv_gc)),
    'nonlocal': (Peer('timm NonLocalAttn', _timm_nonlocal), Peer('mmcv NonLocal2d',
                                                                    _mmcv_nonlocal)),
    'coord': (Peer('timm CoordAttn', _timm_coord), ),
}


def peer_names() -> List[str]:
    """The mmattn short names that have peers."""
    return list(PEERS)


def build_peers(name: str, module: nn.Module) -> Tuple[Dict[str, nn.Module], List[str]]:
    """``({label: peer with module's weights}, [why a peer was skipped, ...])`` for the
    module of short name ``name``, on the module's device and dtype, in its train/eval mode."""
    param = next(module.parameters())
    built, skipped = {}, []
    for peer in PEERS.get(name, ()):
        try:
            with torch.no_grad():
                p = peer.build(copy.deepcopy(module).float().cpu())
        except PeerUnavailable as exc:
            skipped.append(f'{peer.label}: {exc}')
            continue
        built[peer.label] = p.to(device=param.device, dtype=param.dtype).train(module.training)
    return built, skipped
