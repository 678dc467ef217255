"""A Hugging Face `BertModel` directory (BiomedBERT / PubMedBERT) → the BERT text tower's config and parameters.

The directory holds `config.json` (model_type "bert"), `model.safetensors` or `pytorch_model.bin`, and
`vocab.txt` (the WordPiece vocabulary, which the config's tokenizer then points at). Tensor names:

| Hugging Face (`BertModel`; `bert.` prefix of `BertFor*` stripped)  | text tower parameter                      |
|--------------------------------------------------------------------|-------------------------------------------|
| embeddings.word_embeddings.weight (V, W)                           | word_embeddings                           |
| embeddings.position_embeddings.weight (P, W)                       | position_embeddings (first context_length rows) |
| embeddings.token_type_embeddings.weight (T, W)                     | token_type_embedding = row 0              |
| embeddings.LayerNorm.{weight,bias}                                 | embeddings_ln.{scale,bias}                |
| encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}   | encoder.blocks.attention.{query,key,value}.{kernel (= weight.T),bias}[i] |
| encoder.layer.{i}.attention.output.dense.*                         | encoder.blocks.attention.output.*[i]      |
| encoder.layer.{i}.attention.output.LayerNorm.*                     | encoder.blocks.attention_ln.*[i]          |
| encoder.layer.{i}.intermediate.dense.*                             | encoder.blocks.intermediate.*[i]          |
| encoder.layer.{i}.output.dense.* / output.LayerNorm.*              | encoder.blocks.output.*[i] / output_ln.*[i] |

Not read: `pooler.*` (BertModel's dense + tanh pooler; the tower pools the [CLS] hidden state itself, as open_clip's
``cls_last_hidden_state_pooler``), `cls.*` (masked-LM heads of `BertForMaskedLM` checkpoints) and the
`embeddings.position_ids` buffer. The projection to the joint space (`text_projection`) is not part of BERT: it
keeps its initialisation (or comes from a MAKE-style checkpoint trained with this tower).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from make_jax.checkpoint.open_clip_layout import CheckpointError
from make_jax.models.config import TextConfig

BERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_IGNORED_PREFIXES = ("pooler.", "cls.")
_IGNORED_KEYS = ("embeddings.position_ids",)
_LAYER = {  # HF suffix → (path in the stacked block, transpose?)
    "attention.self.query.weight": (("attention", "query", "kernel"), True),
    "attention.self.query.bias": (("attention", "query", "bias"), False),
    "attention.self.key.weight": (("attention", "key", "kernel"), True),
    "attention.self.key.bias": (("attention", "key", "bias"), False),
    "attention.self.value.weight": (("attention", "value", "kernel"), True),
    "attention.self.value.bias": (("attention", "value", "bias"), False),
    "attention.output.dense.weight": (("attention", "output", "kernel"), True),
    "attention.output.dense.bias": (("attention", "output", "bias"), False),
    "attention.output.LayerNorm.weight": (("attention_ln", "scale"), False),
    "attention.output.LayerNorm.bias": (("attention_ln", "bias"), False),
    "intermediate.dense.weight": (("intermediate", "kernel"), True),
    "intermediate.dense.bias": (("intermediate", "bias"), False),
    "output.dense.weight": (("output", "kernel"), True),
    "output.dense.bias": (("output", "bias"), False),
    "output.LayerNorm.weight": (("output_ln", "scale"), False),
    "output.LayerNorm.bias": (("output_ln", "bias"), False),
}


def bert_text_config(directory: str | Path, context_length: int | None = None) -> TextConfig:
    """The `TextConfig` (tower "bert", tokenizer "wordpiece" over the directory's vocab.txt) of a BertModel
    directory. ``context_length`` (default: max_position_embeddings) must not exceed max_position_embeddings."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face BertModel directory)")
    c = json.loads(path.read_text(encoding="utf-8"))
    if c.get("model_type") != "bert":
        raise CheckpointError(f"{path}: model_type is {c.get('model_type')!r}, not 'bert'")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported "
                              "(only 'absolute')")
    if c.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{path}: hidden_act {c['hidden_act']!r} is not supported (only 'gelu')")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        raise CheckpointError(f"{path}: decoder / cross-attention BERT configs are not supported")
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        raise CheckpointError(f"{vocab}: no WordPiece vocabulary beside the weights")
    max_pos = int(c.get("max_position_embeddings", 512))
    length = max_pos if context_length is None else int(context_length)
    if not 2 <= length <= max_pos:
        raise CheckpointError(f"context_length {length} must be in [2, max_position_embeddings={max_pos}]")
    width, hidden = int(c["hidden_size"]), int(c["intermediate_size"])
    return TextConfig(context_length=length, vocab_size=int(c["vocab_size"]), width=width,
                      layers=int(c["num_hidden_layers"]), heads=int(c["num_attention_heads"]),
                      mlp_ratio=hidden / width, tower="bert", tokenizer="wordpiece", vocab_file=str(vocab.resolve()),
                      pad_id=int(c.get("pad_token_id", 0)), ln_eps=float(c.get("layer_norm_eps", 1e-12)),
                      activation="gelu")


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    from make_jax.checkpoint.readers import read_tensors

    for name in BERT_WEIGHTS:
        if (directory / name).is_file():
            return read_tensors(directory / name)
    raise CheckpointError(f"{directory}: none of {BERT_WEIGHTS}")


