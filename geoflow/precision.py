"""Numerical precision that does not depend on the hardware's defaults.

On GPUs with TensorFloat-32 (and on TPUs, in bfloat16) JAX multiplies float32 matrices with a
10-bit (8-bit) mantissa unless told otherwise. Networks do not notice; geometry does: a product
of two rotations is then orthogonal only to ~10⁻³, and a model's own samples fail its manifold
check (atol 10⁻⁴). Geometric products go through :func:`exact_matmul`. On a CPU both are the
same float32 product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def exact_matmul(a, b):
    """``a @ b`` at full float32 (or float64) accuracy on every backend."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# the types a network may compute its matrix products in (None: the inputs' own)
COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")


def check_compute_dtype(name):
    """``name`` if it is one of :data:`COMPUTE_DTYPES`, else a clear error."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}; got {name!r}")
    return name


def mixed_matmul(a, b, compute_dtype: str | None = None):
    """``a @ b`` with both factors rounded to ``compute_dtype`` (e.g. ``"bfloat16"``, which
    accelerators multiply several times faster than float32) and the sum accumulated and
    returned in ``b``'s type, so what follows — activations, log-densities, an ODE's state —
    stays in float32. ``None``: the plain product."""
    if compute_dtype is None:
        return a @ b
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=b.dtype)
