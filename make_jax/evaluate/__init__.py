"""Evaluation of a MAKE / CLIP checkpoint: zero-shot classification, concept annotation, retrieval, inference.

    python -m make_jax.evaluate --checkpoint DIR --task zero_shot --csv test.csv --classes PAD --out r.json

Library use: every evaluator takes any object with `preprocess`, `encode_image` and `encode_text`
(`EmbeddingModel`; `make_jax.load(...)` returns one):

    from make_jax.evaluate import run_task
    result = run_task(make_jax.load("ckpt"), "zero_shot", csv="PAD/test.csv", classes="PAD")

Modules: metrics (pure numpy), datasets (layout readers), images (parallel decoding), zero_shot, concepts,
retrieval, infer, registry (task name → evaluator and its headline), suite (the `evals` dict run by training and
the CLI), presets (class lists, templates, concept resources), cli.
"""

from make_jax.evaluate.common import EmbeddingModel
from make_jax.evaluate.datasets import DatasetError
from make_jax.evaluate.registry import get as get_task
from make_jax.evaluate.registry import names as task_names
from make_jax.evaluate.registry import register, run_task

__all__ = ["DatasetError", "EmbeddingModel", "get_task", "register", "run_task", "task_names"]
