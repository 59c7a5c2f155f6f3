"""GSA-ResNets and the matching convolutional ResNets, as declarative configs on timm's ``ByobNet``.

Shen, Bello, Vemulapalli, Jia, Chen, "Global Self-Attention Networks for Image Recognition",
https://arxiv.org/abs/2010.03019 (2020).

What is the paper's: a GSA network uses GSA modules instead of the spatial convolutions of the corresponding ResNet;
the comparison is with that ResNet.

What is this project's choice (the reasons are in ``docs/design.md``):
    * bottleneck ResNets, depths 26 = [1, 2, 4, 1], 38 = [2, 3, 5, 2], 50 = [3, 4, 6, 3], 101 = [3, 4, 23, 3]
      blocks per stage, bottleneck widths 64/128/256/512, expansion 4; every 3x3 convolution of the bottlenecks is a
      ``GlobalSelfAttention(width -> width)`` followed, like the convolution it replaces, by batch norm and ReLU;
    * stride 2 in the first block of stages 2-4, in the 3x3 convolution / GSA module (ResNet v1.5); projection
      shortcuts are strided 1x1 convolutions;
    * the convolutional stem is kept: 7x7/2 conv + 3x3/2 max-pool for ImageNet-size inputs (``gsa_resnet50``), one
      3x3/1 conv and no pool for 32x32 and smaller (``gsa_resnet50_s32``);
    * ``heads = min(8, max(1, width // 8))``: 8 heads at full width; a width multiplier keeps >= 8 channels a head;
    * the relative position tables of each GSA module are sized for its feature map at the model's ``img_size``
      (the default input size unless given), rounded up to a multiple of the network stride so that every
      ceil-mode downsampling stays covered. Any input size runs (``fixed_input_size=False``): on larger inputs the
      GSA modules extend their tables at forward time by their size policy (resampled to the axis, the positional sum
      scaled by ``table axis / axis``: ``rel_pos_extend``, ``pos_scale``), so ``img_size`` only decides which offsets
      get learned embeddings of their own. Weights load at any ``img_size``
      through every loading path: each GSA module fits the tables it loads (``fit_rel_pos_state`` keeps them whole).

Every registered model is a ``GsaResNetArch`` below; a variant (GSA in the last two stages only, content attention
only, ...) is a ``dataclasses.replace`` of it. Every entrypoint also takes ``width_mult``, ``gsa_stages`` and
``gsa_kwargs`` to build such a variant on the fly, e.g.
``timm.create_model("gsa_resnet50", gsa_stages=(4,), gsa_kwargs=dict(pos_span=7))``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import make_divisible, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from torch import nn

from ..datasets import DATASETS
from ..layers import GlobalSelfAttention
from .pretrained import SHIPPED, shipped_cfg

__all__ = [
    "BLOCK_WIDTHS",
    "DEPTHS",
    "EXPANSION",
    "GsaResNet",
    "GsaResNetArch",
    "GsaResNetCfg",
    "ModelMeta",
    "conv_counterpart",
    "gsa_heads",
    "make_model_cfg",
    "model_archs",
    "model_meta",
]

DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
BLOCK_WIDTHS = (64, 128, 256, 512)  # bottleneck (3x3 conv / GSA) width of stages 1-4 at width_mult 1
EXPANSION = 4  # block output = 4 x bottleneck width
STEM_WIDTH = 64
MAX_HEADS = 8


# ---------------------------------------------------------------------------------------------------- architecture
@dataclasses.dataclass(frozen=True)
class GsaResNetArch:
    """What differs between the members of the GSA-ResNet / conv-ResNet family.

    Attributes:
        depths: bottleneck blocks in stages 1-4.
        small_input: a 3x3/1 stem conv and no pool (inputs of 32x32 and smaller) instead of 7x7/2 conv + max-pool.
        width_mult: multiplier of the stem and bottleneck widths (rounded to a multiple of 8).
        gsa_stages: stages (1-4, as timm's ``feature_info`` numbers them) whose 3x3 convolutions are GSA modules;
            ``()`` is the convolutional ResNet.
        gsa_kwargs: extra ``GlobalSelfAttention`` arguments, e.g. ``dict(positional=False)``, ``dict(pos_span=7)``.
    """

    depths: tuple[int, ...]
    small_input: bool = False
    width_mult: float = 1.0
    gsa_stages: tuple[int, ...] = (1, 2, 3, 4)
    gsa_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.depths) != len(BLOCK_WIDTHS) or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"depths must be {len(BLOCK_WIDTHS)} positive ints, got {self.depths!r}")
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, (int, float)) or self.width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got {self.width_mult!r}")
        stages = tuple(self.gsa_stages)
        valid = range(1, len(BLOCK_WIDTHS) + 1)
        if any(isinstance(s, bool) or s not in valid for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"gsa_stages must be distinct stage numbers among {tuple(valid)}, got {self.gsa_stages!r}")
        object.__setattr__(self, "gsa_stages", tuple(sorted(stages)))
        if not isinstance(self.gsa_kwargs, Mapping):
            raise TypeError(f"gsa_kwargs must be a dict of GlobalSelfAttention arguments, got {self.gsa_kwargs!r}")
        reserved = {"dim", "dim_out", "stride", "feat_size"} & set(self.gsa_kwargs)
        if reserved:
            raise ValueError(f"gsa_kwargs cannot set {sorted(reserved)}: the network sets them for each block")
        object.__setattr__(self, "gsa_kwargs", dict(self.gsa_kwargs))


def scaled_width(width: int, width_mult: float) -> int:
    """``width * width_mult`` rounded to a multiple of 8 (timm's ``make_divisible``), at least 8."""
    return make_divisible(width * width_mult, 8)


def gsa_heads(width: int) -> int:
    """Attention heads of a GSA module of ``width`` channels: 8, fewer below 64 channels so each head keeps >= 8."""
    return min(MAX_HEADS, max(1, width // 8))


def gsa_layer(dim: int, *, device: Any = None, dtype: Any = None, **kwargs: Any) -> GlobalSelfAttention:
    """Builds a ``GlobalSelfAttention`` for timm's ``SelfAttnBlock``, which also passes ``device`` and ``dtype``."""
    layer = GlobalSelfAttention(dim, **kwargs)
    return layer if device is None and dtype is None else layer.to(device=device, dtype=dtype)


@dataclasses.dataclass
class GsaResNetCfg(ByoModelCfg):
    """``ByoModelCfg`` plus the stem stride.

    Attributes:
        stem_stride: 2 = timm's stem as configured; 1 = a single 3x3/1 stem conv (needs ``stem_type='3x3'`` and no
            ``stem_pool``; timm's own stems all stride by at least 2).
    """

    stem_stride: int = 2


def make_model_cfg(arch: GsaResNetArch) -> GsaResNetCfg:
    """The ``ByobNet`` config of an architecture."""
    blocks = []
    for stage, (depth, width) in enumerate(zip(arch.depths, BLOCK_WIDTHS, strict=True), start=1):
        width = scaled_width(width, arch.width_mult)
        common = dict(d=depth, c=width * EXPANSION, s=1 if stage == 1 else 2, gs=0, br=1 / EXPANSION)
        if stage in arch.gsa_stages:
            gsa_kwargs = {"heads": gsa_heads(width), **arch.gsa_kwargs}
            blocks.append(
                ByoBlockCfg(type="self_attn", self_attn_layer=gsa_layer, self_attn_kwargs=gsa_kwargs, **common)
            )
        else:
            blocks.append(ByoBlockCfg(type="bottle", **common))
    return GsaResNetCfg(
        blocks=tuple(blocks),
        downsample="conv1x1",
        stem_chs=scaled_width(STEM_WIDTH, arch.width_mult),
        stem_type="3x3" if arch.small_input else "7x7",
        stem_pool="" if arch.small_input else "maxpool",
        stem_stride=1 if arch.small_input else 2,
    )


# ---------------------------------------------------------------------------------------------------- the network
_BYOBNET_ARGS = frozenset(inspect.signature(ByobNet.__init__).parameters)


class GsaResNet(ByobNet):
    """``ByobNet`` with an optional stride-1 stem and GSA tables that cover the feature maps of ``img_size``.

    Args:
        cfg: the architecture config.
        img_size: the input (height, width) the GSA modules' relative tables are sized for (larger inputs extend
            them at forward time); ``None`` leaves the GSA modules at their default table size.
        **kwargs: ``ByobNet`` arguments (``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``,
            ``drop_path_rate``, ...) and ``GsaResNetCfg`` fields to override.
    """

    def __init__(self, cfg: GsaResNetCfg, img_size: int | tuple[int, int] | None = None, **kwargs: Any) -> None:
        # overlay cfg fields given as kwargs now, as ByobNet would (its own arguments, e.g. zero_init_last, stay)
        overlay = [k for k in kwargs if k in {f.name for f in dataclasses.fields(cfg)} and k not in _BYOBNET_ARGS]
        cfg = dataclasses.replace(cfg, **{k: kwargs.pop(k) for k in overlay})
        if cfg.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {cfg.stem_stride!r}")
        if cfg.stem_stride == 1 and (cfg.stem_type != "3x3" or cfg.stem_pool):
            raise ValueError("stem_stride=1 needs stem_type='3x3' and no stem_pool")
        stage_strides = [(stage[0] if isinstance(stage, tuple) else stage).s for stage in cfg.blocks]
        net_stride = cfg.stem_stride * (2 if cfg.stem_pool else 1) * math.prod(stage_strides)
        if img_size is not None:
            # ByobNet halves feature sizes with floor division, the layers downsample with ceil: size the tables for
            # the next multiple of the network stride, whose feature maps cover those of img_size at every stage
            img_size = tuple(math.ceil(s / net_stride) * net_stride for s in to_2tuple(img_size))
            if cfg.stem_stride == 1:
                img_size = tuple(2 * s for s in img_size)  # ByobNet builds the stem at stride 2, see below
        super().__init__(cfg, img_size=img_size, **kwargs)
        if cfg.stem_stride == 1:
            # timm's '3x3' stem without pool is one stride-2 3x3 conv (padding 1) + norm + act: make it stride 1
            conv = self.stem.conv
            if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)):
                raise RuntimeError(f"unexpected timm '3x3' stem {self.stem}; cannot make it stride 1")
            conv.stride = (1, 1)
            for info in self.feature_info:
                info["reduction"] //= 2
            stem_info = dict(num_chs=conv.out_channels, reduction=1, module="stem", stage=0)
            self.feature_info.insert(0, stem_info)  # the stem is feature 0, as in the ImageNet-stem models
            self.stage_ends = [f["stage"] for f in self.feature_info]


# ---------------------------------------------------------------------------------------------------- the registry
_TINY = GsaResNetArch(DEPTHS[26], small_input=True, width_mult=0.25)

model_archs: dict[str, GsaResNetArch] = dict(
    # ImageNet stem, 224x224
    gsa_resnet26=GsaResNetArch(DEPTHS[26]),
    gsa_resnet38=GsaResNetArch(DEPTHS[38]),
    gsa_resnet50=GsaResNetArch(DEPTHS[50]),
    gsa_resnet101=GsaResNetArch(DEPTHS[101]),
    conv_resnet26=GsaResNetArch(DEPTHS[26], gsa_stages=()),
    conv_resnet38=GsaResNetArch(DEPTHS[38], gsa_stages=()),
    conv_resnet50=GsaResNetArch(DEPTHS[50], gsa_stages=()),
    conv_resnet101=GsaResNetArch(DEPTHS[101], gsa_stages=()),
    # small-input stem, 32x32 (CIFAR) and 28x28 (Fashion-MNIST)
    gsa_resnet26_s32=GsaResNetArch(DEPTHS[26], small_input=True),
    gsa_resnet38_s32=GsaResNetArch(DEPTHS[38], small_input=True),
    gsa_resnet50_s32=GsaResNetArch(DEPTHS[50], small_input=True),
    gsa_resnet101_s32=GsaResNetArch(DEPTHS[101], small_input=True),
    conv_resnet26_s32=GsaResNetArch(DEPTHS[26], small_input=True, gsa_stages=()),
    conv_resnet38_s32=GsaResNetArch(DEPTHS[38], small_input=True, gsa_stages=()),
    conv_resnet50_s32=GsaResNetArch(DEPTHS[50], small_input=True, gsa_stages=()),
    conv_resnet101_s32=GsaResNetArch(DEPTHS[101], small_input=True, gsa_stages=()),
    # the CPU members, and the ablations as config diffs of gsa_resnet26_tiny
    gsa_resnet26_tiny=_TINY,
    conv_resnet26_tiny=dataclasses.replace(_TINY, gsa_stages=()),
    gsa_resnet26_tiny_content=dataclasses.replace(_TINY, gsa_kwargs=dict(positional=False)),
    gsa_resnet26_tiny_positional=dataclasses.replace(_TINY, gsa_kwargs=dict(content=False)),
    gsa_resnet26_tiny_last2=dataclasses.replace(_TINY, gsa_stages=(3, 4)),
    gsa_resnet26_tiny_last1=dataclasses.replace(_TINY, gsa_stages=(4,)),
)


def conv_counterpart(name: str) -> str | None:
    """The registered convolutional ResNet matching a GSA model (same stem, depths, widths), or None for a conv model.

    Args:
        name: a registered model name, e.g. ``"gsa_resnet26_tiny_last2"`` (counterpart ``"conv_resnet26_tiny"``).
    """
    arch = model_archs[name]
    if not arch.gsa_stages:
        return None
    conv = dataclasses.replace(arch, gsa_stages=(), gsa_kwargs={})
    return next((other for other, a in model_archs.items() if a == conv), None)


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """Figures of a registered model at its default config (input size, ``num_classes``, ``in_chans``).

    Attributes:
        params: parameters.
        macs: multiply-adds of one image (FLOPs = 2 x MACs) as computed, by ``gsanet.models.flops.count_macs``.
        algorithmic_macs: the same with the GSA modules at the cost of their equations (``MacCount.algorithmic_macs``).
    """

    params: int
    macs: int
    algorithmic_macs: int


# At the default config of each model (default_cfgs below: 3x224x224 / 3x32x32 with 1000 classes, 1x28x28 with 10 for
# the tiny members), as printed by `gsanet summary --meta`;
# tests/test_models.py recomputes them and fails on a drift of more than 0.5 %.
model_meta: dict[str, ModelMeta] = {
    "gsa_resnet26": ModelMeta(params=10_487_336, macs=2_309_742_592, algorithmic_macs=2_309_742_592),
    "gsa_resnet38": ModelMeta(params=14_385_960, macs=2_947_479_552, algorithmic_macs=2_947_479_552),
    "gsa_resnet50": ModelMeta(params=18_284_584, macs=3_585_216_512, algorithmic_macs=3_585_216_512),
    "gsa_resnet101": ModelMeta(params=30_835_752, macs=6_089_601_024, algorithmic_macs=6_089_601_024),
    "conv_resnet26": ModelMeta(params=13_696_552, macs=2_342_256_640, algorithmic_macs=2_342_256_640),
    "conv_resnet38": ModelMeta(params=19_626_792, macs=3_215_720_448, algorithmic_macs=3_215_720_448),
    "conv_resnet50": ModelMeta(params=25_557_032, macs=4_089_184_256, algorithmic_macs=4_089_184_256),
    "conv_resnet101": ModelMeta(params=44_549_160, macs=7_801_405_440, algorithmic_macs=7_801_405_440),
    "gsa_resnet26_s32": ModelMeta(params=10_412_072, macs=693_256_192, algorithmic_macs=693_256_192),
    "gsa_resnet38_s32": ModelMeta(params=14_286_120, macs=893_140_992, algorithmic_macs=893_140_992),
    "gsa_resnet50_s32": ModelMeta(params=18_160_168, macs=1_093_025_792, algorithmic_macs=1_093_025_792),
    "gsa_resnet101_s32": ModelMeta(params=30_606_888, macs=1_904_099_328, algorithmic_macs=1_904_099_328),
    "conv_resnet26_s32": ModelMeta(params=13_688_872, macs=729_432_064, algorithmic_macs=729_432_064),
    "conv_resnet38_s32": ModelMeta(params=19_619_112, macs=1_014_644_736, algorithmic_macs=1_014_644_736),
    "conv_resnet50_s32": ModelMeta(params=25_549_352, macs=1_299_857_408, algorithmic_macs=1_299_857_408),
    "conv_resnet101_s32": ModelMeta(params=44_541_480, macs=2_512_011_264, algorithmic_macs=2_512_011_264),
    "gsa_resnet26_tiny": ModelMeta(params=550_394, macs=38_324_224, algorithmic_macs=38_324_224),
    "conv_resnet26_tiny": ModelMeta(params=738_298, macs=36_130_048, algorithmic_macs=36_130_048),
    "gsa_resnet26_tiny_content": ModelMeta(params=527_866, macs=32_616_704, algorithmic_macs=32_616_704),
    "gsa_resnet26_tiny_positional": ModelMeta(params=550_394, macs=37_069_824, algorithmic_macs=37_069_824),
    "gsa_resnet26_tiny_last2": ModelMeta(params=556_026, macs=34_862_080, algorithmic_macs=34_862_080),
    "gsa_resnet26_tiny_last1": ModelMeta(params=644_090, macs=36_555_520, algorithmic_macs=36_555_520),
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2010.03019",
        "paper_name": "Global Self-Attention Networks for Image Recognition",
        **kwargs,
    }


def _cfg_s32(**kwargs: Any) -> dict[str, Any]:
    """A 32x32 small-stem model without weights: timm's defaults for the rest (1000 classes, ImageNet statistics)."""
    small = dict(input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, first_conv="stem.conv")
    return _cfg(**{**small, **kwargs})


def _cfg_fmnist(**kwargs: Any) -> dict[str, Any]:
    """The tiny members: Fashion-MNIST's 1x28x28 inputs and 10 classes, the dataset they are trained and compared on
    (shipped weights, ``gsanet experiment``); weights only where ``kwargs`` has them."""
    spec = DATASETS["fashion-mnist"]
    fmnist = dict(num_classes=spec.num_classes, input_size=spec.input_size, mean=spec.mean, std=spec.std)
    return _cfg_s32(**{**fmnist, **kwargs})


def _default_cfgs() -> dict[str, dict[str, Any]]:
    """Every model's configs: ImageNet-stem models 3x224x224, small-stem ones 3x32x32, the tiny ones Fashion-MNIST's
    1x28x28; a model with shipped weights has them as its tag (``gsa_resnet26_tiny.fmnist``), which timm makes its
    default config (a tag with weights comes first)."""
    cfgs = {}
    for name, arch in model_archs.items():
        shipped = SHIPPED.get(name)
        if shipped is not None:
            cfgs[shipped.name] = _cfg_fmnist(**shipped_cfg(shipped))
        elif "_tiny" in name:
            cfgs[name] = _cfg_fmnist()
        else:
            cfgs[name] = _cfg_s32() if arch.small_input else _cfg()
    return cfgs


default_cfgs = generate_default_cfgs(_default_cfgs())


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    return (sum(values) / len(values),) * channels  # one value (grey) repeated, or the mean of the colours


def _match_input_channels(model: nn.Module, in_chans: int) -> None:
    """Makes the model's ``pretrained_cfg`` describe the input it takes when it differs from the weights' channels.

    timm adapts the first convolution of weights with other channels (``adapt_input_conv``); the scripts then read
    the input size and normalisation from ``model.pretrained_cfg`` (``resolve_data_config``): they must say
    ``in_chans`` channels, with the weights' statistics per channel.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or cfg.get("input_size", (in_chans,))[0] == in_chans:
        return
    cfg = dict(cfg)
    for key in ("input_size", "test_input_size", "min_input_size"):
        if cfg.get(key) is not None:
            cfg[key] = (in_chans, *cfg[key][1:])
    for key in ("mean", "std"):
        cfg[key] = _per_channel(cfg[key], in_chans)
    model.pretrained_cfg = model.default_cfg = cfg


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    overrides = {k: kwargs.pop(k) for k in ("width_mult", "gsa_stages", "gsa_kwargs") if k in kwargs}
    arch = dataclasses.replace(model_archs[variant], **overrides)
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if kwargs.get("img_size") is None:
        kwargs["img_size"] = tuple(cfg.input_size[-2:])  # the tables' size: that of the config's input
    model = build_model_with_cfg(
        GsaResNet,
        variant,
        pretrained,
        model_cfg=make_model_cfg(arch),
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )
    if kwargs.get("in_chans") is not None:
        _match_input_channels(model, kwargs["in_chans"])
    return model


@register_model
def gsa_resnet26(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-26, ImageNet stem, 224x224."""
    return _create("gsa_resnet26", pretrained, **kwargs)


@register_model
def gsa_resnet38(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-38, ImageNet stem, 224x224."""
    return _create("gsa_resnet38", pretrained, **kwargs)


@register_model
def gsa_resnet50(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-50, ImageNet stem, 224x224."""
    return _create("gsa_resnet50", pretrained, **kwargs)


@register_model
def gsa_resnet101(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-101, ImageNet stem, 224x224."""
    return _create("gsa_resnet101", pretrained, **kwargs)


@register_model
def conv_resnet26(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-26 (3x3 convolutions where GSA-ResNet-26 has GSA), ImageNet stem, 224x224."""
    return _create("conv_resnet26", pretrained, **kwargs)


@register_model
def conv_resnet38(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-38, ImageNet stem, 224x224."""
    return _create("conv_resnet38", pretrained, **kwargs)


@register_model
def conv_resnet50(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-50 (v1.5: stride in the 3x3 conv), ImageNet stem, 224x224."""
    return _create("conv_resnet50", pretrained, **kwargs)


@register_model
def conv_resnet101(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-101 (v1.5), ImageNet stem, 224x224."""
    return _create("conv_resnet101", pretrained, **kwargs)


@register_model
def gsa_resnet26_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-26, 3x3/1 stem, 32x32."""
    return _create("gsa_resnet26_s32", pretrained, **kwargs)


@register_model
def gsa_resnet38_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-38, 3x3/1 stem, 32x32."""
    return _create("gsa_resnet38_s32", pretrained, **kwargs)


@register_model
def gsa_resnet50_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-50, 3x3/1 stem, 32x32."""
    return _create("gsa_resnet50_s32", pretrained, **kwargs)


@register_model
def gsa_resnet101_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-101, 3x3/1 stem, 32x32."""
    return _create("gsa_resnet101_s32", pretrained, **kwargs)


@register_model
def conv_resnet26_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-26, 3x3/1 stem, 32x32."""
    return _create("conv_resnet26_s32", pretrained, **kwargs)


@register_model
def conv_resnet38_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-38, 3x3/1 stem, 32x32."""
    return _create("conv_resnet38_s32", pretrained, **kwargs)


@register_model
def conv_resnet50_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-50, 3x3/1 stem, 32x32."""
    return _create("conv_resnet50_s32", pretrained, **kwargs)


@register_model
def conv_resnet101_s32(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-101, 3x3/1 stem, 32x32."""
    return _create("conv_resnet101_s32", pretrained, **kwargs)


@register_model
def gsa_resnet26_tiny(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """GSA-ResNet-26 at width 0.25 (widths 16/32/64/128, 2/4/8/8 heads), 3x3/1 stem, 32x32: the CPU member."""
    return _create("gsa_resnet26_tiny", pretrained, **kwargs)


@register_model
def conv_resnet26_tiny(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """ResNet-26 at width 0.25, 3x3/1 stem, 32x32."""
    return _create("conv_resnet26_tiny", pretrained, **kwargs)


@register_model
def gsa_resnet26_tiny_content(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """``gsa_resnet26_tiny`` with content attention only (ablation)."""
    return _create("gsa_resnet26_tiny_content", pretrained, **kwargs)


@register_model
def gsa_resnet26_tiny_positional(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """``gsa_resnet26_tiny`` with positional attention only (ablation)."""
    return _create("gsa_resnet26_tiny_positional", pretrained, **kwargs)


@register_model
def gsa_resnet26_tiny_last2(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """``gsa_resnet26_tiny`` with GSA in stages 3-4 only, 3x3 convolutions in stages 1-2 (ablation)."""
    return _create("gsa_resnet26_tiny_last2", pretrained, **kwargs)


@register_model
def gsa_resnet26_tiny_last1(pretrained: bool = False, **kwargs: Any) -> GsaResNet:
    """``gsa_resnet26_tiny`` with GSA in stage 4 only (ablation)."""
    return _create("gsa_resnet26_tiny_last1", pretrained, **kwargs)
