"""Metrics to `WORKDIR/metrics.jsonl` (one JSON object a line) and TensorBoard event files (`WORKDIR/tb/`)."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricWriter:
    def __init__(self, workdir: str | Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) or hasattr(v, "__float__") else v)
                 for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": prefix, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{prefix}/{k}", v, int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
