"""Shared fixtures: a tiny SynthDerm set and its records, made once per test session."""

import pytest


@pytest.fixture(scope="session")
def synthderm_small(tmp_path_factory):
    """(SynthDerm root, records dataset directory) — 48 training images of 40 px, shorter side 36 in records."""
    from make_jax.records.convert import convert
    from make_jax.synthderm import SynthDermConfig, generate

    root = tmp_path_factory.mktemp("synthderm")
    generate(root, SynthDermConfig(seed=3, num_train=48, num_val=8, num_zeroshot=32, num_concepts=24,
                                   num_retrieval=8, image_size=40), workers=1, progress=False)
    res = convert(str(root / "make" / "train.csv"), str(root / "make"), str(root / "records"),
                  val_csv=str(root / "make" / "val.csv"), shorter_side=36, workers=0, progress=False,
                  log=lambda *_: None)
    assert res.complete and res.splits["train"] == 48
    return root, res.directory


def tiny_train_config(records: str, **overrides):
    """The demo config shrunk to the tiny model on `records` (a few seconds a step on CPU), without SynthDerm
    preparation, periodic evaluation, progress bar or TensorBoard; `overrides` set top-level fields."""
    from configs.demo import get_config

    c = get_config()
    del c.prepare["synthderm"]
    c.model.name = "tiny"
    c.data.records = records
    c.data.image_size = 32
    c.data.context_length = 16
    c.data.prefetch = 0
    c.batch_size = 8
    c.progress = False
    c.tensorboard = False
    c.eval.every = 0
    for k, v in overrides.items():
        c[k] = v
    return c


def random_tiny_encoder(seed: int = 0, batch_size: int = 8):
    """An Encoder around the tiny preset holding random values drawn with numpy (cheaper than the model's own
    initialisation on a busy CPU): for tests of the evaluation plumbing, not of what a model learns."""
    import jax
    import numpy as np
    from flax import nnx

    from make_jax.inference import Encoder
    from make_jax.models import abstract_model, get_model_config

    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(get_model_config("tiny")))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32),
                                                 nnx.to_pure_dict(state)))
    return Encoder(nnx.merge(graphdef, state), batch_size=batch_size)
