"""The text-tower seam, proven with a second tower: a BERT encoder (Hugging Face `BertModel` layout, as BiomedBERT)
with [CLS] pooling and its WordPiece tokenizer, against transformers' PyTorch model and tokenizers, receiving gradients
from the MAKE loss; packing asks the tower before cutting texts to context buckets."""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from make_jax.checkpoint import CheckpointError
from make_jax.checkpoint.hf_bert import bert_text_config, with_bert_text
from make_jax.losses import LossConfig
from make_jax.models import create_model, get_model_config
from make_jax.tokenizer import text_tokenizer
from make_jax.tokenizer.wordpiece import WordPieceTokenizer
from make_jax.train.packing import PackConfig, pack_batch, suggest_pack_config
from make_jax.train.step import ModelFunctions, forward_loss

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ["the", "skin", "lesion", "pso", "##riasis", "ec", "##zema", "scal", "##y", "plaque", "##s", "red", "itch",
         "##ing", "on", "arm", "café", "naive", "de", "##rm", "##atitis", "a", "of", "with", "年", "人"]
# single characters and their continuations; "a" and "##y" appear twice (the last line wins in transformers)
CHARS = (list(string.ascii_lowercase) + list(string.digits) + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
         + ["##" + c for c in string.ascii_lowercase] + ["é", "ü", "—", "«", "»"])
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CHARS
TEXTS = ["Psoriasis: scaly, red plaques on the ARM!", "eczema", "", "   ", "Café naïve déjà-vu",
         "dermatitis\twith\nitching", "年人 skin", "x" * 120, "a^b$c`d", "itch—ing «red» lesion",
         "\u200bzero\u00a0width", "ünïcödé", "ﬁne", "İstanbul", "3.5mm 10% (left)", "a" * 30, "Ⅻ ½", "e\u0301clair",
         "tab\x07bell", "[CLS] special [sep] [SEP]x", "itching plaques, scaly red skin on the arm with lesions of psoriasis; " * 2]
