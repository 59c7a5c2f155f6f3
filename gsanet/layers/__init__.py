"""Reusable building blocks: the GSA module."""

from .gsa import GlobalSelfAttention, relative_to_absolute, resize_rel_pos

__all__ = ["GlobalSelfAttention", "relative_to_absolute", "resize_rel_pos"]
