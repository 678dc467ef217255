"""Embeddings out (`--task embed`): image (optionally patch) and text embeddings written with their names.

Inputs: images from a folder (`images`, optionally recursive) or a CSV (`csv`, its `filename_column`, relative to
`image_root` or the CSV's folder); texts from a file (`texts_file`: one per line, or a CSV with `text_column`)
or given directly (`texts`).

Output (`embeddings`):

- `OUT.npz`: `filenames` (N,), `image` (N, E) float32, `patches` (N, P, E) float16 with `with_patches` (float16
  halves a file that is 196× larger than `image`), `texts` (M,), `text` (M, E) — every row L2-normalised;
- any other OUT (a directory): `image.npy`, `patches.npy`, `text.npy` and the indexes `images.csv`
  (`row,filename`) and `texts.csv` (`row,text`).

Large sets are encoded in chunks of `chunk` images, each saved to `OUT.parts/` as soon as it is done; a rerun
with the same inputs skips the chunks already there (resumable), and the parts are merged and deleted at the
end. Unreadable images are left out and listed in the result (with `strict`, the first one stops the run).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from make_jax.evaluate.common import skipped_block
from make_jax.evaluate.datasets import DatasetError, read_csv_table
from make_jax.evaluate.images import BadImage, iter_decoded
from make_jax.evaluate.registry import register

__all__ = ["read_embeddings", "run"]


def _image_list(images, csv_path, image_root, filename_column, recursive) -> tuple[list[str], list[Path]]:
    """(names as written out, paths)."""
    if images and csv_path:
        raise DatasetError("embed: give --images (a folder) or --csv, not both")
    if csv_path:
        t = read_csv_table(csv_path, (filename_column,), what="embed CSV")
        root = Path(image_root) if image_root else t.path.parent
        names = [r[filename_column].strip() for r in t.rows]
        for n, line in zip(names, t.lines):
            if not n:
                raise DatasetError(f"embed CSV {t.path}, line {line}: empty {filename_column!r}")
        return names, [root / n for n in names]
    if images:
        from make_jax.evaluate.infer import list_images

        paths = list_images(images, recursive=recursive)
        base = Path(images) if Path(images).is_dir() else Path(images).parent
        return [str(p.relative_to(base)) for p in paths], paths
    return [], []


def _text_list(texts, texts_file, text_column) -> list[str]:
    if texts and texts_file:
        raise DatasetError("embed: give --texts or --texts-file, not both")
    if texts_file:
        p = Path(texts_file)
        if p.suffix.lower() == ".csv":
            t = read_csv_table(p, (text_column,), what="embed texts CSV")
            return [r[text_column] for r in t.rows]
        if not p.is_file():
            raise DatasetError(f"embed texts file {p}: file not found")
        return [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [texts] if isinstance(texts, str) else list(texts or [])


def _save_dir(out: Path, names, image, patches, texts, text) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image.npy", image)
    if patches is not None:
        np.save(out / "patches.npy", patches)
    np.save(out / "text.npy", text)
    for fname, col, rows in (("images.csv", "filename", names), ("texts.csv", "text", texts)):
        with open(out / fname, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", col])
            w.writerows(enumerate(rows))


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """What `embed` wrote, in the .npz form (filenames, image, [patches], texts, text), from either layout."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    out = {"image": np.load(path / "image.npy"), "text": np.load(path / "text.npy")}
    if (path / "patches.npy").is_file():
        out["patches"] = np.load(path / "patches.npy")
    for fname, key in (("images.csv", "filenames"), ("texts.csv", "texts")):
        with open(path / fname, newline="", encoding="utf-8") as f:
            out[key] = np.asarray([r[1] for r in list(csv.reader(f))[1:]])
    return out


@register("embed", summary="image / patch / text embeddings with their names to .npz or .npy + CSV index",
          table=lambda r: (f"embed: {r['images']} images ({r['skipped_images']['count']} skipped), {r['texts']} "
                           f"texts → {r['embeddings']} (chunks: {r['chunks_done']} encoded now, "
                           f"{r['chunks_resumed']} resumed)"))
