"""Reusable building blocks: the GSA module and what it is made of.

``gsa`` (the module), ``rel_pos`` (relative tables, spans and positional weights), ``axial_ops`` (the axial layer as
batched GEMMs), ``axial_kernel`` (the fused C++ CPU kernel, its builds and its dispatch), ``helpers`` (argument checks).
"""

from .gsa import GlobalSelfAttention, auto_heads
from .rel_pos import RelPosModule, extend_rel_pos, fit_rel_pos_state, relative_to_absolute, resize_rel_pos

__all__ = [
    "GlobalSelfAttention",
    "RelPosModule",
    "auto_heads",
    "extend_rel_pos",
    "fit_rel_pos_state",
    "relative_to_absolute",
    "resize_rel_pos",
]
