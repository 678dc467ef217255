"""The one-pass train step: one pure function (state, batch) → (state, metrics), jitted once with donated state.

The model is split once into a static graph definition and a pure dict of float32 parameters; the step merges
them inside (`nnx.merge`), so everything that crosses the jit boundary is a plain pytree of arrays that Orbax
saves as it is and that shards by rule.

The step is `value_and_grad(make_loss ∘ forward)` then `apply_gradients`; `forward` (`train.forward`) reads
dense and packed batches alike. GradCache (`train.gradcache`) is the only other step: same update and metrics,
gradients computed in two passes. `train.gradcache.select_train_step` picks between them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from make_jax.losses import LossConfig, make_loss
from make_jax.models import CLIP
from make_jax.models.clip import LOGIT_SCALE_MAX
from make_jax.train.forward import forward
from make_jax.train.sharding import batch_sharding, make_mesh, replicated, state_shardings  # noqa: F401 - make_mesh re-exported

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


def forward_loss(model: CLIP, batch: dict, loss_config: LossConfig):
    """The configured loss of a dense or packed batch: (loss, terms)."""
    return make_loss(forward(model, batch, loss_config), loss_config)


def init_train_state(model: CLIP, optimizer: optax.GradientTransformation) -> tuple[ModelFunctions, TrainState]:
    fns = ModelFunctions(model)
    params = fns.params(model)
    return fns, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def init_sharded_state(params: Params, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                       rules=()) -> tuple[TrainState, TrainState]:
    """(state, its shardings): `params` placed by `sharding.state_shardings` (`rules`: config.sharding_rules),
    the optimizer state created in place, already split (never whole on one device)."""
    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    shardings = state_shardings(jax.eval_shape(init, params), mesh, optimizer, rules)
    params = jax.device_put(params, shardings.params)
    return jax.jit(init, out_shardings=shardings)(params), shardings


def apply_gradients(state: TrainState, grads, terms: dict, optimizer: optax.GradientTransformation,
                    schedule: Callable | None) -> tuple[TrainState, dict]:
    """The optimizer update shared by both steps (one pass, GradCache): AdamW, then
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
    """The pure one-pass step for dense or packed batches (not jitted; see `jit_train_step`; each packed shape
    compiles once).

    After the AdamW update `logit_scale` is clamped to [0, ln 100] (open_clip does this after every step).
    Metrics: the loss terms, the learning rate, exp(logit_scale) and the gradient's global norm, all float32.
    """

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            return forward_loss(fns.merge(params), batch, loss_config)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, grads, terms, optimizer, schedule)

    return step_fn


# ---- sharding (make_jax/train/sharding.py: the mesh, rules, memory) ----------------------------------------


def jit_train_step(step_fn, mesh: jax.sharding.Mesh, state: TrainState, state_sharding=None):
    """jit with explicit shardings: the state as `state_sharding` (a TrainState of shardings, from
    `sharding.state_shardings`; None: replicated) and donated, every batch array split on its first axis over
    every device, the metrics replicated.

    The loss is computed over the *global* batch: XLA inserts the all-gathers the contrastive logits need (and,
    for parameters split over `fsdp`, the weights' all-gathers and the gradients' reduce-scatters).
    """
    state_sh = jax.tree.map(lambda _: replicated(mesh), state) if state_sharding is None else state_sharding
    return jax.jit(step_fn, in_shardings=(state_sh, batch_sharding(mesh)),
                   out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))
