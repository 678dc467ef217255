"""The train step: one pure function (state, batch) → (state, metrics), jitted once with donated state.

The model is split once into a static graph definition and a pure dict of float32 parameters; the step merges
them inside (`nnx.merge`), so everything that crosses the jit boundary is a plain pytree of arrays that Orbax
saves as it is and that shards by rule.

Batch layout (dense; what the input pipeline yields):
  images      (B, H, W, 3) float32 normalised, or uint8 (then normalised on device — 4× less host→device traffic)
  text_ids    (B, N, L) int32, N text slots per image (spec §1), L ≤ 77 tokens
  text_valid  (B, N) bool
The step flattens texts to M = B·N rows with owner = row // N and slot = row % N (the loss's flat form).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from make_jax.losses import LossConfig, make_loss
from make_jax.models import CLIP
from make_jax.models.clip import LOGIT_SCALE_MAX
from make_jax.preprocess_constants import CLIP_MEAN, CLIP_STD

Params = dict


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a step changes. `step` counts optimizer updates done."""

    step: jax.Array
    params: Params
    opt_state: Any


class ModelFunctions:
    """The model's static graph and a template of its parameter state, to rebuild it from a pure dict."""

    def __init__(self, model: CLIP):
        self.graphdef, state = nnx.split(model, nnx.Param)
        self._template = state
        self.config = model.config

    def params(self, model: CLIP) -> Params:
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def merge(self, params: Params) -> CLIP:
        state = jax.tree.map(lambda v: v, self._template)  # fresh container; the template is never mutated
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)


def slots_to_encode(loss_config: LossConfig, num_slots: int) -> int:
    """How many leading text slots the loss can use: encoding the others would be wasted work (exact saving)."""
    if loss_config.positives in ("clip_raw", "clip_dagger"):
        return 1
    if loss_config.positives == "knowledge":
        return min(3, num_slots)
    return num_slots


def normalize_images(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 (B, H, W, 3) → CLIP-normalised float; float input is taken as already normalised."""
    if images.dtype == jnp.uint8:
        mean = jnp.asarray(CLIP_MEAN, jnp.float32) * 255.0
        std = jnp.asarray(CLIP_STD, jnp.float32) * 255.0
        return ((images.astype(jnp.float32) - mean) / std).astype(dtype)
    return images


def forward_loss(model: CLIP, batch: dict, loss_config: LossConfig):
    """Encodes the batch and applies the configured loss.  Returns (loss, terms)."""
    n_used = slots_to_encode(loss_config, batch["text_ids"].shape[1])
    ids = batch["text_ids"][:, :n_used]
    valid = batch["text_valid"][:, :n_used]
    b, n, length = ids.shape
    images = normalize_images(batch["images"])
    image_out = model.encode_image_and_patches(images)
    text_emb = model.encode_text(ids.reshape(b * n, length))
    rows = jnp.arange(b * n, dtype=jnp.int32)
    owner, slot = rows // n, rows % n
    return make_loss(image_out.embedding, image_out.patches, text_emb, owner, slot, valid.reshape(b * n),
                     model.logit_scale[...], loss_config, logit_bias=logit_bias_of(model))


def logit_bias_of(model: CLIP):
    """The model's SigLIP bias, or None for a model without one."""
    return model.logit_bias[...] if hasattr(model, "logit_bias") else None


def init_train_state(model: CLIP, optimizer: optax.GradientTransformation) -> tuple[ModelFunctions, TrainState]:
    fns = ModelFunctions(model)
    params = fns.params(model)
    return fns, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def apply_gradients(state: TrainState, grads, terms: dict, optimizer: optax.GradientTransformation,
                    schedule: Callable | None) -> tuple[TrainState, dict]:
    """The optimizer update shared by every step variant (one pass, packed, GradCache): AdamW, then
    `logit_scale` clamped to [0, ln 100]; metrics = loss terms, grad norm, exp(logit_scale), lr (float32)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, LOGIT_SCALE_MAX)
    metrics = {k: v.astype(jnp.float32) for k, v in terms.items()}
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["logit_scale"] = jnp.exp(params["logit_scale"])
    if "logit_bias" in params:
        metrics["logit_bias"] = params["logit_bias"]
    if schedule is not None:
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(fns: ModelFunctions, optimizer: optax.GradientTransformation, loss_config: LossConfig,
                    schedule: Callable | None = None):
    """The pure step (not jitted; see `jit_train_step`).

    After the AdamW update `logit_scale` is clamped to [0, ln 100] (open_clip does this after every step).
    Metrics: the loss terms, the learning rate, exp(logit_scale) and the gradient's global norm, all float32.
    """

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            return forward_loss(fns.merge(params), batch, loss_config)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, grads, terms, optimizer, schedule)

    return step_fn


# ---- sharding ---------------------------------------------------------------------------------------------

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """One mesh axis, `data`, over every device of every process (batch sharded on it, parameters replicated)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def jit_train_step(step_fn, mesh: jax.sharding.Mesh, state: TrainState):
    """jit with explicit shardings: state replicated (and donated), every batch array split on its first axis.

    The loss is computed over the *global* batch: XLA inserts the all-gathers the contrastive logits need.
    """
    state_sh = jax.tree.map(lambda _: replicated(mesh), state)
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sharding(mesh)),
                   out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))
