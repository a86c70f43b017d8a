"""Discrete flow matching on continuous-time Markov chains (Campbell et al. 2024; Gat et al.
2024), for sequences of tokens: mixture paths, denoisers, a CTMC sampler and an ELBO."""

from .checks import check_tokens
from .denoisers import MLPDenoiser, TransformerDenoiser
from .exact import ExactDenoiser
from .joint import Geodesic, Masked, Straight, joint_sample
from .losses import DiscreteFlowMatching
from .model import DiscreteFlow, dfm, generalized_kl
from .paths import MixturePath
from .rates import posterior_rates

__all__ = ["DiscreteFlow", "DiscreteFlowMatching", "ExactDenoiser", "Geodesic", "MLPDenoiser", "Masked", "MixturePath",
           "Straight", "TransformerDenoiser", "check_tokens", "dfm", "generalized_kl", "joint_sample", "posterior_rates"]
