"""Cross-modal retrieval (SkinCAP; docs/evaluation.md): Recall@K both ways, mean and median rank, over the whole set.

Image→text: an image's query is a hit at K if ANY of its captions is among the K most similar captions.
Text→image: a caption's only positive is its own image. Captions of images that could not be read are dropped
(and counted) so that every remaining caption has its image in the gallery.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from make_jax.evaluate import metrics as M
from make_jax.evaluate.common import encode_texts, l2n, skipped_block, skipped_lines
from make_jax.evaluate.datasets import RetrievalSet, read_retrieval_csv
from make_jax.evaluate.images import encode_image_files
from make_jax.evaluate.registry import register

__all__ = ["DEFAULT_KS", "evaluate_retrieval", "format_retrieval", "run"]

DEFAULT_KS = (1, 5, 10, 50, 100)


def evaluate_retrieval(encoder: Any, rset: RetrievalSet, *, ks: Sequence[int] = DEFAULT_KS,
                       workers: int | None = None, progress: bool = True, strict: bool = False) -> dict:
    enc = encode_image_files(encoder, rset.paths, workers=workers, progress=progress, desc="retrieval images",
                             strict=strict)
    img = l2n(enc.embeddings)
    new_index = np.full(len(rset), -1, np.int64)
    new_index[enc.indices] = np.arange(len(enc.indices))
    keep = new_index[rset.text_to_image] >= 0
    captions = [c for c, k in zip(rset.captions, keep) if k]
    t2i = new_index[rset.text_to_image[keep]]
    txt, text_s = encode_texts(encoder, captions, progress=progress, desc="captions")
    m = M.retrieval_metrics(img, txt, t2i, ks)
    per_image = np.bincount(t2i, minlength=len(enc.indices))
    return {
        "task": "retrieval",
        "dataset": {"csv": str(rset.csv_path), "image_root": str(rset.image_root), "caption_column":
                    rset.caption_column, "images": len(rset), "captions": len(rset.captions),
                    "evaluated_images": int(len(enc.indices)), "evaluated_captions": len(captions),
                    "captions_dropped_with_their_image": int((~keep).sum()),
                    "captions_per_image": {"min": int(per_image.min()), "max": int(per_image.max()),
                                           "mean": float(per_image.mean())}},
        "skipped_images": skipped_block(enc.bad),
        "metrics": {"image_to_text": m["image_to_text"], "text_to_image": m["text_to_image"]},
        "prompts": {"captions": "from the CSV column " + repr(rset.caption_column)},
        "timing": {**enc.timing(), "text_seconds": text_s},
    }


def format_retrieval(r: dict) -> str:
    d, m = r["dataset"], r["metrics"]

    def row(x):
        rs = "  ".join(f"{k} {v:.4f}" for k, v in x.items() if k.startswith("R@"))
        return f"{rs}  meanR {x['mean_rank']:.1f}  medR {x['median_rank']:.1f}"

    return (f"retrieval {r.get('name') or d['csv']}: {d['evaluated_images']} images, {d['evaluated_captions']} captions"
            + (f" | skipped {r['skipped_images']['count']}" if r["skipped_images"]["count"] else "")
            + f"\n  image→text {row(m['image_to_text'])}\n  text→image {row(m['text_to_image'])}"
            + skipped_lines(r))


def headline_retrieval(r: dict) -> dict:
    m = r["metrics"]
    return {"i2t_R@10": m["image_to_text"].get("R@10"), "t2i_R@10": m["text_to_image"].get("R@10")}


@register("retrieval", summary="image↔text retrieval: CSV filename,caption (several captions per image allowed)",
          table=format_retrieval, headline=headline_retrieval)
def run(encoder: Any, *, csv: str, image_root: str | None = None, caption_column: str | None = None,
        filename_column: str = "filename", ks: Sequence[int] = DEFAULT_KS, workers: int | None = None,
        progress: bool = True, strict: bool = False) -> dict:
    """image↔text retrieval: R@K both ways, mean and median rank."""
    rset = read_retrieval_csv(csv, image_root, caption_column, filename_column)
    return evaluate_retrieval(encoder, rset, ks=tuple(ks), workers=workers, progress=progress, strict=strict)
