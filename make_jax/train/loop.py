"""The training loop: init or resume, the jitted step over sharded batches, logging, checkpoints, export.

    train(config, workdir) -> dict with the final metrics and the export path

`config` is an ml_collections ConfigDict (see configs/); the data come from `make_train_data(config)`, any
iterator of batch dicts with Grain's `get_state()` / `set_state()`, so that a resumed run sees exactly the batches
an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from make_jax.atomic_io import check_writable
from make_jax.data.schema import NUM_SLOTS
from make_jax.errors import Interrupted
from make_jax.losses import LossConfig
from make_jax.losses.siglip import SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT
from make_jax.models import ModelConfig, create_model, get_model_config
from make_jax.train.checkpointing import TrainCheckpoints, abstract_like
from make_jax.train.distributed import allgather_host, broadcast_json, initialize_from_environment, process_block
from make_jax.train.config import ConfigError, check_config, check_paths, check_steps
from make_jax.train.flops import model_flops_utilisation, peak_flops, train_flops_per_image
from make_jax.train.metrics_writer import MetricWriter
from make_jax.train.optimizer import make_optimizer
from make_jax.train.gradcache import select_train_step
from make_jax.train.sharding import check_cpu_compilation_cache, check_fsdp_within_processes, host_copy, memory_report
from make_jax.train.step import ModelFunctions, batch_sharding, init_sharded_state, jit_train_step, make_mesh
from make_jax.train.workdir import claim_workdir

logger = logging.getLogger("make_jax.train")


class InitFromError(ConfigError):
    """`config.init_from` says neither a checkpoint nor 'scratch'; the message is one line (launch.py prints it)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint (kept)."""


def model_config_from(config) -> ModelConfig:
    """The preset `config.model.name` with the config's numerics and text tower (make_jax.train.text_tower); a
    SigLIP loss (loss.objective 'sigmoid') adds the learnable `logit_bias` and SigLIP's initial (t, b) =
    (log 10, -10)."""
    from make_jax.train.text_tower import text_config_from

    m = config.model
    overrides = dict(dtype=m.dtype, remat=m.remat, attention=m.attention, activation=m.activation)
    text = text_config_from(config)
    if text is not None:
        overrides["text"] = text
    if config.loss.objective == "sigmoid":
        overrides.update(init_logit_scale=SIGLIP_LOGIT_SCALE_INIT, init_logit_bias=SIGLIP_LOGIT_BIAS_INIT)
    return get_model_config(m.name, **overrides)


def loss_config_from(config) -> LossConfig:
    return LossConfig(**dict(config.loss))


# `config.init_from` asking for a random initialisation; the empty string is refused (the recipe starts from
# OpenAI CLIP, and a run that silently trains from scratch is the wrong experiment).
INIT_SCRATCH = "scratch"
INIT_FROM_HELP = ("the recipe starts from OpenAI CLIP ViT-B/16: download ViT-B-16.pt from OpenAI's CLIP release "
                  "(or the Hugging Face directory openai/clip-vit-base-patch16), convert it with "
                  "`python -m make_jax.convert ViT-B-16.pt checkpoints/openai_vitb16 --allow-torchscript` and pass "
                  "--config.init_from=checkpoints/openai_vitb16 (or --config.init_from=openai-vit-b16 to fetch it "
                  "through huggingface_hub); --config.init_from=scratch trains from a random "
                  "initialisation (docs/training.md)")


def check_init_from(config) -> None:
    """`InitFromError` (one line) when `config.init_from` is empty (neither a checkpoint nor 'scratch')."""
    if not config.get("init_from"):
        raise InitFromError(f"config.init_from is empty: {INIT_FROM_HELP}")


def initial_params(config, model_cfg: ModelConfig, params):
    """Parameters to start from: a converted checkpoint (`config.init_from`) or, with `init_from='scratch'`, the
    fresh initialisation `params`.

    The towers and `logit_scale` come from the checkpoint. A SigLIP model started from a checkpoint without a
    `logit_bias` (a softmax CLIP such as OpenAI's) starts its (logit_scale, logit_bias) pair at SigLIP's
    initialisation: a bias of -10 only makes sense with the temperature it was chosen for. A softmax run started
    from a SigLIP checkpoint drops its bias."""
    check_init_from(config)
    from make_jax.train.text_tower import text_geometry, with_text_init

    if config.init_from == INIT_SCRATCH:
        logger.info("initialising from scratch (config.init_from=scratch)")
        return with_text_init(config, params, model_cfg.text)
    from make_jax.checkpoint import hub

    # a converted checkpoint, or any reference make_jax.load takes (registry name, hf-hub:, open_clip/HF dir)
    src_cfg, loaded, _ = hub.load_params(config.init_from)
    # numerics may differ, geometry may not; with config.model.text_init the text tower comes from there
    text_init = bool(config.model.get("text_init"))
    geometry = lambda c: (c.embed_dim, c.vision) + (() if text_init else (text_geometry(c.text),))  # noqa: E731
    if geometry(src_cfg) != geometry(model_cfg):
        raise InitFromError(f"init_from {config.init_from}: its model geometry differs from config.model "
                         f"({src_cfg.to_dict()} vs {model_cfg.to_dict()})")
    logger.info("initialising from %s", config.init_from)
    if "logit_bias" in params and "logit_bias" not in loaded:
        loaded["logit_scale"], loaded["logit_bias"] = params["logit_scale"], params["logit_bias"]
    elif "logit_bias" not in params:
        loaded.pop("logit_bias", None)
    if text_init:  # the image tower and logit_scale from init_from, the text tower from text_init
        loaded["text"] = params["text"]
    return with_text_init(config, loaded, model_cfg.text)


def packing_config(config, loss_cfg: LossConfig, microbatches: int, model_cfg: ModelConfig):
    """The PackConfig of `config.packing` (None when off; paper mode only). Its budgets are per process: process
    0 sizes them from its own sample batches (B/P images each) and every process takes process 0's."""
    p = config.packing
    if not p.enabled:
        return None
    if loss_cfg.mode != "paper":
        raise ValueError("config.packing needs loss.mode='paper': official mode uses the dense layout")
    from make_jax.train.data import sample_batches
    from make_jax.train.packing import PackConfig, suggest_pack_config

    pack = None
    if jax.process_index() == 0:
        # multiple of the local devices × micro-batches: each process's rows are one block of the global arrays
        pack = suggest_pack_config(sample_batches(config, p.sample_batches), quantile=p.quantile,
                                   multiple_of=jax.local_device_count() * microbatches, dedup=p.dedup,
                                   groups=tuple(p.groups), loss_config=loss_cfg, text=model_cfg.text)
        pack = dataclasses.asdict(pack)
    pack = PackConfig(**broadcast_json(pack))
    logger.info("text packing: %s", pack)
    return pack


def _global_batch(batch: dict, sharding) -> dict:
    """Host-local numpy batch → global jax arrays split on the data axis (each process gives its own rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def train(config, workdir: str | Path, *, make_data: Callable[..., Any] | None = None,
          stop_after: int | None = None, allow_config_change: bool = False) -> dict:
    """Runs (or resumes) the training described by `config` in `workdir`.

    Before any work: the whole config is checked (`check_config`, `check_paths`, the step count), the workdir
    must be writable, and a workdir that holds a run must hold this run (`claim_workdir`; a changed field is
    refused unless `allow_config_change`). Ctrl-C ends the run after the current step with a checkpoint of it
    (`Interrupted`); a second Ctrl-C stops at once.

    `make_data(config, process_index, process_count) -> (iterator, num_examples)` builds the input; the default
    is the Grain pipeline over `config.data`. `stop_after` ends the run after that many steps of *this call*
    (for tests and benchmarks); checkpoints and export then follow the usual rules.
    """
    options = check_config(config)
    if make_data is None:
        check_paths(options)
        from make_jax.train.data import make_train_data as make_data
    initialize_from_environment()
    check_init_from(config)  # before any work
    mesh = make_mesh(data=options.mesh.data, fsdp=options.mesh.fsdp)
    check_fsdp_within_processes(mesh)
    check_cpu_compilation_cache(mesh)
    workdir = check_writable(workdir, "workdir")
    eval_entries = list(options.evals)
    is_main = jax.process_index() == 0
    config_dict = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
    model_cfg = model_config_from(config)
    loss_cfg = loss_config_from(config)
    data_iter, num_examples = make_data(config, jax.process_index(), jax.process_count())
    total_steps = check_steps(options, num_examples, jax.device_count())
    claim_workdir(workdir, config_dict, allow_change=allow_config_change, step=_latest_saved(workdir),
                  write=is_main)

    model = create_model(model_cfg, seed=config.seed)
    fns = ModelFunctions(model)
    params = initial_params(config, model_cfg, fns.params(model))
    del model
    o = config.optim
    optimizer, schedule = make_optimizer(
        params, lr=o.lr, warmup_steps=o.warmup_steps, total_steps=total_steps, b1=o.b1, b2=o.b2, eps=o.eps,
        weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip_norm or None)
    state, state_sh = init_sharded_state(params, optimizer, mesh, options.run.sharding_rules)
    logger.info(memory_report(state, state_sh, mesh))
    ckpts = TrainCheckpoints(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    start = 0
    latest = ckpts.latest_step()
    if latest is not None:
        state, data_state, _ = ckpts.restore(latest, abstract_like(state))
        if data_state:
            data_iter.set_state(data_state)
        start = int(state.step)
        logger.info("resumed from %s at step %d", ckpts.directory / str(latest), start)

    microbatches = config.microbatches
    if loss_cfg.objective == "sigmoid" and (microbatches > 1 or config.packing.enabled):
        raise ConfigError("loss.objective='sigmoid' (SigLIP) runs with the one-pass step: set microbatches=1 and "
                          "packing.enabled=False")
    pack = packing_config(config, loss_cfg, microbatches, model_cfg)
    # microbatches > 1: GradCache (same loss and gradients as one pass, activations of one micro-batch at a time)
    step_impl = select_train_step(fns, optimizer, loss_cfg, schedule, microbatches)
    step_fn = jit_train_step(step_impl, mesh, state, state_sh)
    sharding = batch_sharding(mesh)
    if pack is not None:
        from make_jax.train.packing import pack_process_batch

        block, blocks = process_block(sharding)
    writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)
    log_every = config.log_every
    ckpt_every = config.checkpoint_every
    peak = peak_flops(jax.devices()[0].device_kind)
    texts_per_image = loss_cfg.slots_used(NUM_SLOTS)  # the slots every batch holds (make_jax.data.schema)
    flops_per_image = train_flops_per_image(model_cfg, texts_per_image, config.data.context_length)

    evaluator = TrainingEvals(eval_entries, fns, options.run.eval_batch_size) if is_main and eval_entries else None
    final_eval = None
    last = {}
    dropped_texts = 0
    finite = jnp.asarray(True)
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not is_main or not config.progress,
               dynamic_ncols=True)
    end = total_steps if stop_after is None else min(total_steps, start + stop_after)
    step = start
    saved = start if latest is not None else None
    stop = _InterruptFlag()
    try:
        while step < end and not stop.requested:
            host_batch = next(data_iter)
            if pack is not None:  # every process packs at one agreed shape (train/packing.py)
                host_batch, pack_stats = pack_process_batch(host_batch, pack, loss_cfg, model_cfg.text,
                                                            block=block, blocks=blocks, gather=allgather_host)
                dropped_texts += pack_stats["dropped"]
            batch = _global_batch(host_batch, sharding)
            state, metrics = step_fn(state, batch)
            finite = jnp.logical_and(finite, jnp.isfinite(metrics["loss"]))  # no host sync here
            step += 1
            steps_since += 1
            bar.update(1)
            save_now = step % ckpt_every == 0 or step == total_steps
            if step % log_every == 0 or save_now or step == end:
                host = jax.device_get(metrics)
                if not bool(finite):
                    good = ckpts.latest_step()
                    where = ckpts.directory / str(good) if good is not None else "none (no checkpoint yet)"
                    raise NonFiniteLossError(f"non-finite loss at or before step {step} (loss={host['loss']}); "
                                             f"the last good checkpoint is {where} and was kept")
                now = time.perf_counter()
                ips = steps_since * config.batch_size / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                last = {k: float(v) for k, v in host.items()}
                last["images_per_s"] = ips
                if pack is not None:
                    last["packing_dropped_texts"] = dropped_texts
                if peak:
                    last["mfu"] = model_flops_utilisation(ips, flops_per_image, peak, jax.device_count())
                writer.write(step, last)
                bar.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "mkcl", "slra", "lr", "logit_scale",
                                                                  "images_per_s", "mfu") if k in last})
            if save_now:
                ckpts.save(step, state, data_iter.get_state(), config_dict)
                saved = step
            due = evaluator.due(step, end, total_steps) if evaluator is not None else []
            if due:
                results = evaluator(state.params, due)
                writer.write(step, evaluator.log_row(results), prefix="eval")
                if step == total_steps:
                    final_eval = results
        if stop.requested:  # Ctrl-C: the step in flight finished; keep it
            if saved != step:
                ckpts.save(step, state, data_iter.get_state(), config_dict)
            raise Interrupted(f"stopped at step {step} of {total_steps}; checkpoint {ckpts.directory / str(step)} "
                              "saved; rerun the same command to resume")
    finally:
        stop.restore()
        bar.close()
        writer.close()

    result = {"step": step, "metrics": last, "final_params": state.params}
    if step == total_steps:
        export_dir = export(state.params, model_cfg, workdir / "export")  # collective: every process takes part
        result["export"] = str(export_dir) if is_main else None
        if final_eval is not None:
            from make_jax.evaluate.suite import summarize, write_json

            result["eval"] = summarize(final_eval)
            write_json(workdir / "eval.json", {"checkpoint": result["export"], "step": step, "results": final_eval,
                                               "summary": result["eval"]})
    ckpts.close()
    return result


def _latest_saved(workdir: Path) -> int | None:
    """The highest step directory under WORKDIR/checkpoints (for the config-change log), without Orbax."""
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)


class _InterruptFlag:
    """While training, the first Ctrl-C (SIGINT) only asks the loop to stop after the current step and save it;
    a second one interrupts at once (KeyboardInterrupt, nothing more saved). Off the main thread: no handler."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt: stopping after the current step and saving it (Ctrl-C again to stop now)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingEvals:
    """`config.evals` on the current parameters (make_jax.evaluate.suite): entries with `every > 0` every that
    many steps and at the last step of this run, every entry at the final step (whose results also go to
    WORKDIR/eval.json). `train` checks the entries before any work. One `Encoder` is built at the first call
    and re-pointed at new parameters afterwards, so evaluation compiles once.
    """

    def __init__(self, entries: list, fns: ModelFunctions, batch_size: int):
        self.entries = entries
        self.batch_size = batch_size
        self.fns = fns
        self.encoder = None

    def due(self, step: int, end: int, total_steps: int) -> list:
        if step == total_steps:
            return self.entries
        return [e for e in self.entries if e.every and (step % e.every == 0 or step == end)]

    def __call__(self, params, entries: list) -> list[dict]:
        from make_jax.evaluate.suite import run_evals
        from make_jax.inference import Encoder

        host = host_copy(params)  # this process's shards only: process 0 evaluates alone
        if self.encoder is None:
            self.encoder = Encoder(self.fns.merge(host), batch_size=self.batch_size)
        else:
            self.encoder.set_params(host)
        return run_evals(self.encoder, entries, defaults={"progress": False}, raise_errors=True)

    @staticmethod
    def log_row(results: list[dict]) -> dict:
        """{'<name>/<metric>': value} of the numeric headline metrics (metrics.jsonl, TensorBoard)."""
        from make_jax.evaluate.suite import headline

        return {f"{r['name']}/{k}": v for r in results for k, v in headline(r).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


def export(params, model_cfg: ModelConfig, out: Path) -> Path:
    """The inference export: parameters + model config only, opened by `make_jax.load` and the evaluators."""
    from make_jax.checkpoint.orbax_io import save_checkpoint

    host = host_copy(params)
    return save_checkpoint(out, host, model_cfg, overwrite=True)
