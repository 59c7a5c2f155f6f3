"""Reusable building blocks: the GSA module."""

from .gsa import GlobalSelfAttention, extend_rel_pos, fit_rel_pos_state, relative_to_absolute, resize_rel_pos

__all__ = ["GlobalSelfAttention", "extend_rel_pos", "fit_rel_pos_state", "relative_to_absolute", "resize_rel_pos"]
