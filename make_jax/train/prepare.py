"""Data preparation steps a training config asks for (``config.prepare = {step: options}``), run before training.

A step is a module with ``OPTIONS``, the dataclass of its config fields (``config.prepare.<step>`` is checked
against it with the rest of the config, before any work), and ``prepare(config, options)``, which may write data
and point ``config.data`` at it. Add a step by adding one entry to ``STEPS`` (a module path, imported only when a
config asks for the step).
"""

from __future__ import annotations

import importlib

STEPS = {
    "synthderm": "make_jax.synthderm.prepare",  # SynthDerm + its records (configs/demo.py)
}


def step_module(name: str):
    """The module of step `name`; ValueError naming the known steps if there is none."""
    if name not in STEPS:
        raise ValueError(f"config.prepare.{name}: unknown preparation step; known: {sorted(STEPS)}")
    return importlib.import_module(STEPS[name])


def options_class(name: str) -> type:
    """The dataclass that declares step `name`'s config fields."""
    return step_module(name).OPTIONS


def run_prepare(config) -> None:
    for name, options in config.prepare.items():
        module = step_module(name)
        module.prepare(config, module.OPTIONS(**dict(options)))