def bert_text_params(directory: str | Path, text: TextConfig) -> dict:
    """The BERT tower's parameters (every one but `text_projection`) as a nested dict of float32 numpy arrays."""
    directory = Path(directory)
    sd = _read_weights(directory)
    sd = {(k[5:] if k.startswith("bert.") else k): v for k, v in sd.items()}
    # older (TF-converted) checkpoints name LayerNorm's parameters gamma/beta; transformers renames them on load
    sd = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
          for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES) and k not in _IGNORED_KEYS}
    w, h = text.width, text.mlp_width
    used: set[str] = set()

    def take(name: str, shape: tuple) -> np.ndarray:
        if name not in sd:
            raise CheckpointError(f"{directory}: missing tensor {name}")
        x = np.asarray(sd[name], np.float32)
        if x.shape != shape:
            raise CheckpointError(f"{directory}: {name} has shape {x.shape}, the config expects {shape}")
        used.add(name)
        return x

    pos = sd.get("embeddings.position_embeddings.weight")
    if pos is None or pos.ndim != 2 or pos.shape[0] < text.context_length:
        raise CheckpointError(f"{directory}: embeddings.position_embeddings.weight missing or shorter than "
                              f"context_length {text.context_length}")
    used.add("embeddings.position_embeddings.weight")
    types = sd.get("embeddings.token_type_embeddings.weight")
    if types is None or types.ndim != 2 or types.shape[1] != w:
        raise CheckpointError(f"{directory}: embeddings.token_type_embeddings.weight missing or not (T, {w})")
    used.add("embeddings.token_type_embeddings.weight")
    blocks: dict = {}
    for suffix, (path, transpose) in _LAYER.items():
        out_dim = {"intermediate": h}.get(path[0], w)
        in_dim = h if path[0] == "output" else w
        shape = (out_dim, in_dim) if transpose else (out_dim,)
        stacked = np.stack([take(f"encoder.layer.{i}.{suffix}", shape) for i in range(text.layers)])
        if transpose:
            stacked = np.swapaxes(stacked, 1, 2)
        node = blocks
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = stacked
    params = {
        "word_embeddings": take("embeddings.word_embeddings.weight", (text.vocab_size, w)),
        "position_embeddings": np.asarray(pos[:text.context_length], np.float32),
        "token_type_embedding": np.asarray(types[0], np.float32),
        "embeddings_ln": {"scale": take("embeddings.LayerNorm.weight", (w,)),
                          "bias": take("embeddings.LayerNorm.bias", (w,))},
        "encoder": {"blocks": blocks},
    }
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise CheckpointError(f"{directory}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
                              " (more layers than config.json says, or not a BertModel)")
    return params


def with_bert_text(params: dict, directory: str | Path, text: TextConfig) -> dict:
    """`params` (a model whose text tower is "bert") with the BERT weights of `directory` in its text tower;
    `text_projection` and the image tower are kept."""
    if text.tower != "bert":
        raise CheckpointError(f"the model's text tower is {text.tower!r}, not 'bert'")
    return dict(params, text=dict(bert_text_params(directory, text), text_projection=params["text"]["text_projection"]))


__all__ = ["BERT_WEIGHTS", "bert_text_config", "bert_text_params", "with_bert_text"]
