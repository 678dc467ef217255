"""Models by name: what `make_jax.load(x)` and every `--checkpoint x` accept.

`x` is, in this order of precedence:

1. an existing path: a make_jax checkpoint directory (opened as is), or anything `python -m make_jax.convert`
   reads — an open_clip directory (`open_clip_config.json` + weights), a Hugging Face CLIP directory
   (`config.json` + `model.safetensors`) or a bare state-dict file — converted in memory;
2. `hf-hub:ORG/NAME[@REVISION]`: a Hugging Face hub repository in one of those layouts, fetched with
   `huggingface_hub.snapshot_download` into its usual cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub).
   With `HF_HUB_OFFLINE=1` only the local cache is used;
3. a short name of `REGISTRY` (`make`, `dermlip-vit-b16`, `openai-vit-b16`): its hub repository, with the
   activation the weights were trained with forced (their configs do not always say) and, where known, the
   weights' sha256 checked.

Hub models are converted once and cached as make_jax checkpoints under `cache_dir()` (`$MAKE_JAX_CACHE`, else
`$XDG_CACHE_HOME/make_jax`, else ~/.cache/make_jax), keyed by the weights file and the activation, so the
second load skips PyTorch-layout reading and conversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from make_jax.checkpoint import orbax_io, readers
from make_jax.checkpoint.integrity import sha256_file
from make_jax.checkpoint.open_clip_layout import CheckpointError

logger = logging.getLogger("make_jax.checkpoint")

HF_PREFIX = "hf-hub:"
# Files worth fetching from a model repository: configs and safetensors weights first; PyTorch pickles only
# when a repository has no safetensors (MAKE's and DermLIP's repos ship both).
_CONFIG_FILES = [readers.OPEN_CLIP_CONFIG, readers.HF_CONFIG, "preprocessor_config.json"]
_SAFETENSORS = ["open_clip_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "model-*.safetensors"]
_PICKLES = ["open_clip_pytorch_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "pytorch_model-*.bin"]


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    """What is needed to load a published model: its hub repository, its architecture (an open_clip model
    name, for the record: the geometry is read from the repository's config), the activation it was trained
    with, and the sha256 of its weights file where known (None: not checked)."""

    hub_id: str
    architecture: str
    activation: str
    sha256: str | None
    description: str


REGISTRY: dict[str, RegistryEntry] = {
    "make": RegistryEntry(
        "xieji-x/MAKE", "ViT-B-16", "quick_gelu", None,
        "MAKE (MICCAI 2025): OpenAI CLIP ViT-B/16 pretrained on Derm1M with the MAKE objectives"),
    "dermlip-vit-b16": RegistryEntry(
        "redlessone/DermLIP_ViT-B-16", "ViT-B-16", "quick_gelu", None,
        "DermLIP ViT-B/16 (Derm1M, ICCV 2025): OpenAI CLIP ViT-B/16 fine-tuned with the CLIP loss on Derm1M"),
    "openai-vit-b16": RegistryEntry(
        "openai/clip-vit-base-patch16", "ViT-B-16", "quick_gelu", None,
        "OpenAI CLIP ViT-B/16 (MAKE's initialisation), Hugging Face transformers layout"),
}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A model reference resolved to local files. `kind` is "make_jax" (a checkpoint directory) or "source"
    (something `readers.read_source` converts); `cacheable` marks hub snapshots (immutable per commit)."""

    path: Path
    kind: str
    activation: str | None = None
    sha256: str | None = None
    origin: str = ""
    cacheable: bool = False


def cache_dir() -> Path:
    """Where converted hub models are kept: $MAKE_JAX_CACHE, else $XDG_CACHE_HOME/make_jax, else ~/.cache/make_jax."""
    if os.environ.get("MAKE_JAX_CACHE"):
        return Path(os.environ["MAKE_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "make_jax"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) read now, not at import (huggingface_hub reads it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _has_weights(path: Path) -> bool:
    names = list(readers.OPEN_CLIP_WEIGHTS) + list(readers.HF_WEIGHTS)
    return any((path / n).is_file() or (path / f"{n}.index.json").is_file() for n in names)


def hub_snapshot(repo_id: str, revision: str | None = None, *, hub_cache: str | Path | None = None) -> Path:
    """The local snapshot directory of a hub model repository (configs + weights), downloaded if needed.
    `hub_cache` defaults to huggingface_hub's (HF_HUB_CACHE)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise CheckpointError("hf-hub: models need huggingface_hub (pip install huggingface_hub)") from e
    offline = hub_offline()
    cache = str(hub_cache) if hub_cache is not None else os.environ.get("HF_HUB_CACHE") or None
    where = cache or "huggingface_hub's cache"

    def fetch(patterns):
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns,
                                      local_files_only=offline))

    try:
        path = fetch(_CONFIG_FILES + _SAFETENSORS)
        if not _has_weights(path):
            path = fetch(_CONFIG_FILES + _PICKLES)
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(f"{HF_PREFIX}{repo_id}: not in the local cache ({where}) and {why}") from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{HF_PREFIX}{repo_id}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if not _has_weights(path):
        raise CheckpointError(f"{HF_PREFIX}{repo_id}: snapshot {path} has no weights file "
                              f"({', '.join(readers.OPEN_CLIP_WEIGHTS + readers.HF_WEIGHTS)})")
    return path


def _split_hub_id(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise CheckpointError(f"{HF_PREFIX}{spec}: expected {HF_PREFIX}ORG/NAME (optionally @REVISION)")
    return repo, revision or None


def resolve(x: str | Path, *, hub_cache: str | Path | None = None) -> Resolved:
    """A model reference (see the module docstring) → local files. Raises CheckpointError naming `x`."""
    s = str(x)
    path = Path(s).expanduser()
    if path.exists():
        if orbax_io.is_checkpoint(path):
            return Resolved(path, "make_jax", origin=s)
        if path.is_dir() and not any((path / n).is_file() for n in (readers.OPEN_CLIP_CONFIG, readers.HF_CONFIG,
                                                                   *readers.OPEN_CLIP_WEIGHTS)):
            raise CheckpointError(f"{path}: not a make_jax checkpoint (model_config.json + params/), nor an "
                                  f"open_clip ({readers.OPEN_CLIP_CONFIG}) or Hugging Face ({readers.HF_CONFIG}) "
                                  "model directory")
        readers.detect_format(path)  # a file of an unknown type: a one-line error
        return Resolved(path, "source", origin=s)
    if s.startswith(HF_PREFIX):
        repo, revision = _split_hub_id(s[len(HF_PREFIX):])
        snap = hub_snapshot(repo, revision, hub_cache=hub_cache)
        return Resolved(snap, "make_jax" if orbax_io.is_checkpoint(snap) else "source", origin=s, cacheable=True)
    if s in REGISTRY:
        e = REGISTRY[s]
        snap = hub_snapshot(e.hub_id, hub_cache=hub_cache)
        return Resolved(snap, "source", activation=e.activation, sha256=e.sha256, origin=s, cacheable=True)
    raise CheckpointError(f"{s}: no such file or directory, not {HF_PREFIX}ORG/NAME, and not a known model name "
                          f"({', '.join(sorted(REGISTRY))})")


def _cache_key(source: readers.Source) -> str:
    """Identifies a converted model: the weights file (real path, size, mtime) and the config it was read with."""
    w = source.weights_file.resolve()
    st = w.stat()
    ident = json.dumps([str(w), st.st_size, st.st_mtime_ns, source.config.to_json(), source.preprocess_cfg],
                       sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _cached_dir(r: Resolved) -> Path | None:
    """The converted-model cache entry of a hub source, if one exists (index: key of the snapshot dir)."""
    index = cache_dir() / "index.json"
    if not index.is_file():
        return None
    entry = json.loads(index.read_text()).get(f"{r.path.resolve()}|{r.activation}")
    return cache_dir() / entry if entry and orbax_io.is_checkpoint(cache_dir() / entry) else None


def _remember(r: Resolved, name: str) -> None:
    index = cache_dir() / "index.json"
    data = json.loads(index.read_text()) if index.is_file() else {}
    data[f"{r.path.resolve()}|{r.activation}"] = name
    tmp = index.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, index)


def load_params(x: str | Path, *, activation: str | None = None, cache: bool = True,
                hub_cache: str | Path | None = None):
    """(ModelConfig, parameter pure dict, preprocess_cfg) for any model reference. `activation` overrides the
    source's (and a registry entry's); `cache=False` never reads or writes the converted-model cache."""
    from make_jax.checkpoint.open_clip_layout import open_clip_to_params

    r = resolve(x, hub_cache=hub_cache)
    if activation is not None:
        r = dataclasses.replace(r, activation=activation)
    if r.kind == "make_jax":
        if activation is not None:
            raise CheckpointError(f"{x}: a make_jax checkpoint fixes its activation; convert the source instead")
        return _open(r.path)
    if r.cacheable and cache:
        hit = _cached_dir(r)
        if hit is not None:
            logger.info("%s: converted model from the cache %s", x, hit)
            return _open(hit)
    source = readers.read_source(r.path, activation=r.activation)
    if r.sha256 is not None:
        got = sha256_file(source.weights_file)
        if got != r.sha256:
            raise CheckpointError(f"{x}: {source.weights_file.name} has sha256 {got}, the registry expects "
                                  f"{r.sha256} (a corrupt or different file)")
    params = open_clip_to_params(source.state_dict, source.config)
    if r.cacheable and cache:
        name = f"{str(x).replace(HF_PREFIX, '').replace('/', '--').replace('@', '--')}-{_cache_key(source)}"
        meta = {"converted_from": r.origin, "source_format": source.format, "weights_file": source.weights_file.name}
        try:
            orbax_io.save_checkpoint(cache_dir() / name, params, source.config,
                                     preprocess_cfg=source.preprocess_cfg, metadata=meta, overwrite=True)
            _remember(r, name)
            logger.info("%s: converted and cached as %s", x, cache_dir() / name)
        except OSError as e:  # a read-only home must not stop inference
            logger.warning("%s: could not cache the converted model under %s (%s)", x, cache_dir(), e)
    return source.config, params, source.preprocess_cfg


def _open(path: Path):
    cfg = orbax_io.read_config(path)
    return cfg, orbax_io.load_params(path, cfg), orbax_io.read_preprocess_cfg(path)


def load_model(x: str | Path, *, dtype: str | None = None, activation: str | None = None, cache: bool = True,
               hub_cache: str | Path | None = None):
    """(CLIP module, preprocess_cfg) for any model reference (see `load_params`). `dtype` overrides the compute
    dtype; parameters stay float32."""
    cfg, params, pp = load_params(x, activation=activation, cache=cache, hub_cache=hub_cache)
    if dtype is not None:
        cfg = cfg.replace(dtype=_dtype_name(dtype))
    return orbax_io.model_with_params(cfg, params), pp


def _dtype_name(dtype: str) -> str:
    import jax.numpy as jnp

    return jnp.dtype(dtype).name
