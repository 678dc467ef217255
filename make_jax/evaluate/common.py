"""Shared pieces of the evaluators: the encoder protocol, text encoding, normalisation, JSON helpers."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

__all__ = ["EmbeddingModel", "encode_texts", "l2n", "skipped_block", "skipped_lines", "to_jsonable"]


@runtime_checkable
class EmbeddingModel(Protocol):
    """What every evaluator needs: `make_jax.load(...)` returns one, and so can a test double.

    - `preprocess(pil_image) -> (H, W, 3) float32` (any fixed shape the encoder accepts);
    - `encode_image(array (B, H, W, 3)) -> (B, E)`;
    - `encode_text(list[str]) -> (M, E)`.

    Optional attributes: `batch_size` (images per encode_image call), `text_batch_size`. Embeddings are
    L2-normalised again by the evaluators (a no-op for make_jax's encoders), so similarities are cosines.
    """

    def preprocess(self, image: Image.Image) -> Any: ...

    def encode_image(self, images: Any) -> Any: ...

    def encode_text(self, texts: Sequence[str]) -> Any: ...


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, np.float32(1e-12))


def encode_texts(encoder: Any, texts: Sequence[str], *, progress: bool = False, desc: str = "texts",
                 chunk: int | None = None) -> tuple[np.ndarray, float]:
    """(M, E) L2-normalised float32 embeddings of `texts` and the seconds spent, `chunk` texts per call
    (default: the encoder's text_batch_size, else 256) so a progress bar can follow long lists."""
    from tqdm.auto import tqdm

    texts = list(texts)
    chunk = int(chunk or getattr(encoder, "text_batch_size", 256) or 256)
    t0 = time.perf_counter()
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="txt", disable=not progress or len(texts) <= chunk,
              leave=False) as bar:
        for a in range(0, len(texts), chunk):
            part = texts[a:a + chunk]
            parts.append(np.asarray(encoder.encode_text(part), np.float32))
            bar.update(len(part))
    if not parts:
        raise ValueError("no texts to encode")
    return l2n(np.concatenate(parts)), time.perf_counter() - t0


def skipped_block(bad, lines: Sequence[int] | None = None, limit: int = 1000) -> dict:
    """{"count", "files": [{"path", "reason", "index", "line"}...]} for the JSON results."""
    files = []
    for b in bad[:limit]:
        d = b.to_dict()
        if lines is not None and 0 <= b.index < len(lines):
            d["line"] = int(lines[b.index])
        files.append(d)
    out = {"count": len(bad), "files": files}
    if len(bad) > limit:
        out["files_truncated"] = True
    return out


def skipped_lines(r: dict, shown: int = 5) -> str:
    """Table lines naming the first skipped images of a result ("" if none)."""
    sk = r.get("skipped_images") or {}
    if not sk.get("count"):
        return ""
    lines = [f"  skipped {sk['count']} unreadable image(s) (all listed in the JSON):"]
    for f in sk["files"][:shown]:
        where = f" (line {f['line']})" if "line" in f else ""
        lines.append(f"    {f['path']}{where}: {f['reason']}")
    if sk["count"] > shown:
        lines.append(f"    ... and {sk['count'] - shown} more")
    return "\n" + "\n".join(lines)


def to_jsonable(x: Any) -> Any:
    """numpy → Python, NaN / inf → None (strict JSON), Paths → str, recursively."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if hasattr(x, "__fspath__"):
        return str(x)
    return x
