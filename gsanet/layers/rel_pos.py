"""Relative position embeddings of GSA's positional attention: tables, spans, and the weights they give.

A relative table holds one embedding per offset along one axis, ``(n_rel, C)``: row ``table_center(table) + d`` is
offset ``d``. Each of the ``heads`` heads uses its own ``C / heads`` slice of the columns.

The span of a query at position ``x`` on an axis of length ``S`` is the set of key positions ``x'`` it attends to:

* global (``pos_span=None``): every offset of the axis, ``-(S-1) .. S-1``. The table is sized for the longest axis the
  module was built for (``table_length``); on a longer axis ``cover`` extends it (by default resampled to the axis,
  ``extend_rel_pos``) and scales the positional sum back to the table's length (``extension_scale``): the module's
  size policy (``RelPosModule.size_policy``, ``docs/design.md``);
* windowed (``pos_span=L``, odd): the ``L`` offsets ``-(L-1)/2 .. (L-1)/2``, a table of ``L`` rows for any axis length.

Keys outside the image or outside the span contribute nothing. The weight query ``x`` gives key ``x'`` is the logit
``q_x . r_(x'-x)`` (the paper's equation, no softmax), a softmax of those logits over the span (the ``pos_softmax``
ablation), or uniform over the span without relative embeddings (the ``rel_pos=False`` ablation): ``axis_weights``
gives them for one axis, ``plane_weights`` for the non-axial (2-D) ablation. ``head_rows`` and ``head_keys`` lay a
table out for the two axial operators (``axial_kernel.FusedAxialRelPosAttention`` and
``axial_ops.AxialRelPosAttention``), which compute the same weights without storing them.

``RelPosModule`` is the base of modules holding such tables (``GlobalSelfAttention``): it gives the weights a module
applies (``RelPosModule.axis_weights``, ``RelPosModule.plane_weights``), and ``resize_rel_pos`` and
``fit_rel_pos_state`` resize the global tables of every such module of a model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import to_pair

__all__ = [
    "DEFAULT_REL_POS_EXTEND",
    "REL_POS_EXTENDS",
    "RelPosModule",
    "axis_logits",
    "axis_weights",
    "check_rel_pos_extend",
    "cover",
    "extend_rel_pos",
    "extension_scale",
    "fit_rel_pos_state",
    "gather_offsets",
    "head_keys",
    "head_rows",
    "offset_rows",
    "plane_weights",
    "relative_to_absolute",
    "resize_rel_pos",
    "skew",
    "span_mask",
    "table_center",
    "table_length",
    "uniform_weights",
]


def table_length(size: int, pos_span: int | None) -> int:
    """Rows of a relative table for axes up to ``size``: ``2 * size - 1`` for a global span, else ``pos_span``."""
    return 2 * size - 1 if pos_span is None else pos_span


def table_center(table: torch.Tensor) -> int:
    """The row of offset 0 of a relative table (its middle row)."""
    return (table.shape[0] - 1) // 2


def span_mask(size: int, pos_span: int | None, device: torch.device | str | None = None) -> torch.Tensor:
    """``(S, S)`` boolean: ``[x, x']`` is True when ``x'`` lies in the span of ``x``."""
    half = (size - 1) if pos_span is None else (pos_span - 1) // 2
    pos = torch.arange(size, device=device)
    return (pos[None, :] - pos[:, None]).abs() <= half


def uniform_weights(
    size: int, pos_span: int | None, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(S, S)`` weights without relative embeddings: each query averages its span uniformly."""
    weights = span_mask(size, pos_span, device).to(dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def offset_rows(table: torch.Tensor, center: int, size: int) -> torch.Tensor:
    """The ``2S-1`` rows of offsets ``-(S-1) .. S-1`` of a relative table (row ``center + d`` = offset d), zero rows
    for offsets the table does not cover."""
    lo = (size - 1) - center  # rows to add (>0) or drop (<0) below offset -(S-1)
    hi = (size - 1) - (table.shape[0] - 1 - center)
    table = F.pad(table, (0, 0, max(lo, 0), max(hi, 0)))
    return table[max(-lo, 0) : table.shape[0] - max(-hi, 0)]


def relative_to_absolute(table: torch.Tensor, center: int, size: int) -> torch.Tensor:
    """Expands a relative embedding table to absolute pairs without an index tensor.

    Args:
        table: ``(n_rel, C)`` embeddings; row ``center + d`` holds offset ``d``.
        center: row of offset 0.
        size: axis length S.

    Returns:
        ``(S, S, C)`` tensor ``E[a, a'] = table[center + a' - a]``, zero where the offset has no row.
    """
    table = offset_rows(table, center, size)  # (2S-1, C), offset d at row S-1+d
    windows = table.unfold(0, size, 1)  # (S, C, S): windows[s, :, j] = table[s + j]
    return windows.flip(0).permute(0, 2, 1)  # (S, S, C): [a, a'] = table[S-1-a + a']


def skew(rel: torch.Tensor, size: int) -> torch.Tensor:
    """Relative to absolute positions as a strided view (no index, no copy).

    Args:
        rel: ``(..., S, 2S-1)`` contiguous in its last two dims; ``rel[..., x, S-1+d]`` belongs to offset ``d``.
        size: S.

    Returns:
        ``(..., S, S)`` view: ``out[..., x, x'] = rel[..., x, x' - x + S - 1]``, at flat offset ``x(2S-2) + x' + S-1``.
    """
    st = rel.stride()
    return rel.as_strided((*rel.shape[:-1], size), (*st[:-2], st[-2] - 1, 1), rel.storage_offset() + size - 1)


REL_POS_EXTENDS = ("edge", "zero", "interp")
"""How a global table is extended to an axis longer than it covers (``extend_rel_pos``)."""

DEFAULT_REL_POS_EXTEND = "interp"
"""The extension ``GlobalSelfAttention`` uses unless told otherwise (``docs/design.md``, "relative tables")."""


def check_rel_pos_extend(mode: str) -> str:
    """``mode`` if it names an extension (``REL_POS_EXTENDS``), else a ValueError saying which do."""
    if mode not in REL_POS_EXTENDS:
        raise ValueError(f"rel_pos_extend must be one of {', '.join(map(repr, REL_POS_EXTENDS))}, got {mode!r}")
    return mode


def extend_rel_pos(table: torch.Tensor, size: int, mode: str = DEFAULT_REL_POS_EXTEND) -> torch.Tensor:
    """A global relative table extended to cover an axis of ``size``.

    ``mode`` says what the offsets beyond the table get (``docs/design.md`` compares them on trained models):

    * ``"edge"``: each farther offset the embedding of the farthest learned offset on its side; learned offsets keep
      theirs. Gradients of the extra rows flow to the edge rows.
    * ``"zero"``: farther offsets get zero embeddings, so a query attends only to keys within the table's span;
      learned offsets keep theirs.
    * ``"interp"``: the table resampled to the new offset range (linear, end rows kept: offset ``d`` of the new
      table is offset ``d (M-1)/(S-1)`` of the old one), timm's treatment of relative tables at a new resolution;
      every offset changes embedding.

    Args:
        table: ``(2M-1, C)`` embeddings of offsets ``-(M-1) .. M-1``.
        size: axis length S.
        mode: one of ``REL_POS_EXTENDS``.

    Returns:
        ``table`` itself when ``S <= M``, else ``(2S-1, C)``.
    """
    check_rel_pos_extend(mode)
    extra = size - (table.shape[0] + 1) // 2
    if extra <= 0:
        return table
    if mode == "zero":
        return F.pad(table, (0, 0, extra, extra))
    if mode == "interp":
        rows = 2 * size - 1
        return F.interpolate(table.t()[None], size=rows, mode="linear", align_corners=True)[0].t()
    return F.pad(table.t()[None], (extra, extra), mode="replicate")[0].t()


def extension_scale(table: torch.Tensor, size: int, pos_span: int | None) -> float:
    """The factor ``M / S`` on the positional sum of a global table covering axes up to ``M`` on an axis of ``S > M``
    (1 when the table covers the axis or the span is windowed).

    The paper's positional layer sums ``q . r_d`` times the value over every key of the axis, with no normalisation:
    on a longer axis the sum has more terms and its magnitude grows with ``S``, and a network compounds the growth
    layer after layer. The factor keeps the sum's size that of the table's axis length (a mean over the keys times
    ``M``), the normalisation ``pos_scale`` turns on.
    """
    covered = (table.shape[0] + 1) // 2
    return covered / size if pos_span is None and size > covered else 1.0


def cover(
    table: torch.Tensor, size: int, pos_span: int | None, extend: str = DEFAULT_REL_POS_EXTEND, scale: bool = False
) -> torch.Tensor:
    """The table a pass over an axis of ``size`` uses: a global one extended to every offset of the axis (when it is
    smaller; by ``extend``, see ``extend_rel_pos``) and, with ``scale``, multiplied by ``extension_scale`` (the
    embeddings are the keys of a layer without softmax, so this scales its sum); a windowed one as it is."""
    if pos_span is not None:
        return table
    factor = extension_scale(table, size, pos_span) if scale else 1.0
    table = extend_rel_pos(table, size, extend)
    return table if factor == 1.0 else table * factor


def head_rows(
    table: torch.Tensor,
    size: int,
    heads: int,
    *,
    pos_span: int | None,
    dtype: torch.dtype | None = None,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
) -> torch.Tensor:
    """``(h, dk, 2S-1)``: each head's slice of the embeddings of offsets ``-(S-1) .. S-1``, zero outside the span
    (the layout ``FusedAxialRelPosAttention`` takes); ``extend`` and ``scale`` as in ``cover``."""
    table = cover(table, size, pos_span, extend, scale)
    rows = offset_rows(table if dtype is None else table.to(dtype), table_center(table), size)  # (2S-1, h*dk)
    return rows.view(2 * size - 1, heads, -1).permute(1, 2, 0)


def gather_offsets(
    table: torch.Tensor,
    size: int,
    pos_span: int | None,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
) -> torch.Tensor:
    """``relative_to_absolute(cover(table, size, pos_span, extend, scale), ...)`` by gathers, for a symbolic ``size``.

    The index comes from ``torch.arange(size)`` and every factor that depends on ``size`` is a tensor computed from it,
    so no Python value depends on ``size`` and a graph recorded by ``torch.export``, ONNX export, ``torch.jit.trace``
    or ``torch.compile(dynamic=True)`` holds for every size. A global table on an axis longer than it covers follows
    the size policy of ``cover`` (the tests check the two agree): ``"edge"`` takes the edge rows, ``"zero"`` zeros,
    ``"interp"`` interpolates between the two rows around offset ``d (M-1)/(S-1)``, and ``scale`` multiplies by
    ``M / S``; on an axis the table covers, every policy gathers the learned rows as they are (factor 1, fraction 0).
    A windowed table's offsets outside the window are zero.

    Args:
        table: ``(n_rel, C)`` embeddings, offset 0 at ``table_center``.
        size: axis length S (an int or a symbolic size).
        pos_span: None for a global table, else the window length (``n_rel``).
        extend: how a global table is extended beyond its length (``extend_rel_pos``).
        scale: multiply by ``extension_scale``.

    Returns:
        ``(S, S, C)``: ``[x, x'] = r_(x'-x)``.
    """
    center, last = table_center(table), table.shape[0] - 1
    pos = torch.arange(size, device=table.device)
    offsets = pos[None, :] - pos[:, None]  # (S, S): x' - x
    exact = torch.float64 if table.dtype == torch.float64 else torch.float32  # row numbers exact beyond bf16's 256
    length = (pos[-1] + 1).to(exact)  # S, as a tensor
    if pos_span is None and check_rel_pos_extend(extend) == "interp":
        ratio = (center / (length - 1).clamp(min=1)).clamp(max=1)  # (M-1)/(S-1); 1 where the table covers the axis
        where = offsets.to(exact) * ratio + center  # (S, S): the fractional row of each offset
        low = where.floor().clamp(0, last)
        frac = (where - low).unsqueeze(-1).to(table.dtype)
        low = low.long()
        keys = table[low] * (1 - frac) + table[(low + 1).clamp(max=last)] * frac  # (S, S, C)
    else:
        keys = table[offsets.clamp(-center, last - center) + center]  # (S, S, C): the edge rows beyond the table
        if pos_span is not None or extend == "zero":
            keys = torch.where((offsets.abs() <= center).unsqueeze(-1), keys, keys.new_zeros(()))
    if scale and pos_span is None:
        keys = keys * ((center + 1) / length).clamp(max=1).to(table.dtype)  # M / S beyond the table, else 1
    return keys


def head_keys(
    table: torch.Tensor,
    size: int,
    heads: int,
    *,
    pos_span: int | None,
    dtype: torch.dtype | None = None,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """``(h, S, dk, S)``: each head's absolute keys ``[x, :, x'] = r_(x'-x)``, zero outside the span (the layout
    ``AxialRelPosAttention`` takes); ``extend`` and ``scale`` as in ``cover``. ``gather=True`` builds them by
    ``gather_offsets``, for graphs over a symbolic ``size``; the same values."""
    if gather:
        keys = gather_offsets(table if dtype is None else table.to(dtype), size, pos_span, extend, scale)
    else:
        table = cover(table, size, pos_span, extend, scale)
        keys = relative_to_absolute(table if dtype is None else table.to(dtype), table_center(table), size)
    return keys.reshape(size, size, heads, -1).permute(2, 0, 3, 1).contiguous()  # (S, S, h*dk) -> (h, S, dk, S)


def axis_logits(
    q: torch.Tensor,
    table: torch.Tensor,
    *,
    pos_span: int | None,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """Positional logits along one axis, relative offsets turned absolute without an index.

    Args:
        q: queries ``(B, h, L, S, dk)``, attending along the S axis (L is the other axis).
        table: relative embeddings ``(n_rel, h * dk)``.
        pos_span: the span (None: global).
        extend: how a global table is extended beyond its length (``extend_rel_pos``).
        scale: multiply by ``extension_scale`` (``cover``).
        gather: take the absolute keys from ``gather_offsets`` (graphs over a symbolic S) instead of a strided view.

    Returns:
        ``(B, h, L, S, S)`` logits ``[..., x, x'] = q_x . r_(x'-x)``, zero outside the span (a strided view).
    """
    B, h, L, S, dk = q.shape
    if gather:
        keys = head_keys(table, S, h, pos_span=pos_span, dtype=q.dtype, extend=extend, scale=scale, gather=True)
        return torch.einsum("bhlxk,hxky->bhlxy", q, keys)  # keys (h, S, dk, S)
    rows = head_rows(table, S, h, pos_span=pos_span, dtype=q.dtype, extend=extend, scale=scale)  # (h, dk, 2S-1)
    rel = torch.matmul(q.reshape(B, h, L * S, dk), rows)  # (B, h, L*S, 2S-1)
    return skew(rel.view(B, h, L, S, 2 * S - 1), S)


def axis_weights(
    q: torch.Tensor,
    table: torch.Tensor | None,
    *,
    pos_span: int | None,
    softmax: bool,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """The weight each query gives each key of its line in one axial positional layer.

    Args:
        q: queries ``(B, h, L, S, dk)``, attending along the S axis (L is the other axis).
        table: relative embeddings ``(n_rel, h * dk)``, or None for uniform averaging over the span.
        pos_span: the span (None: global).
        softmax: softmax of the logits over the span (else the logits themselves, the paper's weights).
        extend: how a global table is extended beyond its length (``extend_rel_pos``).
        scale: without softmax, multiply the weights by ``extension_scale`` (a softmax is normalised already).
        gather: the logits by ``gather_offsets`` (graphs over a symbolic S, see ``axis_logits``).

    Returns:
        ``(B, h, L, S, S)``: ``[..., x, x']``, zero outside the span.
    """
    S = q.shape[-2]
    if table is None:
        return uniform_weights(S, pos_span, q.dtype, q.device).expand(*q.shape[:-1], S)
    logits = axis_logits(q, table, pos_span=pos_span, extend=extend, scale=scale and not softmax, gather=gather)
    if not softmax:
        return logits
    return logits.masked_fill(~span_mask(S, pos_span, q.device), float("-inf")).softmax(dim=-1)


def plane_weights(
    q: torch.Tensor,
    table_col: torch.Tensor | None,
    table_row: torch.Tensor | None,
    *,
    pos_span: int | None,
    softmax: bool,
    extend: str = DEFAULT_REL_POS_EXTEND,
    scale: bool = False,
) -> torch.Tensor:
    """The weights of one 2-D (non-axial) positional layer, logit ``q . (r^col_da + r^row_db)`` for offset (da, db).

    Args:
        q: queries ``(B, h, dk, H, W)``.
        table_col: column embeddings ``(n_rel, h * dk)``, or None (with ``table_row``) for uniform averaging.
        table_row: row embeddings.
        pos_span: the span along each axis (None: global); the 2-D span is their product.
        softmax: softmax of the logits over the 2-D span (always so without embeddings: uniform).
        extend: how global tables are extended beyond their length (``extend_rel_pos``).
        scale: without softmax, multiply the weights by both axes' ``extension_scale``.

    Returns:
        ``(B, h, N, N)`` dense weights, ``N = H * W`` in row-major pixel order, zero outside the span.
    """
    B, h, _, H, W = q.shape
    if table_col is not None:
        q_col = q.permute(0, 1, 4, 3, 2)
        col = axis_logits(q_col, table_col, pos_span=pos_span, extend=extend).transpose(2, 3)  # (B, h, H, W, H)
        row = axis_logits(q.permute(0, 1, 3, 4, 2), table_row, pos_span=pos_span, extend=extend)  # (B, h, H, W, W)
        logits = (col[..., :, None] + row[..., None, :]).reshape(B, h, H * W, H * W)
    else:
        logits = q.new_zeros(B, h, H * W, H * W)
    mask = span_mask(H, pos_span, q.device)[:, None, :, None] & span_mask(W, pos_span, q.device)[None, :, None, :]
    mask = mask.reshape(H * W, H * W)
    if softmax or table_col is None:
        return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    if scale:
        factor = extension_scale(table_col, H, pos_span) * extension_scale(table_row, W, pos_span)
        logits = logits if factor == 1.0 else logits * factor
    return logits * mask.to(logits.dtype)


class RelPosModule(nn.Module):
    """Base of modules whose positional attention uses axial relative tables, and the weights those give.

    A subclass sets these attributes (``GlobalSelfAttention`` does in its constructor):

    Attributes:
        rel_col: column table ``(n_rel, heads * dk)`` (offsets along H), a parameter, or None without embeddings.
        rel_row: row table (offsets along W), or None.
        max_size: the (height, width) the global tables are sized for (``table_length``).
        pos_span: None (global) or the odd window length.
        pos_softmax: softmax of the positional logits over the span.
        heads: attention heads; head ``i`` uses columns ``i * dk : (i + 1) * dk`` of the tables.
        rel_pos_extend: how global tables are extended to axes longer than they cover (``extend_rel_pos``).
        pos_scale: on such axes, scale the positional sum (without softmax) by ``extension_scale``.
    """

    rel_col: nn.Parameter | None
    rel_row: nn.Parameter | None
    max_size: tuple[int, int]
    pos_span: int | None
    pos_softmax: bool
    heads: int
    rel_pos_extend: str
    pos_scale: bool

    def size_policy(self) -> dict[str, str | bool]:
        """The keywords (``extend``, ``scale``) that say how this module's tables serve axes beyond their length:
        the one place the table functions (``cover``, ``head_rows``, ``axis_weights``, ...) get them from."""
        return dict(extend=self.rel_pos_extend, scale=self.pos_scale)

    def axis_weights(self, q: torch.Tensor, axis: int) -> torch.Tensor:
        """The weight each query gives each key of its column (``axis=0``) or row (``axis=1``) in the axial
        positional layers: ``q_x . r_(x'-x)`` over the span, softmaxed with ``pos_softmax``, uniform without relative
        embeddings. The forward pass applies exactly these weights (without ``pos_softmax`` it never stores them).

        Args:
            q: queries ``(B, h, dk, H, W)``, the module's query projection split into heads.
            axis: 0 for the column layer (attends along H), 1 for the row layer (along W).

        Returns:
            ``(B, h, W, H, H)`` ``[b, head, w, a, a']`` for the column layer, ``(B, h, H, W, W)``
            ``[b, head, a, w, w']`` for the row layer.
        """
        table = self.rel_col if axis == 0 else self.rel_row
        q = q.permute(0, 1, 4, 3, 2) if axis == 0 else q.permute(0, 1, 3, 4, 2)  # (B, h, L, S, dk)
        return axis_weights(q, table, pos_span=self.pos_span, softmax=self.pos_softmax, **self.size_policy())

    def plane_weights(self, q: torch.Tensor) -> torch.Tensor:
        """The weights of the 2-D positional layer (the non-axial ablation): what each pixel's query gives each pixel.

        Args:
            q: queries ``(B, h, dk, H, W)``.

        Returns:
            ``(B, h, N, N)``, ``N = H * W`` in row-major pixel order, zero outside the span.
        """
        return plane_weights(
            q, self.rel_col, self.rel_row, pos_span=self.pos_span, softmax=self.pos_softmax, **self.size_policy()
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Fits the incoming global tables to this module with ``fit_rel_pos_state`` before loading them.

        Weights saved at another input size therefore load through ``load_state_dict`` and everything built on it
        (timm's ``pretrained=True``, ``pretrained_cfg_overlay``, ``checkpoint_path``, ``load_checkpoint``): a table of
        another length is kept whole and this module's table takes its length. It stays the same ``Parameter`` object
        (its ``data`` is replaced), so an optimizer built before loading still holds it. Other mismatches (a windowed
        table of another span, another width) are left for ``load_state_dict`` to report, and strict loading still
        reports missing and unexpected keys. Runs only when loading; the forward pass is unchanged.
        """
        keys = {attr: prefix + attr for attr in ("rel_col", "rel_row") if prefix + attr in state_dict}
        held = {attr: getattr(self, attr) for attr in keys}
        fitted = fit_rel_pos_state({attr: state_dict[key] for attr, key in keys.items()}, self) if keys else {}
        for attr, key in keys.items():
            state_dict[key] = fitted[attr]  # a copy of the caller's dict (load_state_dict makes one)
            param, old = getattr(self, attr), held[attr]
            if old is not None and param is not old:  # resized: keep the Parameter object, give it the new shape
                old.data = param.data
                setattr(self, attr, old)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


@torch.no_grad()
def resize_rel_pos(module: nn.Module, size: int | tuple[int, int]) -> nn.Module:
    """Enlarges the global relative tables of every GSA module (``RelPosModule``) in ``module`` in place.

    Each new table is the one the module uses at forward time on an axis of the new length (``cover`` under the
    module's ``size_policy``: extended by ``rel_pos_extend``, scaled with ``pos_scale``), so the output on inputs of
    exactly that size is unchanged; with ``rel_pos_extend="edge"`` or ``"zero"`` and no ``pos_scale`` (learned
    offsets keep their embeddings) it is unchanged at every size. It is for giving the farther offsets trainable
    embeddings of their own (fine-tuning at a larger size). Modules with a windowed span, or tables already large
    enough, are unchanged. In a strided network the inner modules grow by the same factor as the outermost one.

    Args:
        module: a ``GlobalSelfAttention`` (any ``RelPosModule``) or a model containing them.
        size: the new largest input (height, width) of the outermost (largest) modules.

    Returns:
        ``module``, for chaining.
    """
    new_h, new_w = to_pair(size, "size")
    layers = [m for m in module.modules() if isinstance(m, RelPosModule) and m.rel_col is not None]
    layers = [m for m in layers if m.pos_span is None]
    if not layers:
        return module
    ref_h, ref_w = max(m.max_size[0] for m in layers), max(m.max_size[1] for m in layers)
    for m in layers:
        target = (math.ceil(m.max_size[0] * new_h / ref_h), math.ceil(m.max_size[1] * new_w / ref_w))
        target = (max(target[0], m.max_size[0]), max(target[1], m.max_size[1]))
        for name, old, new in (("rel_col", m.max_size[0], target[0]), ("rel_row", m.max_size[1], target[1])):
            if new == old:
                continue
            table = getattr(m, name)  # (2 * old - 1, C)
            grown = cover(table, new, None, **m.size_policy())  # (2 * new - 1, C)
            setattr(m, name, nn.Parameter(grown.contiguous(), requires_grad=table.requires_grad))
        m.max_size = target
    return module


def fit_rel_pos_state(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fits the global relative tables of a state dict to the GSA modules of ``model`` before loading it.

    A model built for another input size (``img_size``) has tables of another length. A loaded table is kept whole:
    the module's table takes its length (``max_size`` with it), so no learned embedding is dropped, and the module
    extends a shorter one at forward time as the saved module did (its ``size_policy``): the loaded model computes
    on any input what the saved model computed. (Storing the extension instead would not: the default policy
    resamples the table to each axis length, which no single longer table reproduces at every size.) To give the
    farther offsets trainable rows of their own, call ``resize_rel_pos`` after loading. Every GSA module calls it on
    the tables it loads (``RelPosModule._load_from_state_dict``), so ``load_state_dict`` needs no explicit call;
    other shape mismatches are left for ``load_state_dict`` to report.

    Args:
        state_dict: the weights to load (not modified; a new dict is returned).
        model: the model about to load them (tables of another length are resized in place, uninitialised).

    Returns:
        the state dict (a copy).
    """
    state_dict = dict(state_dict)
    for name, m in model.named_modules():
        if not isinstance(m, RelPosModule) or m.rel_col is None or m.pos_span is not None:
            continue
        for axis, attr in enumerate(("rel_col", "rel_row")):
            key = f"{name}.{attr}" if name else attr
            param, loaded = getattr(m, attr), state_dict.get(key)
            if loaded is None or loaded.ndim != 2 or loaded.shape[1:] != param.shape[1:] or loaded.shape[0] % 2 == 0:
                continue
            if loaded.shape[0] != param.shape[0]:
                table = torch.empty(loaded.shape, device=param.device, dtype=param.dtype)
                setattr(m, attr, nn.Parameter(table, requires_grad=param.requires_grad))
                size = list(m.max_size)
                size[axis] = (loaded.shape[0] + 1) // 2
                m.max_size = (size[0], size[1])
    return state_dict
