"""SynthDerm: a seeded generator of a small dermatology-like dataset in the public layouts MAKE uses.

    python -m make_jax.synthderm --out DIR [--seed 0] [--num-train 2000] [--image-size 96] [--workers 2]

writes a MAKE training CSV and a held-out validation CSV with their images and a Derm1M-release-like table, a
zero-shot set (`filename,label` + class names), a SkinCon-layout concept set and a retrieval set, plus the
ground truth of every image. Layout and vocabulary: docs/synthderm.md.

Library use:

    from make_jax.synthderm import SynthDermConfig, generate
    manifest = generate(tmp_dir, SynthDermConfig(seed=1, num_train=64, num_val=16, num_zeroshot=32,
                                                 num_concepts=32, num_retrieval=16), progress=False)
"""

from .captions import write_caption, write_description
from .cases import sample_case
from .draw import draw_case
from .generate import SPLIT_CODES, SynthDermConfig, generate, make_item
from .vocab import CLASSNAMES, CONCEPT_KEYS, CONCEPTS, DISEASES

__all__ = [
    "CLASSNAMES",
    "CONCEPTS",
    "CONCEPT_KEYS",
    "DISEASES",
    "SPLIT_CODES",
    "SynthDermConfig",
    "draw_case",
    "generate",
    "make_item",
    "sample_case",
    "write_caption",
    "write_description",
]
