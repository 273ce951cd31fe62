"""Plain (explicit, released-code-style) formulations of the optimised attention modules.

Each function computes what its module computes, the way the authors' released code (or the
paper's equations) writes it, reading the module's own parameters, so that one module gives
both the optimised and the plain result on the same input with the same weights. They serve
two purposes:

* numerical references in the tests (float64, equal to the module up to rounding);
* baselines of the benchmark suite (``tools/analysis/benchmark.py``): gradients flow to the
  module's parameters (nothing is detached), and BatchNorm follows the module's train/eval
  mode, so forward + backward of a plain formulation is comparable with the module's own.

What "plain" means per module:

========================  ==================================================================
module                    plain formulation
========================  ==================================================================
PolarizedSelfAttention    separate 1x1 convs, the C/2 x HW maps ``conv_v_right(x)``,
                          ``conv_q_left(x)``, ``conv_v_left(x)`` formed, pooled afterwards
                          (released PSA_p / PSA_s, or the paper's equations)
FusedNonLocal2d           the (HW x N_k) affinity matrix formed, softmax, matmul (mmcv /
                          released Non-local)
DANetPositionAttention    the (HW x HW) matrix ``S = softmax(B^T D)`` formed (released
                          ``PAM_Module``)
DANetDualAttention        explicit PAM term + released CAM term (``softmax(max(E) - E)``)
ACmix                     reflection-padded ``k``, ``v`` and ``pe`` unfolded
                          ``kernel_att ** 2``-fold with ``F.unfold``, the ``q_p . pe_p`` term
                          kept; convolution path as released (``fc`` over the stacked heads,
                          permute, grouped ``dep_conv``)
========================  ==================================================================

Every other module of the zoo (SE, ECA, CBAM, DANet CAM, GCNet, Triplet, Coordinate
attention, DAT, SPD-Conv, DCNv2) already computes its plain formulation: ``has_plain`` is
False for them and the benchmark reports the module alone.
"""
import math
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'plain_psa', 'plain_psa_module', 'plain_non_local', 'plain_danet_pam_term',
    'plain_danet_pam', 'plain_danet_cam_term', 'plain_danet_dual', 'plain_acmix',
    'plain_forward', 'has_plain', 'plain_description', 'PLAIN_FORMULATIONS'
]


