"""gsanet: Global Self-Attention Networks (Shen et al., arXiv 2010.03019) for PyTorch and timm.

``import gsanet`` registers every gsanet model in timm's registry.
"""

from . import models  # noqa: F401  (registers the timm models)
from .layers import GlobalSelfAttention, resize_rel_pos
from .models import convert_to_gsa

__all__ = ["GlobalSelfAttention", "convert_to_gsa", "resize_rel_pos", "__version__"]
__version__ = "0.1.0"
