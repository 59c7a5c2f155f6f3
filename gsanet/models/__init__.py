"""Model families, registered in timm's registry on import: GSA-ResNets and the matching convolutional ResNets."""

from .flops import MacCount, count_macs, count_params, gsa_macs
from .gsa_resnet import GsaResNet, GsaResNetArch, ModelMeta, model_archs, model_meta

__all__ = [
    "GsaResNet",
    "GsaResNetArch",
    "MacCount",
    "ModelMeta",
    "count_macs",
    "count_params",
    "gsa_macs",
    "model_archs",
    "model_meta",
]
