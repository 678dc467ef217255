"""A BERT text tower trained through the real entry (`train`): config.model.text_tower='bert', records whose stored
ids are CLIP BPE tokenized again by the pipeline with WordPiece, the MAKE loss. The first step's loss and gradient
are checked against an independent computation — transformers' PyTorch BertModel and BertTokenizer (float64) for
the texts, an independent PyTorch ViT (tests/torch_reference.py) for the images, and the float64 numpy MAKE loss
of tests/test_losses_paper.py. Also: the export opens with make_jax.load (the vocabulary travels with it), the
open_clip export refuses in one line, FLOP counting equals the tower's matrix products, and the config refuses
what it cannot honour."""

from __future__ import annotations

import dataclasses
import json
import shutil
import string

import jax
import numpy as np
import pytest

from conftest import tiny_train_config
from make_jax.checkpoint.open_clip_layout import BLOCK_TENSORS, TOP_TENSORS, TOWER_BLOCKS
from make_jax.data.records import read_records
from make_jax.losses import LossConfig
from make_jax.train.config import ConfigError, check_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_losses_paper import ref_loss, ref_raw_texts, ref_text_rows, ref_weights  # noqa: E402
from torch_reference import openclip_image  # noqa: E402

# A tiny WordPiece vocabulary in vocab.txt form: specials, whole words of SynthDerm captions, characters and their
# continuations (so every word has pieces: no [UNK] for a caption, and some words split into several pieces).
WORDS = ["the", "a", "of", "on", "with", "and", "red", "plaque", "##s", "skin", "lesion", "pink", "brown", "white",
         "scal", "##y", "erythema", "##tous", "arm", "leg", "face", "trunk", "back"]
CHARS = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CHARS + ["##" + c for c in string.ascii_lowercase]
BERT = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, type_vocab_size=2)
CONTEXT = 24
SEED_STREAM = 0x5EED_0001  # the pipeline's documented shuffle stream (make_jax/data/pipeline.py)
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP's normalisation
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A random BertModel saved as Hugging Face does, beside a vocab.txt made here."""
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    with torch.no_grad():  # off the initial values (LayerNorms start at exactly 1 and 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return d


def bert_config(records, bert_dir, **top):
    c = tiny_train_config(records, **top)
    c.model.text_tower = "bert"
    c.model.text_init = str(bert_dir)
    c.data.context_length = CONTEXT
    # AdamW's first step is -lr·g/(|g| + eps) exactly (bias corrections cancel), so g can be read back from the
    # update; eps = 1 keeps |update| < lr·1 away from saturation; no decay, no clipping, no warm-up ramp.
    c.optim.lr = 0.05
    c.optim.eps = 1.0
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 1
    return c


# ---- the independent reference -----------------------------------------------------------------------------

def _get(tree, path):
    for p in path:
        tree = tree[p]
    return np.asarray(tree, np.float64)


def visual_state_dict(params, layers):
    """The image tower in open_clip's names (layout tables of the converter, which tests/test_convert.py checks
    against open_clip), float64 torch, for tests/torch_reference.openclip_image."""
    sd = {}
    for name, path, kind in TOP_TENSORS:
        if path[0] == "visual":
            x = _get(params, path)
            sd[name] = torch.from_numpy(x.transpose(3, 2, 0, 1).copy() if kind == "conv" else x)
    prefix, bpath = TOWER_BLOCKS["visual"]
    for suffix, sub, kind in BLOCK_TENSORS:
        stacked = _get(params, bpath + sub)
        for i in range(layers):
            sd[f"{prefix}.{i}.{suffix}"] = torch.from_numpy((stacked[i].T if kind == "T" else stacked[i]).copy())
    return sd


class Reference:
    """Loss of one dense batch in float64: images through an independent ViT, texts through transformers'
    BertModel with [CLS] pooling and our projection, the MAKE loss from the paper's equations (numpy)."""

    def __init__(self, bert_dir, images_uint8, texts, valid, loss_cfg, model_cfg):
        self.bert = transformers.BertModel.from_pretrained(bert_dir).double().eval()
        tok = transformers.BertTokenizer(str(bert_dir / "vocab.txt"), do_lower_case=True)
        self.rows = [(i, s) for i in range(len(texts)) for s in range(len(texts[i])) if valid[i][s]]
        enc = tok([texts[i][s] for i, s in self.rows], max_length=CONTEXT, truncation=True, padding="max_length",
                  return_tensors="pt")
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]
        self.images = (images_uint8 / 255.0 - MEAN) / STD
        self.owner = np.array([i for i, _ in self.rows])
        self.slot = np.array([s for _, s in self.rows])
        self.cfg, self.model_cfg = loss_cfg, model_cfg
        self.frozen = None

    def features(self, params, bert_delta=None):
        with torch.no_grad():
            if bert_delta is not None:
                name, delta = bert_delta
                dict(self.bert.named_parameters())[name].add_(delta)
            cls = self.bert(input_ids=self.ids, attention_mask=self.mask).last_hidden_state[:, 0].numpy()
            if bert_delta is not None:
                dict(self.bert.named_parameters())[name].sub_(delta)
        txt = cls @ _get(params, ("text", "text_projection"))
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        v = self.model_cfg.vision
        img, patch = openclip_image(visual_state_dict(params, v.layers), self.images, v.heads,
                                    self.model_cfg.activation, self.model_cfg.ln_eps)
        return img, patch, txt

    def loss(self, params, bert_delta=None):
        """The loss; after the first call the dkw weights (and, unless slra_grad_to_raw, the raw texts of the patch
        weighting) stay at their first values (stop-gradient in the step), so finite differences see what the
        gradient sees."""
        img, patch, txt = self.features(params, bert_delta)
        valid = np.ones(len(self.rows), bool)
        scale = float(_get(params, ("logit_scale",)))
        if self.frozen is None:
            rows = ref_text_rows(self.owner, self.slot, valid, len(img), self.cfg)
            self.frozen = (ref_weights(txt, self.owner, self.slot, rows, len(img), self.cfg),
                           ref_raw_texts(txt, self.owner, self.slot, rows, len(img)))
        w, traw = self.frozen
        if self.cfg.slra_grad_to_raw:
            traw = None
        return ref_loss(img, patch, txt, self.owner, self.slot, valid, scale, self.cfg, w=w, traw=traw)["loss"]


