"""Shared test utilities."""

import equinox as eqx
import jax
import jax.numpy as jnp


def perturb(tree, key, scale=0.3):
    """Add N(0, scale²) noise to every floating-point leaf: zero-initialized conditioners
    make fresh flows the identity, which would let wrong log-determinants pass. Frozen arrays
    (a 1×1 convolution's permutation, a power iteration's start) are left alone."""
    from geoflow.nn import trainable

    params, static = eqx.partition(tree, trainable(tree))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def to_f64(tree):
    """Cast floating-point leaves to float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)
