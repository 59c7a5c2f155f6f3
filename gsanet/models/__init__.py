"""Model families, registered in timm's registry on import: GSA-ResNets and the matching convolutional ResNets; and
``convert_to_gsa``, which puts GSA modules into a torchvision or timm CNN you already have."""

from .convert import convert_to_gsa
from .flops import MacCount, count_macs, count_params, gsa_macs
from .gsa_resnet import GsaResNet, GsaResNetArch, ModelMeta, model_archs, model_meta

__all__ = [
    "GsaResNet",
    "GsaResNetArch",
    "MacCount",
    "ModelMeta",
    "convert_to_gsa",
    "count_macs",
    "count_params",
    "gsa_macs",
    "model_archs",
    "model_meta",
]
