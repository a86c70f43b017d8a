"""Small networks used as conditioners: a plain MLP and MADE's masked MLP.

Activations are stored by name (a static string), not as functions, so that every model
pickles and round-trips through :func:`geoflow.save` / :func:`geoflow.load`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .precision import check_compute_dtype, mixed_matmul

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
}


class Frozen(eqx.Module):
    """An array that is part of a model but never trained (e.g. the sample set of an empirical
    source distribution). :func:`geoflow.fit` leaves it alone; read it as ``frozen.value``."""

    value: Array


def trainable(model):
    """Filter spec for ``eqx.partition``: the floating-point arrays outside :class:`Frozen`."""
    return jax.tree.map(lambda leaf: False if isinstance(leaf, Frozen) else eqx.is_inexact_array(leaf),
                        model, is_leaf=lambda node: isinstance(node, Frozen))


def scan_layers(stacked, apply, carry, xs=None, reverse: bool = False, remat: bool = False, unroll: bool = False):
    """Run identical layers whose parameters are stacked on a leading axis (built with
    ``eqx.filter_vmap``) with ``jax.lax.scan``, so compile time does not grow with depth:
    ``carry = apply(layer, carry, x)`` for each layer (``x`` from ``xs``, or ``None``).

    ``remat=True`` checkpoints each layer: the backward pass recomputes a layer's intermediates
    from its input instead of storing them stacked over the depth, so memory holds only the
    carries. The saved intermediates are read back inside the backward loop with one
    dynamic slice each, which XLA:CPU fuses badly: for a spline flow recomputing is faster.

    ``unroll=True`` writes the layers out one after another in the compiled program (the same
    computation): for a few large layers XLA then fuses across them and keeps the backward pass's
    intermediates out of the loop's stacked buffers, at the cost of compile time growing with
    depth. The protein frame network's two attention layers (L = 16, batch 64) run forward and
    backward 1.6× faster that way."""
    params, static = eqx.partition(stacked, eqx.is_array)

    def step(carry, inputs):
        layer_params, x = inputs
        return apply(eqx.combine(layer_params, static), carry, x), None

    carry, _ = jax.lax.scan(jax.checkpoint(step) if remat else step, carry, (params, xs), reverse=reverse,
                            unroll=unroll)
    return carry


def conv_hwc(layer: eqx.nn.Conv2d, x: Float[Array, "h w c"], bias: bool = True) -> Float[Array, "h w o"]:
    """``layer`` (an ``eqx.nn.Conv2d`` with stride 1 and "same" zero padding) applied to one
    image stored height × width × channels, as one matrix product of its patches
    ``(h, w, k·k·c)`` with the kernel ``(k·k·c, o)``. The result equals ``layer`` on the
    channels-first image; ``bias=False`` leaves out the layer's bias (its linear part alone).

    Why not ``layer(x)``: flows run their layers in a ``lax.scan`` (:func:`scan_layers`), and
    inside a loop body XLA:CPU does not rewrite convolutions into the channels-last form its
    fast kernels take, nor their gradients: a Glow training step ran 11× slower rolled than
    unrolled. Patches and products are plain slices and dots, which stay fast in a loop:
    4 layers of 64-channel 3×3 convolutions on 64 images of 8×8, forward and gradient,
    0.27 s and 1.9 s as convolutions in a scan, 0.019 s and 0.073 s this way."""
    out_ch, in_ch, kh, kw = layer.weight.shape
    (top, bottom), (left, right) = layer.padding
    if (tuple(layer.stride) != (1, 1) or tuple(layer.dilation) != (1, 1) or layer.groups != 1
            or layer.padding_mode != "ZEROS" or top + bottom != kh - 1 or left + right != kw - 1):
        raise ValueError("conv_hwc takes stride-1, undilated, ungrouped convolutions with 'same' zero "
                         f"padding; got stride {layer.stride}, padding {layer.padding} for a {kh}×{kw} kernel")
    h, w, _ = x.shape
    if kh == kw == 1:
        patches = x
    else:
        padded = jnp.pad(x, ((top, bottom), (left, right), (0, 0)))
        patches = jnp.concatenate([padded[i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    # kernel rows in the patches' order: (row offset, column offset, input channel)
    kernel = layer.weight.transpose(2, 3, 1, 0).reshape(kh * kw * in_ch, out_ch)
    y = patches @ kernel
    return y if layer.bias is None or not bias else y + layer.bias.reshape(out_ch)


def conv_chw(layer: eqx.nn.Conv2d, x: Float[Array, "c h w"], bias: bool = True) -> Float[Array, "o h w"]:
    """:func:`conv_hwc` on a channels-first image: the same values as ``layer(x)``."""
    return conv_hwc(layer, x.transpose(1, 2, 0), bias).transpose(2, 0, 1)


def get_activation(name: str):
    """The activation function called ``name``; a clear error for an unknown name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def init_linear(key, fan_in: int, fan_out: int, zero: bool = False):
    """``(weight (fan_out, fan_in), bias (fan_out,))`` of one linear layer, PyTorch/Equinox default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``zero`` for identity starts."""
    if zero:
        return jnp.zeros((fan_out, fan_in)), jnp.zeros((fan_out,))
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    wkey, bkey = jax.random.split(key)
    weight = jax.random.uniform(wkey, (fan_out, fan_in), minval=-bound, maxval=bound)
    bias = jax.random.uniform(bkey, (fan_out,), minval=-bound, maxval=bound)
    return weight, bias