BERT = dict(vocab_size=len(VOCAB) + 3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A random BertModel saved as Hugging Face does (config.json + model.safetensors) with a vocab.txt."""
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    with torch.no_grad():  # move every weight off its initial value (LayerNorms start at exactly 1 and 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return d, model


def bert_model(bert_dir, context_length=24):
    d, _ = bert_dir
    text = bert_text_config(d, context_length=context_length)
    cfg = get_model_config("tiny").replace(text=text)
    model = create_model(cfg, seed=1)
    fns = ModelFunctions(model)
    return fns, with_bert_text(fns.params(model), d, text), cfg


def test_wordpiece_ids_equal_transformers(bert_dir):
    d, _ = bert_dir
    ours = WordPieceTokenizer(d / "vocab.txt", context_length=16)
    ids, lengths = ours.tokenize_with_lengths(TEXTS)
    for hf in (transformers.BertTokenizer.from_pretrained(d), transformers.BertTokenizerLegacy(str(d / "vocab.txt"))):
        for text, row, n in zip(TEXTS, ids, lengths):
            want = hf(text, max_length=16, truncation=True, padding="max_length")["input_ids"]
            assert row.tolist() == want, (type(hf).__name__, text)
            assert n == sum(1 for i in want if i != 0)
    assert ids[0, 1] == VOCAB.index("pso") and lengths[2] == 2  # not all [UNK]: the vocabulary is really used
    assert ids[7, 1] == VOCAB.index("[UNK]")  # a 120-character word


def test_bert_tower_equals_transformers_bert_model(bert_dir):
    d, torch_model = bert_dir
    fns, params, cfg = bert_model(bert_dir)
    model = fns.merge(params)
    tok = text_tokenizer(cfg.text)
    ids, lengths = tok.tokenize_with_lengths(TEXTS[:6] + TEXTS[-1:], context_length=24)
    assert lengths.max() == 24 and lengths.min() == 2  # a truncated text and an empty one
    mask = np.arange(24)[None] < lengths[:, None]
    with torch.no_grad():
        want = torch_model(input_ids=torch.tensor(ids, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
    got = np.asarray(model.text.hidden_states(jnp.asarray(ids)))
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5, rtol=1e-5)  # padded positions are never read
    # pooled: the [CLS] state through the projection, L2-normalised (reference in float64 from torch's output)
    cls = want[:, 0].astype(np.float64) @ np.asarray(params["text"]["text_projection"], np.float64)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model.encode_text(jnp.asarray(ids))), cls, atol=1e-5)
    # more trailing padding changes nothing (the lengths mask it)
    wider = np.pad(ids[:, :20], ((0, 0), (0, 4)))
    short = lengths <= 20
    np.testing.assert_allclose(np.asarray(model.encode_text(jnp.asarray(wider)))[short],
                               np.asarray(model.encode_text(jnp.asarray(ids)))[short], atol=1e-6)


def test_bert_directory_errors_name_the_problem(bert_dir, tmp_path):
    d, _ = bert_dir
    with pytest.raises(CheckpointError, match="context_length 41"):
        bert_text_config(d, context_length=41)
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match="vocab.txt"):
        bert_text_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(CheckpointError, match="roberta"):
        bert_text_config(tmp_path)


def _bert_batch(tok, b=4, n=4, length=24, seed=0):
    rng = np.random.default_rng(seed)
    pool = [t for t in TEXTS if t.strip()]
    texts = [[pool[int(rng.integers(len(pool)))] for _ in range(n)] for _ in range(b)]
    ids = np.stack([tok(row, context_length=length) for row in texts])
    valid = np.ones((b, n), bool)
    valid[1, 3] = valid[2, 2] = False
    images = rng.integers(0, 256, (b, 32, 32, 3)).astype(np.uint8)
    return {"images": images, "text_ids": ids.astype(np.int32), "text_valid": valid}


def test_every_bert_parameter_receives_a_gradient_from_the_make_loss(bert_dir):
    # The gradient's values are checked against PyTorch's BertModel and a float64 MAKE loss by central differences
    # in tests/test_bert_train.py (5 BERT parameter kinds, through train()); here: every BERT weight is wired into
    # the loss, from the embeddings to the last layer.
    fns, params, cfg = bert_model(bert_dir)
    batch = _bert_batch(text_tokenizer(cfg.text))
    grads = jax.jit(jax.grad(lambda p: forward_loss(fns.merge(p), batch, LossConfig())[0]))(params)  # mkcl+slra+dkw
    names = []
    for path, g in jax.tree_util.tree_leaves_with_path(grads["text"]):
        names.append(jax.tree_util.keystr(path))
        g = np.abs(np.asarray(g))
        if "position" in names[-1]:
            continue  # rows past the longest text stay 0
        if "blocks" in names[-1]:  # every layer of the stack, not only one
            assert (g.reshape(g.shape[0], -1).max(axis=1) > 0).all(), names[-1]
        assert g.max() > 0, names[-1]
    # by hand: per (stacked) layer 16 BERT weights (query, key, value, attention output, intermediate, output:
    # kernel and bias each; two LayerNorms: scale and bias), the embeddings 5 (word, position, token type,
    # LayerNorm scale and bias), and our text projection
    assert len(names) == 16 + 5 + 1, names


def test_packing_asks_the_text_tower(bert_dir):
    fns, params, cfg = bert_model(bert_dir)
    batch = _bert_batch(text_tokenizer(cfg.text), seed=1)
    with pytest.raises(ValueError, match="trailing padding"):
        pack_batch(batch, PackConfig(row_budgets=(16,)), LossConfig(), cfg.text)
    assert suggest_pack_config([batch], multiple_of=2, text=cfg.text).buckets is None
    assert suggest_pack_config([batch], multiple_of=2).buckets is not None  # the CLIP tower allows them
    packed, stats = pack_batch(batch, PackConfig(row_budgets=(16,), unique_budgets=(16,), buckets=None),
                               LossConfig(), cfg.text)
    assert stats["unique"] < stats["valid"] == 14 and packed["text_ids_0"].shape == (16, 24)
    model = fns.merge(params)
    loss = nnx.jit(forward_loss, static_argnums=2)  # a program per layout (eager: op by op, 3x slower)
    dense = loss(model, batch, LossConfig())[0]
    assert float(loss(model, packed, LossConfig())[0]) == pytest.approx(float(dense), rel=1e-5)
