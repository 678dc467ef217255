"""Training checkpoints: Orbax `CheckpointManager` over (train state, data-iterator state, config), with resume.

Layout of `WORKDIR/checkpoints/<step>/`:
    state/   Orbax PyTree checkpoint of TrainState (step, params, opt_state)
    data/    JSON: the input iterator's state (Grain `get_state()`), so a resumed run sees the same batches
    config/  JSON: the resolved config of the run that wrote it

Orbax writes each step into a temporary directory and renames it when complete, so a run killed at any moment
(SIGKILL during a save included) leaves only whole checkpoints behind; `cleanup_tmp_directories` removes the
debris on the next start. Saves are synchronous here: a save costs less than a second at demo size, and
bit-exact resume tests are simpler to reason about when a returned `save` means "on disk".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger("make_jax.train")


class TrainCheckpoints:
    """Periodic saves, keep-last-N, latest-step restore."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None, config: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(config),
        ), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, config) of `step`; `abstract_state` gives structure, shapes and shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ))
        return restored["state"], dict(restored["data"] or {}), dict(restored["config"] or {})

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
