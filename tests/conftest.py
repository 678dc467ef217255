"""Shared fixtures: a tiny SynthDerm set and its records, made once per test session."""

import pytest


@pytest.fixture(scope="session")
def synthderm_small(tmp_path_factory):
    """(SynthDerm root, records dataset directory) — 48 training images of 40 px, shorter side 36 in records."""
    from make_jax.data.convert import convert
    from make_jax.data.synthderm import SynthDermConfig, generate

    root = tmp_path_factory.mktemp("synthderm")
    generate(root, SynthDermConfig(seed=3, num_train=48, num_val=8, num_zeroshot=32, num_concepts=24,
                                   num_retrieval=8, image_size=40), workers=1, progress=False)
    res = convert(str(root / "make" / "train.csv"), str(root / "make"), str(root / "records"),
                  val_csv=str(root / "make" / "val.csv"), shorter_side=36, workers=0, progress=False,
                  log=lambda *_: None)
    assert res.complete and res.splits["train"] == 48
    return root, res.directory
