"""Training checkpoints: Orbax `CheckpointManager` over (train state, data-iterator state, config), with resume.

Layout of `WORKDIR/checkpoints/<step>/`:
    state/   Orbax PyTree checkpoint of TrainState (step, params, opt_state)
    data/    JSON: the input iterator's state (Grain `get_state()`), so a resumed run sees the same batches
    config/  JSON: the resolved config of the run that wrote it
    checksums.json  size and CRC-32 of every file above (make_jax.checkpoint.integrity), written after the save is
             committed and verified before a restore: a damaged file is named instead of loaded

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

from make_jax.checkpoint.integrity import CHECKSUM_FILE, verify_checksums, write_checksums
from make_jax.checkpoint.open_clip_layout import CheckpointError

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
        if jax.process_index() == 0:
            step_dir = self.directory / str(step)
            write_checksums(step_dir, step_dir / CHECKSUM_FILE)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, config) of `step`; `abstract_state` gives structure, shapes and shardings.
        Every file is first checked against the step's checksums (`CheckpointError` naming a damaged one)."""
        step_dir = self.directory / str(step)
        if not verify_checksums(step_dir, step_dir / CHECKSUM_FILE):
            logger.warning("%s has no %s (a save interrupted after its commit, or an older make_jax): restoring "
                           "it unverified", step_dir, CHECKSUM_FILE)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ))
        except Exception as e:  # Orbax/TensorStore errors of a damaged step; one line, the cause kept
            raise CheckpointError(f"{step_dir}: cannot be restored ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0]}); move this step away to resume from an "
                                  "earlier one") from e
        return restored["state"], dict(restored["data"] or {}), dict(restored["config"] or {})

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
