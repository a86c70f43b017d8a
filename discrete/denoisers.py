"""Denoisers: ``logits(x_t, t, condition) -> (L, V)``, the factorized posterior ``p(x₁ | x_t)``
over the ``V`` data tokens at each of the ``L`` positions, for one sequence (``vmap`` for batches).

:class:`MLPDenoiser` flattens the token embeddings (short sequences: 2-D toys, sorted ones);
:class:`TransformerDenoiser` is a pre-norm transformer whose blocks are modulated by the time
(and context) embedding, DiT-style (adaptive LayerNorm, gates starting at zero so every block
starts as the identity); its blocks are stacked with ``filter_vmap`` and run with ``lax.scan``.
Both take an optional context vector; called with ``condition=None`` they see the null context
(for classifier-free guidance), as the core's vector fields do.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from geoflow.continuous.fields import context_input, context_size, time_features
from geoflow.nn import MLP, init_linear, get_activation, scan_layers


def _embedding(key, num: int, dim: int):
    """``N(0, 1)`` entries, as ``eqx.nn.Embedding`` and ``torch.nn.Embedding`` start."""
    return jax.random.normal(key, (num, dim))


class MLPDenoiser(eqx.Module):
    """``MLP([embed(x_t¹), …, embed(x_tᴸ), features(t), context]) -> (L, V)`` logits.

    **Arguments:** `length` ``L``, `vocab_size` ``V``, `num_states` (``V`` or ``V + 1`` with a
    mask token), `key`, `width`, `depth` (hidden layers), `embed_dim`, `activation`,
    `time_embedding` (0 feeds ``t`` itself, else that many sinusoidal features), `cond_dim`.
    """

    embed: Float[Array, "states embed"]
    mlp: MLP
    length: int = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)
    time_embedding: int = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, length: int, vocab_size: int, num_states: int, *, key, width: int = 128, depth: int = 4,
                 embed_dim: int = 128, activation: str = "silu", time_embedding: int = 0, cond_dim: int | None = None):
        k_embed, k_mlp = jax.random.split(key)
        get_activation(activation)
        self.embed = _embedding(k_embed, num_states, embed_dim)
        t_size = 1 if time_embedding == 0 else time_embedding
        self.mlp = MLP(length * embed_dim + t_size + context_size(cond_dim), length * vocab_size, width, depth,
                       key=k_mlp, activation=activation)
        self.length, self.vocab_size, self.time_embedding = length, vocab_size, time_embedding
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def __call__(self, x: Int[Array, " L"], t, condition=None, keep=None) -> Float[Array, "L V"]:
        h = jnp.concatenate([self.embed[x].reshape(-1), time_features(t, self.time_embedding),
                             context_input(condition, self.cond_shape, keep)])
        return self.mlp(h).reshape(self.length, self.vocab_size)


def _layer_norm(x, eps=1e-6):
    mean = jnp.mean(x, -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.var(x, -1, keepdims=True) + eps)


class _Block(eqx.Module):
    """Pre-norm attention + MLP, each modulated by ``(shift, scale, gate)`` from the conditioning."""

    qkv: Float[Array, "d 3d"]
    out: Float[Array, "d d"]
    up: Float[Array, "d h"]
    up_bias: Float[Array, " h"]
    down: Float[Array, "h d"]
    down_bias: Float[Array, " d"]
    modulation: Float[Array, "c 6d"]
    modulation_bias: Float[Array, " 6d"]
    heads: int = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, cond: int, *, key, mlp_ratio: int = 4):
        k_qkv, k_out, k_up, k_down = jax.random.split(key, 4)
        self.qkv = init_linear(k_qkv, dim, 3 * dim)[0].T
        self.out = init_linear(k_out, dim, dim)[0].T
        w, self.up_bias = init_linear(k_up, dim, mlp_ratio * dim)
        self.up = w.T
        w, self.down_bias = init_linear(k_down, mlp_ratio * dim, dim)
        self.down = w.T
        # zero modulation: gates 0, so the block starts as the identity
        self.modulation, self.modulation_bias = jnp.zeros((cond, 6 * dim)), jnp.zeros(6 * dim)
        self.heads = heads

    def __call__(self, x: Float[Array, "L d"], c: Float[Array, " c"]) -> Float[Array, "L d"]:
        length, dim = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(c @ self.modulation + self.modulation_bias, 6)
        h = _layer_norm(x) * (1 + scale1) + shift1
        q, k, v = jnp.split(h @ self.qkv, 3, axis=-1)
        split = lambda a: a.reshape(length, self.heads, dim // self.heads)
        attended = jax.nn.dot_product_attention(split(q), split(k), split(v)).reshape(length, dim)
        x = x + gate1 * (attended @ self.out)
        h = _layer_norm(x) * (1 + scale2) + shift2
        return x + gate2 * (jax.nn.gelu(h @ self.up + self.up_bias) @ self.down + self.down_bias)


class TransformerDenoiser(eqx.Module):
    """A transformer over the ``L`` positions with time (and context) modulation.

    **Arguments:** `length` ``L`` (the largest; position embeddings are learned), `vocab_size`
    ``V``, `num_states`, `key`, `dim` (model width, divisible by `heads`), `depth` (blocks),
    `heads`, `time_embedding` (sinusoidal features of ``t``), `cond_dim`.
    """

    token_embed: Float[Array, "states d"]
    position_embed: Float[Array, "L d"]
    conditioning: MLP
    blocks: _Block  # stacked: every leaf has a leading ``depth`` axis
    final_modulation: Float[Array, "d 2d"]
    head: Float[Array, "d V"]
    head_bias: Float[Array, " V"]
    length: int = eqx.field(static=True)
    vocab_size: int = eqx.field(static=True)
    time_embedding: int = eqx.field(static=True)
    cond_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, length: int, vocab_size: int, num_states: int, *, key, dim: int = 128, depth: int = 4,
                 heads: int = 4, time_embedding: int = 64, cond_dim: int | None = None):
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        k_tok, k_pos, k_cond, k_blocks, k_head = jax.random.split(key, 5)
        self.token_embed = _embedding(k_tok, num_states, dim)
        self.position_embed = 0.02 * jax.random.normal(k_pos, (length, dim))
        self.conditioning = MLP(time_embedding + context_size(cond_dim), dim, dim, 1, key=k_cond, activation="silu")
        make = lambda k: _Block(dim, heads, dim, key=k)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(k_blocks, depth))
        self.final_modulation = jnp.zeros((dim, 2 * dim))
        w, self.head_bias = init_linear(k_head, dim, vocab_size)
        self.head = w.T
        self.length, self.vocab_size, self.time_embedding = length, vocab_size, time_embedding
        self.cond_shape = None if cond_dim is None else (cond_dim,)

    def __call__(self, x: Int[Array, " L"], t, condition=None, keep=None) -> Float[Array, "L V"]:
        c = self.conditioning(jnp.concatenate([time_features(t, self.time_embedding),
                                               context_input(condition, self.cond_shape, keep)]))
        c = jax.nn.silu(c)
        h = self.token_embed[x] + self.position_embed[: x.shape[0]]
        h = scan_layers(self.blocks, lambda block, h, _: block(h, c), h)
        shift, scale = jnp.split(c @ self.final_modulation, 2)
        return (_layer_norm(h) * (1 + scale) + shift) @ self.head + self.head_bias


DENOISERS = {"mlp": MLPDenoiser, "transformer": TransformerDenoiser}
