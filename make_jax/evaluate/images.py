"""Parallel image decoding and batched encoding; missing or unreadable files are reported and skipped.

Images are decoded and preprocessed by a thread pool (PIL releases the GIL while decoding and resampling),
at most `prefetch` ahead of the consumer so memory stays bounded on large sets, and handed to the encoder in
batches of its fixed batch size (the load API pads and masks the last partial batch). While the accelerator
(or XLA's CPU threads) encode one batch, the pool decodes the next ones.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

FAIL_FAST_AFTER = 32  # if this many images in a row from the start are missing, stop: the image root is wrong

__all__ = ["BadImage", "EncodedImages", "decode_image", "default_workers", "encode_image_files", "iter_decoded"]


@dataclass(frozen=True)
class BadImage:
    index: int  # position in the dataset
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"index": self.index, "path": self.path, "reason": self.reason}


@dataclass
class EncodedImages:
    embeddings: np.ndarray  # (n_ok, E) float32, rows in dataset order of the readable images
    indices: np.ndarray  # (n_ok,) dataset positions of those rows
    bad: list[BadImage] = field(default_factory=list)
    seconds: float = 0.0  # wall time of decode + encode
    first_batch_seconds: float = 0.0  # up to the first batch's embeddings (includes compiling the encoder)
    first_batch_size: int = 0

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def steady_images_per_second(self) -> float:
        """Throughput after the first batch (no compilation, pipeline full); NaN with a single batch."""
        n, t = len(self.indices) - self.first_batch_size, self.seconds - self.first_batch_seconds
        return n / t if n > 0 and t > 0 else float("nan")

    def timing(self) -> dict:
        return {"image_seconds": self.seconds, "images_per_second": self.images_per_second,
                "first_batch_seconds": self.first_batch_seconds,
                "images_per_second_after_first_batch": self.steady_images_per_second}


def default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2)))


def decode_image(path: str | Path, transform: Callable[[Image.Image], Any]) -> np.ndarray:
    """Opens, fully decodes and transforms one image (errors propagate)."""
    with Image.open(path) as im:
        im.load()  # force decoding here, so a truncated file fails inside the worker
        return np.asarray(transform(im), np.float32)


def _describe(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, UnidentifiedImageError):
        return "not a readable image (PIL cannot identify the format)"
    return f"{type(e).__name__}: {e}"


def iter_decoded(paths: Sequence[str | Path], transform: Callable[[Image.Image], Any], workers: int | None = None,
                 prefetch: int = 256) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yields (index, array, None) or (index, None, reason) for each path, in order, decoding in parallel."""
    workers = workers or default_workers()

    def job(i):
        try:
            return i, decode_image(paths[i], transform), None
        except Exception as e:  # noqa: BLE001 - every failure of one file is reported, the run goes on
            return i, None, _describe(e)

    if workers <= 1:
        for i in range(len(paths)):
            yield job(i)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="make-eval-decode") as pool:
        pending: deque = deque()
        nxt = 0
        n = len(paths)
        while nxt < n and len(pending) < prefetch:
            pending.append(pool.submit(job, nxt))
            nxt += 1
        while pending:
            result = pending.popleft().result()
            if nxt < n:
                pending.append(pool.submit(job, nxt))
                nxt += 1
            yield result


def encode_image_files(encoder: Any, paths: Sequence[str | Path], *, batch_size: int | None = None,
                       workers: int | None = None, progress: bool = True, desc: str = "images",
                       strict: bool = False) -> EncodedImages:
    """Decodes `paths` with `encoder.preprocess` and encodes them with `encoder.encode_image`, `batch_size`
    (default: `encoder.batch_size`, else 32) at a time. Unreadable files are skipped and listed in `.bad`
    (with `strict`, the first one raises). Raises if no image at all could be read."""
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    bs = int(batch_size or getattr(encoder, "batch_size", 32) or 32)
    t0 = time.perf_counter()
    chunks: list[np.ndarray] = []
    ok: list[int] = []
    bad: list[BadImage] = []
    buf: list[np.ndarray] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    first = [0.0, 0]

    def flush():
        if buf:
            chunks.append(np.asarray(encoder.encode_image(np.stack(buf)), np.float32))
            if len(chunks) == 1:
                first[:] = [time.perf_counter() - t0, len(buf)]
            bar.update(len(buf))
            buf.clear()

    early = min(len(paths), FAIL_FAST_AFTER)
    try:
        for i, arr, reason in iter_decoded(paths, encoder.preprocess, workers=workers, prefetch=max(4 * bs, 64)):
            if arr is None:
                if strict:
                    raise OSError(f"image {paths[i]} (item {i}): {reason}")
                bad.append(BadImage(i, paths[i], reason))
                bar.update(1)
                if not ok and len(bad) == early and all(b.reason == "file not found" for b in bad):
                    raise FileNotFoundError(
                        f"the first {early} images are all missing (e.g. {paths[0]}); is the image root right "
                        "(--image-root; relative paths are resolved against the CSV's folder by default)?")
                continue
            buf.append(arr)
            ok.append(i)
            if len(buf) == bs:
                flush()
        flush()
    finally:
        bar.close()
    if not ok:
        shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:3])
        raise OSError(f"none of the {len(paths)} images could be read ({shown}{' ...' if len(bad) > 3 else ''})")
    emb = np.concatenate(chunks)
    return EncodedImages(emb, np.asarray(ok, np.int64), bad, time.perf_counter() - t0, first[0], first[1])
