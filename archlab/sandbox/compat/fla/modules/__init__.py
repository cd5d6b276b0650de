"""fla.modules in archlab's pure-PyTorch stand-in: ShortConvolution, RMSNorm, FusedRMSNormGated, L2Norm."""

from .causal_conv1d import ShortConvolution
from .l2norm import L2Norm, l2_norm, l2norm
from .norm import FusedRMSNormGated, FusedRMSNormSwishGate, RMSNorm

__all__ = ["FusedRMSNormGated", "FusedRMSNormSwishGate", "L2Norm", "RMSNorm", "ShortConvolution", "l2_norm", "l2norm"]