def _init_layers(key, sizes: list[int], zero_last: bool):
    """Weights and biases of a stack of linear layers ``sizes[0] → … → sizes[-1]``."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        init_linear(k, a, b, zero=zero_last and i == len(sizes) - 2)
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    ]
    return tuple(w for w, _ in layers), tuple(b for _, b in layers)


class MLP(eqx.Module):
    """Fully connected network ``in_size → width (× depth) → out_size`` for one example.

    **Arguments:**
    - `in_size`, `out_size`, `width`, `depth` (number of hidden layers).
    - `activation`: a name from ``geoflow.nn.ACTIVATIONS``.
    - `zero_last`: start the output layer at zero, so that a conditioner begins as the identity.
    - `compute_dtype`: ``"bfloat16"`` (or ``"float16"``) rounds each layer's product's factors to
      that type and accumulates in the input's (:func:`geoflow.precision.mixed_matmul`): mixed
      precision for accelerators; parameters, activations and outputs stay float32.
    """

    weights: tuple[Float[Array, "out in"], ...]
    biases: tuple[Float[Array, " out"], ...]
    activation: str = eqx.field(static=True)
    compute_dtype: str | None = eqx.field(static=True, default=None)

    def __init__(self, in_size: int, out_size: int, width: int, depth: int, *, key,
                 activation: str = "relu", zero_last: bool = False, compute_dtype: str | None = None):
        get_activation(activation)
        self.weights, self.biases = _init_layers(key, [in_size] + [width] * depth + [out_size], zero_last)
        self.activation = activation
        self.compute_dtype = check_compute_dtype(compute_dtype)

    def _hidden(self, x):
        act = ACTIVATIONS[self.activation]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = act(mixed_matmul(w, x, self.compute_dtype) + b)
        return x

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return mixed_matmul(self.weights[-1], self._hidden(x), self.compute_dtype) + self.biases[-1]

    def on_rows(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """The network applied to every row of ``x`` (any leading shape), one matrix product
        ``x @ wᵀ`` per layer. Equal to ``vmap`` of :meth:`__call__`, whose products come out
        with the batch on their last axis and are transposed back: on the ``(N, N, ·)`` pair
        features of a molecule network this form trains 8% faster on XLA:CPU."""
        act = ACTIVATIONS[self.activation]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = act(mixed_matmul(x, w.T, self.compute_dtype) + b)
        return mixed_matmul(x, self.weights[-1].T, self.compute_dtype) + self.biases[-1]

    def parts(self, x: Float[Array, " in"], n: int) -> tuple[Float[Array, " out/n"], ...]:
        """The output cut into ``n`` equal consecutive parts (a transformer's parameters)."""
        return output_parts(self.weights[-1], self.biases[-1], self._hidden(x), n, self.compute_dtype)


def output_parts(weight, bias, x, n: int, compute_dtype: str | None = None) -> tuple[Array, ...]:
    """``weight @ x + bias`` cut into ``n`` equal consecutive parts (a transformer's parameters).

    Shapes: ``weight`` ``(n·part, in)``, ``bias`` ``(n·part,)``, ``x`` ``(in,)``; returns ``n``
    arrays ``(part,)``. Three ways of doing it, each measured on XLA:CPU (2 cores):

    - ``part == 1`` (a 2-D coupling layer): split the product first and add the bias slices.
      Under ``vmap`` the product comes out with the batch on its *last* axis, so each part
      stays a contiguous ``(batch,)`` row; ``split(product + bias)`` would make every consumer
      read it with a stride of ``n`` (twice as slow at 100k examples).
    - ``n > 2`` and wider parts (splines in MAF, or in coupling layers above 2-D): fold the bias
      into the product as one more weight column against a constant 1. In stacked layers the
      bias is a per-layer slice of the scanned parameters; added after the product, that
      dynamic slice is fused into each of the spline's element-wise kernels together with the
      transposes of the parts, and XLA:CPU's fusion emitters then make them 3–4× slower. With
      the bias inside the product the kernels read plain arrays: an 8-layer MAF spline on 2-D
      trains 2.3× and evaluates ``log_prob`` 2× faster, and 2–3.7× at 4 to 64 dimensions.
    - ``n <= 2`` (affine and additive): the plain ``split(product + bias)``; folding made
      MAF-affine's ``log_prob`` 1.3–1.5× slower at 2 to 64 dimensions.

    ``compute_dtype``: the product's factors rounded to it (:func:`geoflow.precision.mixed_matmul`).
    """
    part = weight.shape[0] // n
    product = lambda w, v: mixed_matmul(w, v, compute_dtype)
    if part == 1:
        return tuple(p + c for p, c in zip(jnp.split(product(weight, x), n), jnp.split(bias, n)))
    if n > 2:
        with_bias = jnp.concatenate([weight, bias[:, None]], axis=1)
        return tuple(jnp.split(product(with_bias, jnp.concatenate([x, jnp.ones(1, x.dtype)])), n))
    return tuple(jnp.split(product(weight, x) + bias, n))


def made_degrees(dim: int, order: str | np.ndarray, key=None) -> Array:
    """Autoregressive degrees 1..dim of the inputs: ``"sequential"``, ``"random"`` or an explicit
    order. JAX arrays, so random orders also work inside ``filter_vmap`` (stacked layers)."""
    if isinstance(order, str):
        if order == "sequential":
            return jnp.arange(1, dim + 1)
        if order == "random":
            if key is None:
                raise ValueError("a random MADE order needs a key")
            return jax.random.permutation(key, dim) + 1
        raise ValueError(f"unknown MADE order {order!r}; expected 'sequential', 'random' or an array")
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(1, dim + 1)):
        raise ValueError(f"a MADE order must be a permutation of 1..{dim}, got {order}")
    return jnp.asarray(order)


