"""make_jax's own checkpoint directory: the model parameters as an Orbax checkpoint plus their config as JSON.

Layout of a checkpoint directory OUT (written by `python -m make_jax.convert`, read by `make_jax.load`)::

    OUT/
      model_config.json      ModelConfig.to_json(): geometry, activation, ln_eps, dtype, ...
      preprocess_cfg.json    eval preprocessing: mean, std, interpolation "bicubic", resize_mode "shortest"
      params/                Orbax (v1 API, `ocp.save`) checkpoint of the parameter tree
                             nnx.state(model, nnx.Param).to_pure_dict(): {"visual": {...}, "text": {...},
                             "logit_scale": ()} — float32, blocks stacked on a leading (L,) axis
      vocab.txt              only for a WordPiece (BERT) text tower: its vocabulary; model_config.json names it
                             relative to OUT (text.vocab_file "vocab.txt"), so OUT may be moved
      checksums.json         size and CRC-32 of every file above (make_jax.checkpoint.integrity), verified before a load

Writes are atomic: everything goes to a temporary sibling directory `.OUT.tmp-*` that is renamed to OUT only
once complete, so OUT never holds a half-written checkpoint (an interrupted run leaves at most the temporary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from make_jax.atomic_io import make_temp_dir
from make_jax.checkpoint.integrity import CHECKSUM_FILE, verify_checksums, write_checksums
from make_jax.checkpoint.open_clip_layout import CheckpointError, param_tree_shapes, params_shapes
from make_jax.models.config import ModelConfig

logger = logging.getLogger("make_jax.checkpoint")

CONFIG_FILE = "model_config.json"
PREPROCESS_FILE = "preprocess_cfg.json"
PARAMS_DIR = "params"
VOCAB_FILE = "vocab.txt"  # a WordPiece tokenizer's vocabulary (BERT text tower), beside the parameters


def _ocp():
    """Orbax's v1 API (`orbax.checkpoint.v1`; `experimental.v1` in some 0.11/0.12 releases)."""
    try:
        from orbax.checkpoint import v1 as ocp
    except ImportError:  # pragma: no cover - depends on the installed orbax
        from orbax.checkpoint.experimental import v1 as ocp
    return ocp


def _save_context():
    """Orbax context for writing parameters: no zstd compression (it saves <10% on float32 weights and makes
    both save and restore several times slower), and no defensive copy of host arrays (the save is synchronous
    and nothing mutates them meanwhile)."""
    ocp = _ocp()
    ctx = ocp.Context()
    try:
        ctx.array.saving.use_compression = False
    except AttributeError:  # pragma: no cover - older orbax: options passed to the constructor
        ctx = ocp.Context(array_options=ocp.options.ArrayOptions(
            saving=ocp.options.ArrayOptions.Saving(use_compression=False)))
    try:
        ctx.memory.deepcopy_host_arrays = False
    except AttributeError:  # pragma: no cover - orbax without this option
        pass
    return ctx


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames the complete `tmp` to `out`; an existing `out` is replaced only after the new one is in place."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `out`; renames it to `out` if the block succeeds, deletes it
    if it raises. With `overwrite`, an existing `out` is replaced only after the new one is complete."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")  # 0777 less the umask, not mkdtemp's 0700
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def collective_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """`atomic_directory` for a multi-process job, entered by every process: Orbax saves are collective (its v1
    API synchronises all processes and cannot be limited to one), so all processes write into one temporary
    directory of a fixed name; process 0 prepares it, and renames it to `out` once everyone is done."""
    from jax.experimental import multihost_utils

    out = Path(out).absolute()
    tmp = out.parent / f".{out.name}.tmp-collective"
    main = jax.process_index() == 0
    if main:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    multihost_utils.sync_global_devices(f"collective_directory:{out}:ready")
    yield tmp
    multihost_utils.sync_global_devices(f"collective_directory:{out}:written")
    if main:
        _move_into_place(tmp, out)
    multihost_utils.sync_global_devices(f"collective_directory:{out}:renamed")


