"""Helpers shared by the tests and the benchmark suite: plain (explicit, released-code-style)
formulations of the optimised attention modules (:mod:`mmattn.testing.plain`) and random
weights for equality tests (:func:`randomise`)."""
from .plain import (PLAIN_FORMULATIONS, has_plain, plain_acmix, plain_danet_cam_term,  # noqa
                    plain_danet_dual, plain_danet_pam, plain_danet_pam_term, plain_description,
                    plain_forward, plain_non_local, plain_psa, plain_psa_module)
from .weights import randomise

__all__ = [
    'PLAIN_FORMULATIONS', 'has_plain', 'plain_acmix', 'plain_danet_cam_term',
    'plain_danet_dual', 'plain_danet_pam', 'plain_danet_pam_term', 'plain_description',
    'plain_forward', 'plain_non_local', 'plain_psa', 'plain_psa_module', 'randomise'
]
