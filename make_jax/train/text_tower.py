"""The training config's text tower (`config.model.text_tower`, `text_init`, `text_vocab`): its `TextConfig`, its
initial weights, and the tokenizer the input pipeline must use for it.

    text = text_config_from(config)        # None: the preset's CLIP tower; else the BERT tower's TextConfig
    tok = pipeline_tokenizer(text)         # None: the records' stored CLIP BPE ids; else tokenize the texts

The records store CLIP BPE ids (`make_jax.data.records.TEXT_IDS_TOKENIZER`) beside the slots' strings. A model
whose tokenizer is another one (BERT's WordPiece) never sees those ids: the pipeline tokenizes the stored strings
with the model's tokenizer instead (`PipelineConfig.tokenizer`), so one run never mixes two tokenizers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from make_jax.models.config import TextConfig
from make_jax.train.config import ConfigError


def text_config_from(config) -> TextConfig | None:
    """The text tower `config.model` names, at `config.data.context_length`; None for "clip" (the preset's own).

    "bert" with `text_init` (a Hugging Face BertModel directory): its geometry, LayerNorm epsilon, activation and
    vocab.txt (make_jax.checkpoint.hf_bert). "bert" with `text_vocab` (a WordPiece vocab.txt), from scratch: the
    preset's text width, depth, heads and MLP ratio, that vocabulary's size and [PAD] id, and the model's
    activation and epsilon. Either way the tower's context length is the pipeline's, `config.data.context_length`
    (BERT's position table is cut to it)."""
    m, length = config.model, config.data.context_length
    if m.text_tower == "clip":
        return None
    if m.text_init:
        from make_jax.checkpoint.hf_bert import bert_text_config
        from make_jax.errors import InputError

        try:  # at its full length first, to name the config field that is out of range
            text = bert_text_config(_existing(m.text_init, "text_init", directory=True))
        except ConfigError:
            raise
        except InputError as e:  # no config.json, an unsupported BERT, no vocab.txt beside it
            raise ConfigError(f"config.model.text_init: {e}") from None
        if length > text.context_length:
            raise ConfigError(f"config.data.context_length={length} exceeds the max_position_embeddings "
                              f"({text.context_length}) of config.model.text_init {m.text_init}")
        return dataclasses.replace(text, context_length=length)
    from make_jax.models.config import PRESETS
    from make_jax.tokenizer.wordpiece import WordPieceTokenizer

    vocab = _existing(m.text_vocab, "text_vocab", directory=False)
    try:
        tok = WordPieceTokenizer(vocab)
    except ValueError as e:  # a vocabulary without [PAD]/[UNK]/[CLS]/[SEP]
        raise ConfigError(f"config.model.text_vocab: {e}") from None
    preset = PRESETS[m.name].text
    return dataclasses.replace(preset, tower="bert", tokenizer="wordpiece", vocab_file=str(vocab),
                               vocab_size=tok.vocab_size, pad_id=tok.pad_token_id, context_length=length)


def _existing(path: str, field: str, *, directory: bool) -> Path:
    p = Path(path).expanduser().absolute()
    ok = p.is_dir() if directory else p.is_file()
    if not ok:
        what = "Hugging Face BertModel directory" if directory else "WordPiece vocab.txt"
        raise ConfigError(f"config.model.{field}: no {what} at {path}")
    return p


def with_text_init(config, params: dict, text: TextConfig) -> dict:
    """`params` with the text tower's weights from `config.model.text_init` (every BERT weight; the projection
    to the joint space keeps its initialisation); unchanged without a text_init."""
    if not config.model.text_init:
        return params
    from make_jax.checkpoint.hf_bert import with_bert_text

    return with_bert_text(params, Path(config.model.text_init).expanduser().absolute(), text)


def text_geometry(text: TextConfig) -> TextConfig:
    """`text` with its vocabulary file named by content (sha256) instead of path: a checkpoint's copy of the
    vocab.txt it was trained with (make_jax.checkpoint.orbax_io) is the same vocabulary, another file is not."""
    if not text.vocab_file:
        return text
    import hashlib

    digest = hashlib.sha256(Path(text.vocab_file).read_bytes()).hexdigest()
    return dataclasses.replace(text, vocab_file=f"sha256:{digest}")


def pipeline_tokenizer(text: TextConfig | None):
    """The tokenizer the pipeline applies to the records' strings, or None to use their stored ids (which are
    of `records.TEXT_IDS_TOKENIZER`, the CLIP BPE, so only a model with that tokenizer may read them)."""
    from make_jax.data.records import TEXT_IDS_TOKENIZER

    if text is None or text.tokenizer == TEXT_IDS_TOKENIZER:
        return None
    from make_jax.tokenizer import text_tokenizer

    return text_tokenizer(text)
