"""GSA in a CNN you already have: ``convert_to_gsa`` puts GSA modules in place of its 3x3 convolutions.

The paper's GSA network is "the corresponding" ResNet with GSA modules instead of its spatial convolutions
(``docs/design.md``); this does that to an existing torchvision or timm model instead of building one from a config.
Each dense 3x3 convolution of the chosen stages becomes a ``GlobalSelfAttention(in_channels -> out_channels)`` with
the convolution's stride (stride 2 = the module at full resolution, then a 2x2 average pool in ceil mode: the output
size of a padded 3x3 stride-2 convolution). Everything else is kept as it is, weights included: the stem, the 1x1
convolutions, the shortcuts, and the batch norm and activation after each replaced convolution. The GSA modules start
from their own initialisation, so the converted model is fine-tuned.

What is this project's choice:
    * stages are found by name: ``layer1`` .. ``layer4`` (torchvision's and timm's ResNets) or ``stages.0`` ..
      (timm's ``ByobNet``, RegNet, ...; stage ``i + 1``); a 3x3 convolution outside every stage (a deep stem's) is
      never converted;
    * a 3x3 convolution GSA cannot stand in for is refused with the reason, never skipped: grouped or depthwise
      (``groups != 1``), dilated, with a bias (the GSA module has no output bias), with a stride other than 1 or 2 on
      both axes, or with a padding that does not keep the size (only ``padding=1`` or ``"same"``). Choose ``stages``
      without them;
    * heads: ``heads=None`` (default) lets each module choose (``gsanet.layers.auto_heads``: the largest count <= 8
      that divides its width and keeps >= 8 channels a head), so any width converts;
    * the relative tables of each module are sized for the map the convolution sees at ``img_size`` (default: the
      timm model's ``pretrained_cfg`` input size, else 224x224), found by one forward pass of a 1-image batch in eval
      mode with hooks on the convolutions. Larger inputs run too (the tables extend, ``GlobalSelfAttention``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..layers import GlobalSelfAttention
from ..layers.helpers import to_pair

__all__ = ["DEFAULT_IMG_SIZE", "convert_to_gsa", "stage_of"]

DEFAULT_IMG_SIZE = 224
"""The input size the tables are sized for when neither ``img_size`` nor a timm ``pretrained_cfg`` gives one."""

_STAGE_NAMES = ((re.compile(r"(?:^|\.)layer(\d+)(?:\.|$)"), 0), (re.compile(r"(?:^|\.)stages\.(\d+)(?:\.|$)"), 1))
_SET_PER_MODULE = frozenset({"dim", "dim_out", "stride", "feat_size", "device", "dtype"})


def stage_of(name: str) -> int | None:
    """The stage (1-based) a module belongs to, from its name, or None outside every stage.

    ``layer2.0.conv1`` (torchvision's and timm's ResNets) is in stage 2; ``stages.1.0.conv2_kxk`` (timm's
    ``ByobNet`` and the models built on ``stages``) is in stage 2 too.
    """
    for pattern, offset in _STAGE_NAMES:
        found = pattern.search(name)
        if found:
            return int(found.group(1)) + offset
    return None


def _refusal(conv: nn.Conv2d) -> str | None:
    """Why a 3x3 convolution cannot become a GSA module, or None when it can."""
    if conv.groups != 1:
        return f"groups={conv.groups} (a grouped or depthwise convolution; GSA mixes all channels)"
    if conv.dilation != (1, 1):
        return f"dilation={conv.dilation} (GSA has no dilated form)"
    if conv.bias is not None:
        return "a bias (the GSA module has no output bias; the batch norm after a ResNet convolution makes one moot)"
    if conv.stride not in ((1, 1), (2, 2)):
        return f"stride={conv.stride} (GSA takes stride 1 or 2 on both axes)"
    if conv.padding not in ((1, 1), "same"):
        return f"padding={conv.padding} (GSA keeps the size, like a 3x3 convolution with padding 1)"
    return None


def _chosen_convs(model: nn.Module, stages: Iterable[int] | None) -> dict[str, nn.Conv2d]:
    """The 3x3 convolutions of the chosen stages, by module name; refuses stages that do not exist."""
    convs = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and stage_of(name) is not None
    }
    found = sorted({stage_of(name) for name in convs})
    if not found:
        raise ValueError(
            f"found no 3x3 convolution in a stage of {type(model).__name__} (stages are modules named layer1.. or "
            f"stages.0..): convert_to_gsa converts torchvision and timm ResNet-style models"
        )
    chosen = found if stages is None else sorted(set(stages))
    missing = [s for s in chosen if s not in found]
    if missing:
        raise ValueError(f"stages {missing} have no 3x3 convolution; the model's stages with one are {found}")
    convs = {name: m for name, m in convs.items() if stage_of(name) in chosen}
    for name, conv in convs.items():
        reason = _refusal(conv)
        if reason is not None:
            raise ValueError(
                f"cannot replace {name} ({conv}) with a GSA module: it has {reason}; choose stages without it "
                f"(stages=...); the stages with 3x3 convolutions are {found}"
            )
    return convs


def _default_img_size(model: nn.Module) -> tuple[int, int]:
    """The input size a timm model's ``pretrained_cfg`` states, else ``DEFAULT_IMG_SIZE`` squared."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[-2]), int(size[-1])) if size else (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)