# ------------------------------------------------------------------------------------- PSA
def plain_psa(x: torch.Tensor, sd: Mapping[str, torch.Tensor], mode: str = 'parallel',
              formulation: str = 'released') -> torch.Tensor:
    """Polarized Self-Attention written like the released ``PSA_p`` / ``PSA_s``
    (``formulation='released'``) or like the paper's equations (``'paper'``).

    ``sd`` maps the released parameter names (``conv_q_right.weight``, ``conv_v_right.weight``,
    ``conv_q_left.weight``, ``conv_v_left.weight``, ``conv_up.weight`` or
    ``conv_up.{0,1,3}.{weight,bias}``, and ``norm_up.{weight,bias}`` for the paper form) to
    tensors: a module's ``state_dict()`` or ``dict(named_parameters())``.
    """

    def channel(t):
        n, c, h, w = t.shape
        v = F.conv2d(t, sd['conv_v_right.weight']).view(n, c // 2, h * w)
        q = F.conv2d(t, sd['conv_q_right.weight']).view(n, 1, h * w)
        q = torch.softmax(q, dim=2)
        ctx = torch.matmul(v, q.transpose(1, 2)).unsqueeze(-1)  # (N, C/2, 1, 1)
        if 'conv_up.0.weight' in sd:  # released PSA_s bottleneck
            z = F.conv2d(ctx, sd['conv_up.0.weight'], sd['conv_up.0.bias'])
            z = F.layer_norm(z, [c // 2 // 4, 1, 1], sd['conv_up.1.weight'], sd['conv_up.1.bias'])
            z = F.conv2d(F.relu(z), sd['conv_up.3.weight'], sd['conv_up.3.bias'])
        else:
            z = F.conv2d(ctx, sd['conv_up.weight'], sd.get('conv_up.bias'))
            if formulation == 'paper':
                z = F.layer_norm(z, [c, 1, 1], sd['norm_up.weight'], sd['norm_up.bias'])
        return t * torch.sigmoid(z)

    def spatial(t):
        n, c, h, w = t.shape
        g = F.adaptive_avg_pool2d(F.conv2d(t, sd['conv_q_left.weight']), 1)
        g = g.view(n, c // 2, 1).permute(0, 2, 1)  # (N, 1, C/2)
        if formulation == 'paper':
            g = torch.softmax(g, dim=2)
        theta = F.conv2d(t, sd['conv_v_left.weight']).view(n, c // 2, h * w)
        if formulation == 'released' and mode == 'sequential':
            theta = torch.softmax(theta, dim=2)
        s = torch.matmul(g, theta)  # (N, 1, HW)
        if formulation == 'released' and mode == 'parallel':
            s = torch.softmax(s, dim=2)
        return t * torch.sigmoid(s.view(n, 1, h, w))

    if mode == 'parallel':
        return channel(x) + spatial(x)
    return spatial(channel(x))


def plain_psa_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`plain_psa` with a :class:`PolarizedSelfAttention`'s parameters (gradients flow
    to them)."""
    return plain_psa(x, dict(module.named_parameters()), module.mode, module.formulation)


# ------------------------------------------------------------------------------- Non-local
def _conv_module(cm: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """An mmcv ``ConvModule`` without activation, written out (conv, then its norm if any),
    the norm following the module's train/eval mode."""
    out = F.conv2d(t, cm.conv.weight, cm.conv.bias)
    if getattr(cm, 'with_norm', False):
        bn = cm.norm
        training = bn.training or bn.running_mean is None
        out = F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                           training, 0.0 if bn.momentum is None else bn.momentum, bn.eps)
    return out


def plain_non_local(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The non-local block written out with the (HW x N_k) affinity matrix formed explicitly
    (``torch.matmul`` + ``softmax`` as in mmcv's ``NonLocal2d`` and the released code), with a
    :class:`FusedNonLocal2d` (or mmcv ``NonLocal2d``)'s parameters. All three pairwise
    functions: embedded Gaussian, Gaussian, dot product."""

    def branch(mod, t):  # g / phi: 1x1 conv, then the 2x2 max-pool of sub_sample
        if isinstance(mod, nn.Sequential):
            return F.max_pool2d(F.conv2d(t, mod[0].conv.weight, mod[0].conv.bias), 2)
        return F.conv2d(t, mod.conv.weight, mod.conv.bias)

    n, _, h, w = x.shape
    g = branch(module.g, x).flatten(2).transpose(1, 2)  # (N, Nk, d)
    if module.mode == 'gaussian':
        theta = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        phi = (F.max_pool2d(x, 2) if module.sub_sample else x).flatten(2)  # (N, C, Nk)
    else:
        theta = F.conv2d(x, module.theta.conv.weight, module.theta.conv.bias)
        theta = theta.flatten(2).transpose(1, 2)  # (N, HW, d)
        phi = branch(module.phi, x).flatten(2)  # (N, d, Nk)
    pairwise = torch.matmul(theta, phi)  # (N, HW, Nk): the explicit affinity matrix
    if module.mode == 'dot_product':
        pairwise = pairwise / pairwise.shape[-1]
    else:
        if module.mode == 'embedded_gaussian' and module.use_scale:
            pairwise = pairwise / math.sqrt(theta.shape[-1])
        pairwise = torch.softmax(pairwise, dim=-1)
    y = torch.matmul(pairwise, g)  # (N, HW, d)
    y = y.transpose(1, 2).reshape(n, -1, h, w)
    return x + _conv_module(module.conv_out, y)


# ----------------------------------------------------------------------------------- DANet
def plain_danet_pam_term(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The released PAM's attention term ``V S^T`` with ``S = softmax(B^T D)`` formed
    explicitly (HW x HW, ``torch.bmm``), as an (N, C, H, W) map (``gamma`` not applied)."""
    n, c, h, w = x.shape
    b = F.conv2d(x, module.query_conv.weight, module.query_conv.bias).view(n, -1, h * w)
    d = F.conv2d(x, module.key_conv.weight, module.key_conv.bias).view(n, -1, h * w)
    v = F.conv2d(x, module.value_conv.weight, module.value_conv.bias).view(n, -1, h * w)
    energy = torch.bmm(b.permute(0, 2, 1), d)  # (N, HW, HW)
    attention = torch.softmax(energy, dim=-1)
    out = torch.bmm(v, attention.permute(0, 2, 1))  # (N, C, HW)
    return out.view(n, c, h, w)


def plain_danet_pam(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Released ``PAM_Module``: ``gamma * V S^T + x`` with the explicit (HW x HW) ``S``."""
    return module.gamma * plain_danet_pam_term(module, x) + x


def plain_danet_cam_term(x: torch.Tensor) -> torch.Tensor:
    """The released CAM's attention term ``A X`` with ``A = softmax(max(E) - E)``,
    ``E = X X^T`` (``gamma`` not applied)."""
    n, c, h, w = x.shape
    query = x.view(n, c, -1)
    energy = torch.bmm(query, query.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    attention = torch.softmax(energy_new, dim=-1)
    return torch.bmm(attention, query).view(n, c, h, w)


def plain_danet_dual(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`DANetDualAttention` with both terms written out as released."""
    return (x + module.pam.gamma * plain_danet_pam_term(module.pam, x) +
            module.cam.gamma * plain_danet_cam_term(x))


# ----------------------------------------------------------------------------------- ACmix
def plain_acmix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ACmix as the released code computes it (LeapLabTHU/ACmix ``ACmix.forward``, defects
    fixed as in :class:`~mmattn.models.layers.ACmix`): ``k``, ``v`` and the positional map
    ``pe`` are reflection padded and unfolded ``kernel_att ** 2``-fold with ``F.unfold``, the
    logits are ``q_scaled . (k_j + pe_p - pe_j)`` (the ``q_p . pe_p`` term kept), softmax over
    the window, weighted sum of the unfolded ``v``. The convolution path is the released one:
    ``fc`` over the stacked q/k/v heads, permute, grouped ``dep_conv``. Supports ``stride``
    and ``dilation`` (the window is dilated)."""
    m = module
    n, _, h, w = x.shape
    heads, hd, ka = m.head, m.head_dim, m.kernel_att
    s, dil = m.stride, m.dilation
    pad = dil * (ka - 1) // 2
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1

    q = F.conv2d(x, m.conv1.weight, m.conv1.bias)
    k = F.conv2d(x, m.conv2.weight, m.conv2.bias)
    v = F.conv2d(x, m.conv3.weight, m.conv3.bias)
    c = q.shape[1]
    loc_w = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, w).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(h, 1).repeat(1, w)
    loc = torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)
    pe = F.conv2d(loc, m.conv_p.weight, m.conv_p.bias)  # (1, hd, h, w)

    scaling = float(hd)**-0.5
    q_att = q.reshape(n * heads, hd, h, w) * scaling
    k_att = k.reshape(n * heads, hd, h, w)
    v_att = v.reshape(n * heads, hd, h, w)
    if s > 1:
        q_att = q_att[:, :, ::s, ::s]
        q_pe = pe[:, :, ::s, ::s]
    else:
        q_pe = pe

    def unfold(t):
        t = F.pad(t, (pad, pad, pad, pad), mode='reflect')
        return F.unfold(t, ka, dilation=dil, stride=s).view(t.shape[0], hd, ka * ka, ho, wo)

    unfold_k = unfold(k_att)
    unfold_rpe = unfold(pe)
    att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
    att = torch.softmax(att, dim=1)  # (n * heads, ka * ka, ho, wo)
    out_att = unfold(v_att)
    out_att = (att.unsqueeze(1) * out_att).sum(2).view(n, c, ho, wo)

    f_all = m.fc(torch.cat([t.reshape(n, heads, hd, h * w) for t in (q, k, v)], 1))
    f_conv = f_all.permute(0, 2, 1, 3).reshape(n, -1, h, w)
    out_conv = m.dep_conv(f_conv)
    return m.rate1 * out_att + m.rate2 * out_conv


# -------------------------------------------------------------------------------- dispatch
def _registry() -> Dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    from mmattn.models.layers import (ACmix, DANetDualAttention, DANetPositionAttention,
                                      FusedNonLocal2d, PolarizedSelfAttention)
    return {
        PolarizedSelfAttention: plain_psa_module,
        FusedNonLocal2d: plain_non_local,
        DANetPositionAttention: plain_danet_pam,
        DANetDualAttention: plain_danet_dual,
        ACmix: plain_acmix,
    }


# the class names with a plain formulation here, and what it is (for reports)
PLAIN_FORMULATIONS = {
    'PolarizedSelfAttention': 'released PSA code (C/2 x HW maps formed)',
    'FusedNonLocal2d': 'explicit (HW x HW) softmax',
    'DANetPositionAttention': 'explicit (HW x HW) softmax',
    'DANetDualAttention': 'explicit (HW x HW) PAM + released CAM',
    'ACmix': 'released k_att^2-fold unfold',
}


def _find(module: nn.Module) -> Optional[Callable]:
    for cls, fn in _registry().items():
        if isinstance(module, cls):
            return fn
    return None


def has_plain(module: nn.Module) -> bool:
    """Whether ``module`` has a separate plain formulation here (False: the module is its
    own plain formulation)."""
    return _find(module) is not None


def plain_description(module: nn.Module) -> str:
    """A short description of the plain formulation of ``module`` for reports."""
    for cls in type(module).__mro__:
        if cls.__name__ in PLAIN_FORMULATIONS:
            return PLAIN_FORMULATIONS[cls.__name__]
    return 'none: the module is its plain formulation'


def plain_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain formulation of ``module`` on ``x`` with ``module``'s weights.

    Raises ``TypeError`` for modules without a separate plain formulation (see
    :func:`has_plain`).
    """
    fn = _find(module)
    if fn is None:
        raise TypeError(f'{type(module).__name__} has no separate plain formulation: the '
                        f'module itself computes it (see mmattn.testing.plain)')
    return fn(module, x)
