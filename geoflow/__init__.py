"""geoflow: normalizing flows and flow matching in JAX, as Equinox modules."""

from . import bijections, continuous
from .distributions import DiagonalNormal, Distribution, StandardNormal, Transformed, Uniform
from .families import Cauchy, GaussianMixture, Laplace, Logistic, StudentT, VonMises
from .flows import bnaf, coupling_flow, iaf, maf, make_flow, masked_autoregressive_flow, nice, nsf, nsf_ar, realnvp

__version__ = "0.1.0"
from .serialization import load, save
from .train import fit, maximum_likelihood
from .train_state import History