def first_batch_texts(records, config):
    """The records of the first global batch (the pipeline's documented epoch-0 permutation), their slot strings
    and validity as converted."""
    recs = read_records(records, "train", fields=("texts", "text_valid"))
    order = np.random.default_rng([config.seed, 0, SEED_STREAM]).permutation(len(recs))[:config.batch_size]
    return [recs[k]["texts"] for k in order], [recs[k]["text_valid"] for k in order]


# ---- the tests -----------------------------------------------------------------------------------------------

def test_bert_tower_trains_through_train_against_an_independent_reference(synthderm_small, bert_dir, tmp_path):
    from make_jax.checkpoint.hf_bert import with_bert_text
    from make_jax.models import create_model
    from make_jax.train.data import make_train_data
    from make_jax.train.loop import model_config_from, train
    from make_jax.train.optimizer import warmup_cosine
    from make_jax.train.step import ModelFunctions

    _, records = synthderm_small
    config = bert_config(records, bert_dir, total_steps=3)
    model_cfg = model_config_from(config)
    assert (model_cfg.text.tower, model_cfg.text.tokenizer, model_cfg.text.context_length) == ("bert", "wordpiece",
                                                                                               CONTEXT)
    # the batch the run sees: WordPiece ids of the records' strings (transformers' tokenizer), not the stored CLIP ids
    texts, valid = first_batch_texts(records, config)
    batch = next(make_train_data(config, 0, 1)[0])
    hf_tok = transformers.BertTokenizer(str(bert_dir / "vocab.txt"), do_lower_case=True)
    for i in range(config.batch_size):
        for s in np.flatnonzero(valid[i]):
            want = hf_tok(texts[i][s], max_length=CONTEXT, truncation=True, padding="max_length")["input_ids"]
            assert batch["text_ids"][i, s].tolist() == want, texts[i][s]
    np.testing.assert_array_equal(batch["text_valid"], np.stack(valid))

    # θ0: the fresh model of the config (image tower, projection, logit_scale) with the BERT weights of bert_dir
    # (hf_bert's reading of them is checked against transformers in tests/test_text_tower.py)
    model = create_model(model_cfg, seed=config.seed)
    p0 = jax.tree.map(np.asarray, with_bert_text(ModelFunctions(model).params(model), bert_dir, model_cfg.text))
    ref = Reference(bert_dir, batch["images"], texts, valid, LossConfig(**dict(config.loss)), model_cfg)

    workdir = tmp_path / "run"
    first = train(config, workdir, stop_after=1)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    want_loss = ref.loss(p0)
    assert rows[0]["loss"] == pytest.approx(want_loss, rel=1e-6)  # float32 step vs float64 reference

    # the gradient of step 1, read back from AdamW's first update u = -lr·g/(|g| + eps), against central
    # differences of the float64 reference along single parameters of each kind
    lr0 = float(warmup_cosine(config.optim.lr, config.optim.warmup_steps, config.total_steps)(0))
    eps = config.optim.eps
    p1 = jax.tree.map(np.asarray, first["final_params"])

    def grad_of(path):
        u = (_get(p0, path) - _get(p1, path)) / lr0
        assert np.abs(u).max() < 0.9  # far from the update's saturation at |u| → 1
        return eps * u / (1 - np.abs(u))

    h = 1e-5
    rng = np.random.default_rng(0)
    # (our path, transformers' parameter name, our layout = f(theirs)) — BERT weights perturbed on the torch side
    bert_leaves = [
        (("text", "word_embeddings"), "embeddings.word_embeddings.weight", lambda d: d),
        (("text", "position_embeddings"), "embeddings.position_embeddings.weight", lambda d: d[:CONTEXT]),
        (("text", "embeddings_ln", "scale"), "embeddings.LayerNorm.weight", lambda d: d),
        (("text", "encoder", "blocks", "attention", "query", "kernel"), "encoder.layer.0.attention.self.query.weight",
         lambda d: d.T),
        (("text", "encoder", "blocks", "output", "kernel"), "encoder.layer.1.output.dense.weight", lambda d: d.T),
    ]
    for path, name, ours in bert_leaves:
        shape = tuple(dict(ref.bert.named_parameters())[name].shape)
        d = rng.standard_normal(shape)
        if name.startswith("embeddings.position"):
            d[CONTEXT:] = 0  # positions past the context are not the tower's
        d /= np.linalg.norm(d)
        fd = (ref.loss(p0, (name, torch.from_numpy(h * d))) - ref.loss(p0, (name, torch.from_numpy(-h * d)))) / (2 * h)
        g = grad_of(path)
        layer = int(name.split(".")[2]) if name.startswith("encoder.layer.") else None
        analytic = float(np.sum((g[layer] if layer is not None else g) * ours(d)))
        assert abs(fd) > 1e-4, name
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-7), name
    for path in (("text", "text_projection"), ("visual", "proj"), ("logit_scale",)):
        d = rng.standard_normal(_get(p0, path).shape)
        d /= np.linalg.norm(d)

        def moved(s):
            out = jax.tree.map(lambda x: x, p0)
            node = out
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = _get(p0, path) + s * d
            return out

        fd = (ref.loss(moved(h)) - ref.loss(moved(-h))) / (2 * h)
        analytic = float(np.sum(grad_of(path) * d))
        assert abs(fd) > 1e-4, path
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-7), path

    # the rest of the run (resumed from step 1's checkpoint) and its export
    result = train(config, workdir)
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    check_export(result, model_cfg, bert_dir, texts, tmp_path)