def _pure_params(params: Any) -> dict:
    """Accepts a CLIP module, an nnx.State or a nested dict; returns the nested dict of arrays."""
    from flax import nnx

    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"expected a CLIP model, an nnx.State or a dict of parameters, got {type(params).__name__}")
    return params


def expected_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'visual.transformer.blocks.attn.in_proj.kernel' → shape of the model `cfg` describes: from the
    open_clip layout tables for the CLIP text tower, from the model's own structure for another tower."""
    if cfg.text.tower == "clip":
        return param_tree_shapes(cfg)
    from flax import nnx

    from make_jax.models import abstract_model

    state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    return {".".join(str(k.key) for k in path): tuple(x.shape)
            for path, x in jax.tree_util.tree_leaves_with_path(state)}


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def check_param_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                       what: str) -> None:
    """Raises `CheckpointError` naming missing / unexpected keys and shape mismatches (both shapes)."""
    missing = [k for k in expected if k not in shapes]
    unexpected = sorted(k for k in shapes if k not in expected)
    wrong = [(k, tuple(shapes[k]), tuple(expected[k])) for k in expected
             if k in shapes and tuple(shapes[k]) != tuple(expected[k])]
    if missing or unexpected or wrong:
        lines = [f"{what} does not match its model config:"]
        lines += [f"  {k}: shape {s} in the {what}, the config expects {x}" for k, s, x in wrong]
        lines += [f"  missing key {k} (expected shape {expected[k]})" for k in missing]
        lines += [f"  unexpected key {k} (shape {tuple(shapes[k])})" for k in unexpected]
        raise CheckpointError("\n".join(lines))


def save_checkpoint(out: str | Path, params: Any, cfg: ModelConfig, *, preprocess_cfg: Mapping | None = None,
                    metadata: Mapping | None = None, overwrite: bool = False) -> Path:
    """Writes OUT/{model_config.json, preprocess_cfg.json, params/} atomically. `params`: a CLIP model, its
    nnx.State or the pure dict. `metadata` (JSON-serialisable) goes into Orbax's custom metadata."""
    from make_jax.checkpoint.readers import DEFAULT_PREPROCESS_CFG

    tree = _pure_params(params)
    check_param_shapes(params_shapes(tree), expected_param_shapes(cfg), what="parameter tree")
    # Orbax handles numpy and jax arrays (not numpy scalars): 0-d leaves become 0-d arrays.
    tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), tree)
    out = Path(out).absolute()
    directory = collective_directory if jax.process_count() > 1 else atomic_directory
    with directory(out, overwrite=overwrite) as tmp:
        with _save_context():
            _ocp().save(tmp / PARAMS_DIR, tree, custom_metadata=dict(metadata or {}))
        if jax.process_index() == 0:
            (tmp / CONFIG_FILE).write_text(_with_own_vocab(cfg, tmp).to_json() + "\n")
            pp = {**DEFAULT_PREPROCESS_CFG, **(preprocess_cfg or {})}
            (tmp / PREPROCESS_FILE).write_text(json.dumps(pp, indent=2) + "\n")
            write_checksums(tmp, tmp / CHECKSUM_FILE)
    logger.info("wrote %s", out)
    return out


def _with_own_vocab(cfg: ModelConfig, directory: Path) -> ModelConfig:
    """`cfg` with its tokenizer's vocabulary file (WordPiece) copied into the checkpoint directory as VOCAB_FILE
    and named relative to it, so the checkpoint tokenizes alike wherever it is moved (`read_config` resolves it)."""
    if not cfg.text.vocab_file:
        return cfg
    src = Path(cfg.text.vocab_file)
    if not src.is_file():
        raise CheckpointError(f"{src}: the text tokenizer's vocabulary is missing; the checkpoint needs it")
    shutil.copyfile(src, directory / VOCAB_FILE)
    return cfg.replace(text=dataclasses.replace(cfg.text, vocab_file=VOCAB_FILE))


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: not a make_jax checkpoint directory (needs {CONFIG_FILE} and {PARAMS_DIR}/; "
                              "convert a PyTorch checkpoint with `python -m make_jax.convert SRC OUT`)")
    cfg = ModelConfig.from_json((path / CONFIG_FILE).read_text())
    vocab = cfg.text.vocab_file
    if vocab and not Path(vocab).is_absolute():  # the checkpoint's own copy (_with_own_vocab)
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, vocab_file=str((path / vocab).absolute())))
    return cfg


