"""Parameter and multiply-add counting, shared by ``gsanet summary``, the model metadata test and the benchmarks.

Counts come from PyTorch's ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products of the
forward pass (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions, and ``einsum``/``matmul`` through the ``bmm`` they
lower to) and nothing else: normalisation, softmax, pooling, activations and additions are free, the convention of
the published ResNet figures (ResNet-50 at 224x224: 4.1 G multiply-adds). FlopCounterMode reports FLOPs = 2 x MACs;
here everything is kept in multiply-adds (MACs) and FLOPs are derived.

Two totals: ``macs``, what the forward pass actually multiplies, and ``algorithmic_macs``, the same with every GSA
module at the cost of its equations (``gsa_macs(..., algorithmic=True)``), the convention of published figures.

The forward pass runs on fake tensors (shapes only, no arithmetic), so a ResNet-101 at 224x224 costs well under a
second to count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from ..layers import GlobalSelfAttention

__all__ = ["MacCount", "count_macs", "count_params", "gsa_macs"]


@dataclasses.dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one forward pass, per image.

    Attributes:
        macs: total multiply-adds, as computed.
        algorithmic_macs: ``macs`` with every GSA module at its algorithmic cost instead of its implementation's.
        by_op: multiply-adds per ATen operator (``"aten.convolution"``, ``"aten.bmm"``, ``"aten.addmm"``, ...).
        by_module: multiply-adds per module name (``""`` is the whole model, ``"stages.1"`` a child's child), down to
            the ``module_depth`` of ``count_macs``.
    """

    macs: int
    algorithmic_macs: int
    by_op: dict[str, int]
    by_module: dict[str, int]

    @property
    def flops(self) -> int:
        """FLOPs, counted as 2 x multiply-adds."""
        return 2 * self.macs


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    Args:
        model: the model.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    module_depth: int = 2,
) -> MacCount:
    """Multiply-adds of one forward pass of ``model`` in eval mode, per image.

    The model keeps its parameters and its train/eval mode; the pass runs on a fake input under ``torch.no_grad``.

    Args:
        model: the model.
        input_size: ``(C, H, W)`` of one input image.
        batch_size: images in the counted batch; the result is divided by it.
        module_depth: depth of the module names kept in ``by_module`` (1 = ``stem``, ``stages``, ...).

    Returns:
        The multiply-adds per image.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    gsa_calls: list[tuple[GlobalSelfAttention, int, int]] = []  # (module, H, W) of every GSA forward

    def record(module: GlobalSelfAttention, args: tuple[torch.Tensor, ...]) -> None:
        gsa_calls.append((module, int(args[0].shape[-2]), int(args[0].shape[-1])))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, GlobalSelfAttention)]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with FakeTensorMode(allow_non_fake_inputs=True), counter, torch.no_grad():
            model(torch.empty(batch_size, *input_size, device=device))  # a fake tensor: shapes only
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    per_image = 2 * batch_size  # FlopCounterMode counts 2 FLOPs per multiply-add, for the whole batch
    macs = counter.get_total_flops() // per_image
    excess = sum(gsa_macs(m, h, w) - gsa_macs(m, h, w, algorithmic=True) for m, h, w in gsa_calls)
    counts = counter.get_flop_counts()
    by_op = {str(op): flops // per_image for op, flops in counts.get("Global", {}).items()}
    by_module = {}
    for name, ops in counts.items():
        if name == "Global":
            continue
        name = name.partition(".")[2]  # drop the root's class name: "ResNet.layer1.0" -> "layer1.0", "ResNet" -> ""
        if name.count(".") < module_depth:
            by_module[name] = sum(ops.values()) // per_image
    return MacCount(macs=macs, algorithmic_macs=macs - excess, by_op=by_op, by_module=by_module)


def gsa_macs(layer: GlobalSelfAttention, height: int, width: int, algorithmic: bool = False) -> int:
    """Multiply-adds of one GSA module on a ``height x width`` input (one image).

    As computed by ``gsanet.layers.gsa`` (the default; ``count_macs`` must reproduce it, product by product): the 1x1
    query/key/value projection; the content layer's ``rho(K^T) V`` and ``Q (...)``; per axis of length S, the
    positional logits of every query against the S absolute keys (against the ``2S-1`` relative embedding rows,
    turned absolute by a strided view, with ``pos_softmax`` or ``axial=False``) and the weighted sum over the S
    positions. A windowed ``pos_span`` runs densely over the axis (zero weights
    outside the window), so it costs what the global span costs. The 2x2 average pool of ``stride=2``, the batch
    norm and the softmaxes are not multiply-adds. Keep this in step with the layer.

    ``algorithmic=True`` counts the equations instead: S logits per query and axis (global span), or L (a window of
    L), and the weighted sum over as many positions.

    Args:
        layer: the module.
        height: input height.
        width: input width.
        algorithmic: the cost of the equations rather than of the implementation.
    """
    n = height * width
    dk, dv = layer.dim_key, layer.dim_out
    macs = n * layer.dim * (2 * dk + dv)  # 1x1 projection to q, k, v
    if layer.content:
        macs += 2 * n * dk * dv // layer.heads  # rho(K^T) V: (dk/h x N)(N x dv/h) per head, then Q: same size
    if not layer.positional:
        return macs
    if algorithmic:
        span_h, span_w = (height, width) if layer.pos_span is None else (layer.pos_span, layer.pos_span)
        span_h, span_w = min(span_h, height), min(span_w, width)
        axial_span = span_h + span_w if layer.axial else span_h * span_w
        logits = n * (span_h + span_w) * dk if layer.rel_pos else 0  # 2-D logits are q.r_col + q.r_row
        return macs + logits + n * axial_span * dv
    # the axial fast path (AxialRelPosAttention) computes exactly S logits per query and axis; the positional-softmax
    # and 2-D paths compute them against the 2S-1 relative rows and turn them absolute with a strided view
    exact = layer.axial and not layer.pos_softmax
    logits = n * ((height + width) if exact else (2 * height - 1 + 2 * width - 1)) * dk if layer.rel_pos else 0
    # weighted sums over the column, then the row; or one dense 2-D sum over all N positions
    return macs + logits + n * ((height + width) if layer.axial else n) * dv