def check_export(result, model_cfg, bert_dir, texts, tmp_path):
    """make_jax.load of the export, moved away from everything it was made from, tokenizes with its own copy of
    the vocabulary and encodes as the trained parameters do; the open_clip export refuses in one line."""
    import make_jax
    from make_jax.checkpoint import CheckpointError
    from make_jax.convert import export_open_clip
    from make_jax.models import create_model
    from make_jax.train.step import ModelFunctions

    moved = tmp_path / "moved_export"
    shutil.copytree(result["export"], moved)
    shutil.rmtree(result["export"])
    enc = make_jax.load(str(moved))
    assert enc.config.text.tower == "bert" and enc.config.text.vocab_file == str(moved / "vocab.txt")
    flat = [t for row in texts for t in row if t][:12]
    hf_tok = transformers.BertTokenizer(str(bert_dir / "vocab.txt"), do_lower_case=True)
    ids = enc.tokenize(flat)
    want_ids = hf_tok(flat, max_length=CONTEXT, truncation=True, padding="max_length")["input_ids"]
    assert ids.tolist() == want_ids
    trained = ModelFunctions(create_model(model_cfg)).merge(result["final_params"])
    np.testing.assert_allclose(np.asarray(enc.encode_text(flat)), np.asarray(trained.encode_text(ids)), atol=1e-6)
    with pytest.raises(CheckpointError, match="text tower is 'bert'") as e:
        export_open_clip(moved, tmp_path / "oc")
    assert "\n" not in str(e.value) and not (tmp_path / "oc").exists()