def read_preprocess_cfg(path: str | Path) -> dict:
    from make_jax.checkpoint.readers import DEFAULT_PREPROCESS_CFG

    f = Path(path) / PREPROCESS_FILE
    return {**DEFAULT_PREPROCESS_CFG, **(json.loads(f.read_text()) if f.is_file() else {})}


def verify(path: str | Path) -> bool:
    """Every file of the checkpoint directory against its recorded size and checksum (`CheckpointError` naming the first
    that differs); False for a directory written before checksums were recorded (nothing to verify)."""
    path = Path(path)
    if verify_checksums(path, path / CHECKSUM_FILE):
        return True
    logger.warning("%s has no %s (written by an older make_jax): its files cannot be verified", path, CHECKSUM_FILE)
    return False


def _restore(path: Path, abstract: dict, as_numpy: bool) -> dict:
    ocp = _ocp()
    verify(path)
    try:
        saved = ocp.metadata(path / PARAMS_DIR).metadata
    except Exception as e:  # Orbax/TensorStore errors of a damaged directory; one line, the cause kept
        raise CheckpointError(f"{path / PARAMS_DIR}: unreadable checkpoint metadata ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    check_param_shapes(params_shapes(saved), params_shapes(abstract), what=f"checkpoint {path / PARAMS_DIR}")
    if as_numpy:
        target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), abstract)
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
    try:
        return ocp.load(path / PARAMS_DIR, target)
    except Exception as e:  # Orbax/TensorStore errors of a damaged directory; one line, the cause kept
        raise CheckpointError(f"{path / PARAMS_DIR}: cannot be restored ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e


def load_params(path: str | Path, cfg: ModelConfig | None = None, *, as_numpy: bool = False) -> dict:
    """The parameter pure dict of a checkpoint directory, checked key by key against `cfg` (default: the
    directory's model_config.json). Leaves are jax arrays on the default device, or numpy with `as_numpy`."""
    path = Path(path).absolute()
    cfg = cfg or read_config(path)
    abstract = _unflatten({k: jax.ShapeDtypeStruct(s, np.float32) for k, s in expected_param_shapes(cfg).items()})
    return _restore(path, abstract, as_numpy)


def model_with_params(cfg: ModelConfig, params: Mapping):
    """The CLIP module of `cfg` holding `params` (a pure dict of numpy or jax arrays, as `load_params` returns)."""
    from flax import nnx

    from make_jax.models.clip import abstract_model

    graphdef, params_state, rest = nnx.split(abstract_model(cfg), nnx.Param, ...)
    if jax.tree.leaves(rest):  # the checkpoint holds parameters only
        raise CheckpointError("the model has non-parameter state that a parameter checkpoint cannot restore")
    check_param_shapes(params_shapes(params), params_shapes(nnx.to_pure_dict(params_state)), what="parameter tree")
    nnx.replace_by_pure_dict(params_state, jax.tree.map(jax.numpy.asarray, params))
    return nnx.merge(graphdef, params_state, rest)


def load_model(path: str | Path, dtype: str | None = None):
    """The CLIP model of a checkpoint directory. `dtype` overrides the compute dtype (parameters stay float32)."""
    path = Path(path).absolute()
    cfg = read_config(path)
    if dtype is not None:
        cfg = cfg.replace(dtype=jax.numpy.dtype(dtype).name)
    return model_with_params(cfg, load_params(path, cfg))
