"""Riemannian geometry in pure JAX (spheres, tori, SO(3)) and Riemannian flow matching on top
of the core's continuous flows."""

from .base import Manifold
from .distributions import (IGSO3, PowerDistribution, ProductDistribution, UniformOn, WrappedNormal,
                            WrappedNormalMixtureSO3, igso3_density, se3_prior)
from .product import SE3, Power, Product
from .se3_group import left_jacobian, left_jacobian_inverse, twist_exp, twist_log
from .euclidean import CentredPoints, Euclidean, Torus, wrap
from .fields import ManifoldMLP, features
from .matching import GeodesicFlowMatching, riemannian_sample, rfm
from .so3 import (SO3, hat, matrix_to_quaternion, matrix_to_rotvec, quaternion_to_matrix, quaternion_to_rotvec,
                  rotvec_to_matrix, rotvec_to_quaternion, vee)
from .sphere import Sphere

__all__ = ["left_jacobian", "left_jacobian_inverse", "twist_exp", "twist_log", 
    "CentredPoints", "Euclidean", "GeodesicFlowMatching", "IGSO3", "Power", "PowerDistribution", "Product", "ProductDistribution", "SE3", "igso3_density", "Manifold", "ManifoldMLP", "SO3", "Sphere", "Torus", "UniformOn", "WrappedNormal", "WrappedNormalMixtureSO3", "se3_prior",
    "features", "riemannian_sample", "hat", "matrix_to_quaternion", "matrix_to_rotvec", "quaternion_to_matrix", "quaternion_to_rotvec",
    "rfm", "rotvec_to_matrix", "rotvec_to_quaternion", "vee", "wrap",
]