def _matmul_flops(jaxpr) -> float:
    """2 × the multiply-adds of every dot_general in a jaxpr, scan bodies counted once per iteration."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[k] for k in lc])
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * _matmul_flops(inner)
    return total


def test_flop_count_of_the_bert_tower_is_its_matrix_products(bert_dir):
    """flops.text_forward_flops equals the matrix products the BERT encoder runs (its jaxpr; the projection and
    the embedding lookup are not counted, as for every tower)."""
    from make_jax.checkpoint.hf_bert import bert_text_config
    from make_jax.models import create_model, get_model_config
    from make_jax.train.flops import text_forward_flops

    cfg = get_model_config("tiny", attention="xla").replace(text=bert_text_config(bert_dir, context_length=CONTEXT))
    model = create_model(cfg)
    for length in (CONTEXT, 10):
        ids = jax.numpy.ones((1, length), jax.numpy.int32)
        jaxpr = jax.make_jaxpr(lambda x: model.text.hidden_states(x))(ids).jaxpr
        assert text_forward_flops(cfg, length) == _matmul_flops(jaxpr) > 0


def test_text_tower_fields_are_refused_in_one_line(synthderm_small, bert_dir, tmp_path):
    from make_jax.train.config import check_paths
    from make_jax.train.loop import initial_params

    _, records = synthderm_small
    cases = [
        (dict(text_tower="gpt"), "config.model.text_tower must be one of"),
        (dict(text_tower="bert", text_init="", text_vocab=""), "exactly one of config.model.text_init"),
        (dict(text_tower="clip", text_vocab=str(bert_dir / "vocab.txt")), "config.model.text_vocab is for"),
    ]
    for fields, message in cases:
        c = tiny_train_config(records)
        c.model.update(fields)
        with pytest.raises(ConfigError, match=message) as e:
            check_config(c)
        assert "\n" not in str(e.value)
    c = tiny_train_config(records)
    c.model.update(text_tower="bert", text_vocab=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="config.model.text_vocab: no WordPiece vocab.txt at .*nope.txt"):
        check_paths(check_config(c))
    # from scratch: the preset's text geometry with the vocabulary's size
    from make_jax.train.loop import model_config_from

    c.model.text_vocab = str(bert_dir / "vocab.txt")
    text = model_config_from(c).text
    assert (text.tower, text.vocab_size, text.width, text.context_length) == ("bert", len(VOCAB), 64, 16)


def test_text_init_with_a_clip_checkpoint_for_the_image_tower(bert_dir, tmp_path):
    """init_from gives the image tower and logit_scale, text_init every BERT weight, the projection is fresh; a
    checkpoint whose text tower is not the config's is refused without text_init."""
    from make_jax.checkpoint.orbax_io import save_checkpoint
    from make_jax.models import create_model, get_model_config
    from make_jax.train.loop import initial_params, model_config_from
    from make_jax.train.step import ModelFunctions

    clip = create_model(get_model_config("tiny", activation="gelu"), seed=5)
    clip_params = jax.tree.map(np.asarray, ModelFunctions(clip).params(clip))
    save_checkpoint(tmp_path / "clip", clip_params, clip.config)
    c = tiny_train_config(str(tmp_path))
    c.model.update(text_tower="bert", text_init=str(bert_dir))
    c.data.context_length = CONTEXT
    c.init_from = str(tmp_path / "clip")
    cfg = model_config_from(c)
    fresh = create_model(cfg, seed=0)
    fresh_params = jax.tree.map(np.asarray, ModelFunctions(fresh).params(fresh))
    got = initial_params(c, cfg, fresh_params)
    np.testing.assert_array_equal(got["visual"]["proj"], clip_params["visual"]["proj"])
    np.testing.assert_array_equal(got["logit_scale"], clip_params["logit_scale"])
    np.testing.assert_array_equal(got["text"]["text_projection"], fresh_params["text"]["text_projection"])
    hf = transformers.BertModel.from_pretrained(bert_dir)
    np.testing.assert_array_equal(got["text"]["word_embeddings"], hf.embeddings.word_embeddings.weight.detach().numpy())
    np.testing.assert_array_equal(got["text"]["encoder"]["blocks"]["intermediate"]["kernel"][1],
                                  hf.encoder.layer[1].intermediate.dense.weight.detach().numpy().T)
    c.model.update(text_init="", text_vocab=str(bert_dir / "vocab.txt"))
    with pytest.raises(ValueError, match="geometry differs"):
        initial_params(c, model_config_from(c), fresh_params)


@pytest.mark.parametrize("slot0,official", [("raw", False), ("dagger", True)])
def test_pipeline_tokenizing_the_strings_gives_the_converters_ids(synthderm_small, slot0, official):
    """The pipeline's tokenization of the records' strings (the path a BERT tower takes), run with the CLIP
    tokenizer, gives exactly the batches of the stored ids the converter wrote: same slots, same validity, same
    padding of invalid slots, the dagger text in slot 0, the public code's inputs in official mode."""
    from make_jax.data.pipeline import PipelineConfig, train_dataset
    from make_jax.tokenizer import get_tokenizer

    _, records = synthderm_small
    cfg = PipelineConfig(image_size=32, context_length=12, slot0=slot0, official_inputs=official, prefetch=0)
    stored = next(iter(train_dataset(records, 8, cfg)))
    strings = next(iter(train_dataset(records, 8, dataclasses.replace(cfg, tokenizer=get_tokenizer()))))
    for k in stored:
        np.testing.assert_array_equal(strings[k], stored[k], err_msg=k)
    assert stored["text_valid"].any() and not stored["text_valid"].all()  # both kinds of slot are compared