def run(encoder: Any, *, embeddings: str, images: str | None = None, csv: str | None = None,
        image_root: str | None = None, filename_column: str = "filename", recursive: bool = False,
        texts: Sequence[str] | None = None, texts_file: str | None = None, text_column: str = "text",
        with_patches: bool = False, chunk: int = 1024, workers: int | None = None, progress: bool = True,
        strict: bool = False) -> dict:
    """embeddings of a folder or CSV of images and/or texts, written to `embeddings` (.npz or a directory)."""
    if chunk < 1:
        raise ValueError(f"embed: chunk must be ≥ 1, got {chunk}")
    names, paths = _image_list(images, csv, image_root, filename_column, recursive)
    text_list = _text_list(texts, texts_file, text_column)
    if not names and not text_list:
        raise DatasetError("embed: nothing to embed (give --images, --csv, --texts or --texts-file)")
    out = Path(embeddings)
    parts = out.parent / f"{out.name}.parts"
    # The parts belong to one input list: a different list (or patch setting) starts over instead of mixing.
    key = hashlib.sha256(json.dumps([names, with_patches, chunk]).encode()).hexdigest()[:16]
    if parts.is_dir() and (parts / "key").is_file() and (parts / "key").read_text() != key:
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "key").write_text(key)
    e = encoder.embed_dim
    done = resumed = 0
    n_chunks = len(range(0, len(paths), chunk))
    bad_all = []
    for c, start in enumerate(range(0, len(paths), chunk)):
        f = parts / f"part-{c:05d}.npz"
        if f.is_file():
            resumed += 1
            continue
        sub = paths[start:start + chunk]
        ok, arrays, bad = [], [], []
        for i, arr, reason in iter_decoded([str(p) for p in sub], encoder.preprocess, workers=workers):
            if arr is None:
                if strict:
                    raise OSError(f"image {sub[i]} (item {start + i}): {reason}")
                bad.append(BadImage(start + i, str(sub[i]), reason).to_dict())
            else:
                ok.append(start + i)
                arrays.append(arr)
        x = np.stack(arrays) if arrays else np.zeros((0, encoder.image_size, encoder.image_size, 3), np.float32)
        if with_patches:  # image and patches from one pass of the tower
            img, pat = encoder.encode_image_and_patches(x)
            pat = pat.astype(np.float16)
        else:
            img, pat = encoder.encode_image(x), None
        if progress:
            print(f"embed: chunk {c + 1}/{n_chunks}, {start + len(sub)}/{len(paths)} images", flush=True)
        tmp = parts / f".part-{c:05d}.tmp.npz"
        np.savez(tmp, rows=np.asarray(ok, np.int64), image=np.asarray(img, np.float32),
                 bad=np.asarray(json.dumps(bad)), **({"patches": pat} if pat is not None else {}))
        tmp.replace(f)  # a chunk is either complete on disk or absent
        done += 1
    rows, imgs, pats = [], [], []
    for c in range(n_chunks):
        with np.load(parts / f"part-{c:05d}.npz", allow_pickle=False) as z:
            rows.append(z["rows"])
            imgs.append(z["image"])
            if with_patches:
                pats.append(z["patches"])
            bad_all.extend(json.loads(str(z["bad"])))
    rows = np.concatenate(rows) if rows else np.zeros((0,), np.int64)
    image = np.concatenate(imgs) if imgs else np.zeros((0, e), np.float32)
    patches = (np.concatenate([p for p in pats if p.size] or [np.zeros((0, 0, e), np.float16)])
               if with_patches else None)
    kept = [names[i] for i in rows]
    text = encoder.encode_text(text_list) if text_list else np.zeros((0, e), np.float32)
    if out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.stem}.tmp.npz"
        np.savez(tmp, filenames=np.asarray(kept), image=image, texts=np.asarray(text_list), text=text,
                 **({"patches": patches} if patches is not None else {}))
        tmp.replace(out)
    else:
        _save_dir(out, kept, image, patches, text_list, text)
    shutil.rmtree(parts)
    return {"task": "embed", "embeddings": str(out), "images": len(kept), "texts": len(text_list),
            "embed_dim": e, "with_patches": with_patches,
            "skipped_images": skipped_block([BadImage(**b) for b in bad_all]),
            "chunks_done": done, "chunks_resumed": resumed}
