"""Bijections. ``forward`` is latent → data, ``inverse`` is data → latent (see ``base``)."""

from .autoregressive import MaskedAutoregressive
from .block_autoregressive import BlockAutoregressive
from .base import Bijection, Chain, Identity, Invert, Permute, Reverse, Stack
from .coupling import Coupling
from .elementwise import Elementwise
from .glow import ActNorm, InvertibleConv1x1, squeeze, unsqueeze
from .image_coupling import ImageCoupling
from .linear import Householder, LULinear, TriangularAffine
from .multiscale import MultiScale, SplitPrior
from .residual import ResidualBlock, SpectralNorm
from .preprocessing import Logit, Standardize, uniform_dequantize
from .scalar import Exp, HeavyTails, LeakyTanh, LocScale, MonotoneInverse, Power, Sigmoid, SoftPlus, Tanh
from .splines import RationalQuadraticSpline
from .transformers import Additive, Affine, Transformer

__all__ = [
    "ActNorm", "BlockAutoregressive", "ImageCoupling", "InvertibleConv1x1", "MultiScale", "ResidualBlock", "SpectralNorm",
    "SplitPrior", "TriangularAffine", "squeeze", "unsqueeze", "Additive", "Affine", "Bijection", "Chain", "Coupling", "Elementwise", "Identity", "Invert",
    "Logit", "MaskedAutoregressive", "Permute", "RationalQuadraticSpline", "Reverse", "Stack",
    "Standardize", "Transformer", "uniform_dequantize", "Exp", "Householder", "LULinear", "LeakyTanh", "LocScale",
    "MonotoneInverse", "Power", "Sigmoid", "SoftPlus", "Tanh", "HeavyTails",
]