class MaskedMLP(eqx.Module):
    """MADE (Germain et al. 2015): an MLP whose masks make output ``i`` depend only on inputs
    of smaller degree. ``params_per_dim`` outputs are produced for every input dimension and
    returned parameter-major, as ``params_per_dim`` arrays of shape ``(dim,)`` (the layout
    transformers take, see :func:`output_parts`); context inputs connect to every hidden unit.

    Hidden degrees cycle through ``1..dim-1`` (the deterministic assignment of the MADE paper),
    so every hidden layer has units of every degree.
    """

    weights: tuple[Float[Array, "out in"], ...]
    biases: tuple[Float[Array, " out"], ...]
    masks: tuple[Bool[Array, "out in"], ...]
    params_per_dim: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, dim: int, params_per_dim: int, width: int, depth: int, *, key,
                 cond_dim: int = 0, order="sequential", activation: str = "relu",
                 zero_last: bool = True):
        get_activation(activation)
        order_key, key = jax.random.split(key)
        in_deg = made_degrees(dim, order, order_key)
        # context inputs have degree 0: every hidden unit may see them
        degs = [jnp.concatenate([in_deg, jnp.zeros(cond_dim, in_deg.dtype)])]
        for _ in range(depth):
            degs.append(jnp.arange(width) % max(dim - 1, 1) + 1)
        out_deg = jnp.tile(in_deg, params_per_dim)  # parameter-major: part j holds every input's j-th
        masks = [degs[i + 1][:, None] >= degs[i][None, :] for i in range(depth)]
        masks.append(out_deg[:, None] > degs[-1][None, :])
        sizes = [dim + cond_dim] + [width] * depth + [dim * params_per_dim]
        self.weights, self.biases = _init_layers(key, sizes, zero_last)
        self.masks = tuple(masks)
        self.params_per_dim = params_per_dim
        self.activation = activation

    def __call__(self, x: Float[Array, " dim"], condition=None) -> tuple[Float[Array, " dim"], ...]:
        if condition is not None:
            x = jnp.concatenate([x, condition])
        act = ACTIVATIONS[self.activation]
        masked = [jnp.where(m, w, 0.0) for w, m in zip(self.weights, self.masks)]
        for w, b in zip(masked[:-1], self.biases[:-1]):
            x = act(w @ x + b)
        return output_parts(masked[-1], self.biases[-1], x, self.params_per_dim)
