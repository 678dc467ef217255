"""Data preparation steps a training config asks for (``config.prepare = {step: options}``), run before training.

Each step is a function ``fn(config, **options)`` that may write data and point ``config.data`` at it. Add a
step by adding one entry to ``STEPS`` (a lazy "module:function" path, so the runner imports only what is used).
"""

from __future__ import annotations

import importlib

STEPS = {
    "synthderm": "make_jax.synthderm.prepare:prepare",  # SynthDerm + its records (configs/demo.py)
}


def run_prepare(config) -> None:
    for name, options in config.prepare.items():
        if name not in STEPS:
            raise ValueError(f"config.prepare.{name}: unknown preparation step; known: {sorted(STEPS)}")
        module, fn = STEPS[name].split(":")
        getattr(importlib.import_module(module), fn)(config, **dict(options))