@torch.no_grad()
def _input_sizes(
    model: nn.Module, convs: dict[str, nn.Conv2d], img_size: tuple[int, int]
) -> dict[str, tuple[int, int]]:
    """The (height, width) of the map each convolution sees at ``img_size``: one forward pass of a 1-image batch in
    eval mode (no batch norm statistics change), every module's mode restored after."""
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")  # timm names the input conv
    try:
        first = model.get_submodule(first_conv) if isinstance(first_conv, str) else None
    except AttributeError:
        first = None
    if not isinstance(first, nn.Conv2d):
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    param = next(model.parameters())
    x = torch.zeros(1, first.in_channels, *img_size, device=param.device, dtype=param.dtype)
    sizes: dict[str, tuple[int, int]] = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # None: the input passes unchanged
            sizes.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return record

    modes = {m: m.training for m in model.modules()}
    handles = [conv.register_forward_pre_hook(recorder(name)) for name, conv in convs.items()]
    try:
        model.eval()(x)
    except Exception as error:
        raise ValueError(
            f"could not run {type(model).__name__} on a {tuple(x.shape)} input to find the feature sizes ({error}); "
            f"pass an img_size the model takes"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return sizes


def convert_to_gsa(
    model: nn.Module,
    *,
    stages: Iterable[int] | None = None,
    img_size: int | tuple[int, int] | None = None,
    heads: int | None = None,
    **gsa_kwargs: Any,
) -> nn.Module:
    """Replaces the 3x3 convolutions of a torchvision or timm CNN with GSA modules, in place.

    Example (fine-tune the result as any model)::

        model = convert_to_gsa(torchvision.models.resnet50(weights=...), stages=(3, 4))

    Args:
        model: a ResNet-style model (stages named ``layer1``.. or ``stages.0``..), on its device and dtype.
        stages: the 1-based stages to convert (default: every stage with a 3x3 convolution); the stem never is.
        img_size: the input (height, width) the relative tables are sized for (default: the timm ``pretrained_cfg``
            input size, else 224); any input size runs after conversion.
        heads: attention heads of every module; None chooses per module (``gsanet.layers.auto_heads``).
        **gsa_kwargs: other ``GlobalSelfAttention`` arguments for every module (``pos_span``, ``content``, ...).

    Returns:
        ``model`` itself, its replaced convolutions now ``GlobalSelfAttention`` modules (same train/eval mode, device
        and dtype); every other module and weight is untouched.

    Raises:
        ValueError: no stage found, a chosen stage without 3x3 convolutions, a 3x3 convolution GSA cannot replace
            (grouped, dilated, with a bias, another stride or padding: the message names it), or a model that does not
            run at ``img_size``.
        TypeError: a ``gsa_kwargs`` key the conversion sets per module (``dim_out``, ``stride``, ``feat_size``, ...).
    """
    fixed = sorted(_SET_PER_MODULE & set(gsa_kwargs))
    if fixed:
        raise TypeError(f"convert_to_gsa sets {fixed} from each convolution; remove them from the keyword arguments")
    size = _default_img_size(model) if img_size is None else to_pair(img_size, "img_size")
    convs = _chosen_convs(model, stages)
    sizes = _input_sizes(model, convs, size)
    layers = {}
    for name, conv in convs.items():  # every module built before any is put in: a refusal leaves the model as it was
        try:
            layers[name] = GlobalSelfAttention(
                conv.in_channels,
                conv.out_channels,
                heads=heads,
                stride=conv.stride[0],
                feat_size=sizes.get(name),  # None (the module's default) for a convolution no forward pass reaches
                device=conv.weight.device,
                dtype=conv.weight.dtype,
                **gsa_kwargs,
            ).train(conv.training)
        except (TypeError, ValueError) as error:
            raise type(error)(f"cannot replace {name} ({conv}) with a GSA module: {error}") from error
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    return model
