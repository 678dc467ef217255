"""The pre-LN transformer shared by both towers, with its blocks' parameters stacked on a leading layer axis.

Block (open_clip `ResidualAttentionBlock`):   x = x + attn(ln_1(x));   x = x + mlp(ln_2(x)).

The L blocks are one `ResidualBlock` module whose parameters carry a leading (L,) axis; the forward pass is a
`jax.lax.scan` over that axis. Why: XLA compiles one block instead of L (the full ViT-B/16 compiles in seconds,
not minutes), and per-block rematerialisation is one `jax.checkpoint` around the scanned body. Parameter names
follow open_clip (`ln_1`, `attn.in_proj`, `attn.out_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`), so checkpoint
conversion is a rename plus a transpose.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from make_jax.models.config import ModelConfig
from make_jax.models.keys import ParamKeys


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation: x·σ(1.702x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation_fn(name: str):
    if name == "quick_gelu":
        return quick_gelu
    # exact erf GELU as torch.nn.GELU(); jax.nn.gelu defaults to the tanh approximation.
    return lambda x: jax.nn.gelu(x, approximate=False)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype (as open_clip's LayerNormFp32), output cast back.

    x: (..., D) → (..., D).
    """

    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class Dense(nnx.Module):
    """y = x @ kernel + bias with a float32 kernel (in, out), computed in `dtype`.  x: (..., in) → (..., out).

    `init`: "torch" — torch.nn.Linear's default U(±1/sqrt(in)) for weight and bias (what open_clip keeps in the
    vision tower's MLP); "xavier" — nn.MultiheadAttention's in_proj (xavier-uniform, zero bias); a float — a
    normal std with zero bias (open_clip's text-tower scheme).
    """

    def __init__(self, d_in: int, d_out: int, *, init: str | float, rngs: ParamKeys, dtype):
        key_w, key_b = rngs.params(), rngs.params()
        bias = jnp.zeros((d_out,), jnp.float32)
        if init == "torch":
            bound = 1.0 / math.sqrt(d_in)
            kernel = jax.random.uniform(key_w, (d_in, d_out), jnp.float32, -bound, bound)
            bias = jax.random.uniform(key_b, (d_out,), jnp.float32, -bound, bound)
        elif init == "xavier":
            bound = math.sqrt(6.0 / (d_in + d_out))
            kernel = jax.random.uniform(key_w, (d_in, d_out), jnp.float32, -bound, bound)
        else:
            kernel = float(init) * jax.random.normal(key_w, (d_in, d_out), jnp.float32)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (rows [q; k; v], heads contiguous slices).

    x: (B, T, D) → (B, T, D).
    """

    def __init__(self, width: int, heads: int, *, causal: bool, init_stds: dict, cfg: ModelConfig, rngs: ParamKeys):
        dtype = jnp.dtype(cfg.dtype)
        # nn.MultiheadAttention: xavier-uniform in_proj, zero biases; out_proj keeps Linear's default weight.
        self.in_proj = Dense(width, 3 * width, init=init_stds.get("in_proj", "xavier"), rngs=rngs, dtype=dtype)
        self.out_proj = Dense(width, width, init=init_stds.get("out_proj", "torch"), rngs=rngs, dtype=dtype)
        if "out_proj" not in init_stds:
            self.out_proj.bias[...] = jnp.zeros((width,), jnp.float32)
        self.heads = heads
        self.causal = causal
        self.implementation = None if cfg.attention == "auto" else cfg.attention

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.in_proj(x).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh) each
        out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal, implementation=self.implementation)
        return self.out_proj(out.reshape(b, t, d))


class MLP(nnx.Module):
    """c_fc → activation → c_proj.  x: (B, T, D) → (B, T, D)."""

    def __init__(self, width: int, hidden: int, *, init_stds: dict, cfg: ModelConfig, rngs: ParamKeys):
        dtype = jnp.dtype(cfg.dtype)
        self.c_fc = Dense(width, hidden, init=init_stds.get("c_fc", "torch"), rngs=rngs, dtype=dtype)
        self.c_proj = Dense(hidden, width, init=init_stds.get("c_proj", "torch"), rngs=rngs, dtype=dtype)
        self.act = activation_fn(cfg.activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualBlock(nnx.Module):
    """One pre-LN block.  x: (B, T, D) → (B, T, D)."""

    def __init__(self, width: int, heads: int, hidden: int, *, causal: bool, init_stds: dict, cfg: ModelConfig,
                 rngs: ParamKeys):
        self.ln_1 = LayerNorm(width, cfg.ln_eps)
        self.attn = Attention(width, heads, causal=causal, init_stds=init_stds, cfg=cfg, rngs=rngs)
        self.ln_2 = LayerNorm(width, cfg.ln_eps)
        self.mlp = MLP(width, hidden, init_stds=init_stds, cfg=cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ScannedBlocks(nnx.Module):
    """L blocks of one kind with their parameters stacked on a leading (L,) axis, run by `jax.lax.scan`.

    `make_block()` builds one block (called L times, so each draws its own initial parameters); a block maps
    (x, *extra) → x, and `extra` (e.g. the key lengths of an attention mask) is the same for every layer.
    """

    def __init__(self, make_block, layers: int, remat: bool = False):
        states = []
        graphdef = None
        for _ in range(layers):
            graphdef, state = nnx.split(make_block())
            states.append(state)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        self.blocks = nnx.merge(graphdef, stacked)  # every Param has a leading (L,) axis
        self.layers = layers
        self.remat = remat

    def __call__(self, x: jax.Array, *extra) -> jax.Array:
        graphdef, stacked = nnx.split(self.blocks)

        def body(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, *extra), None

        if self.remat:
            # Save nothing inside a block: recompute it in the backward pass (memory for batch 2048).
            body = jax.checkpoint(body, prevent_cse=False)
        x, _ = jax.lax.scan(body, x, stacked)
        return x


class Transformer(ScannedBlocks):
    """L pre-LN residual blocks (open_clip's), stacked and scanned.  x: (B, T, D) → (B, T, D).

    `init_stds` gives the normal-init std of each matrix (open_clip's text-tower scheme); a missing entry
    means torch's default initialisation (what open_clip's vision tower keeps).
    """

    def __init__(self, width: int, layers: int, heads: int, hidden: int, *, causal: bool, init_stds: dict,
                 cfg: ModelConfig, rngs: ParamKeys, remat: bool = False):
        super().__init__(lambda: ResidualBlock(width, heads, hidden, causal=causal, init_stds=init_stds, cfg=cfg,
                                               rngs=rngs), layers, remat)
