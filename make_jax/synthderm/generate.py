"""Generate a SynthDerm dataset directory (see docs/synthderm.md for the layout).

Determinism: item i of split s is drawn from numpy SeedSequence([seed, code(s), i]) alone (its case, caption,
knowledge gaps and image), and the label plan of a split from [seed, 100 + code(s)]; outputs are written in
index order. The same seed therefore gives byte-identical files whatever the number of workers, and the splits
never share an image.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np

from make_jax.data import schema

from . import captions, layouts, vocab
from .cases import sample_case
from .draw import draw_case

VERSION = 1
SPLIT_CODES = {"train": 1, "val": 2, "zeroshot": 3, "concepts": 4, "retrieval": 5}
OUTPUT_ENTRIES = ("synthderm.json", "make", "zeroshot", "skincon", "retrieval", "groundtruth")


@dataclass(frozen=True)
class SynthDermConfig:
    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    num_zeroshot: int = 320
    num_concepts: int = 320
    num_retrieval: int = 200
    captions_per_image: int = 1  # retrieval captions per image
    image_size: int = 96
    image_format: str = "png"  # png | jpg
    # knowledge gaps of the MAKE CSV, among rows whose caption does not state the aspect
    p_no_disease: float = 0.06
    p_no_concepts: float = 0.2
    # the Derm1M-like release knows the disease of a row whose caption does not name it with this probability
    p_release_disease_unmentioned: float = 0.45

    def __post_init__(self):
        for name in ("num_train", "num_val", "num_zeroshot", "num_concepts", "num_retrieval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {self.captions_per_image}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        for name in ("p_no_disease", "p_no_concepts", "p_release_disease_unmentioned"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------ planning


def allocate(n: int, weights, rng: np.random.Generator) -> np.ndarray:
    """n labels in proportion to `weights` (largest remainder; every class at least once when n ≥ classes),
    in random order."""
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    k = len(w)
    counts = np.floor(n * w).astype(np.int64)
    if n >= k:
        counts = np.maximum(counts, 1)
    while counts.sum() > n:  # the minimum of 1 can overshoot: take from the largest
        counts[int(np.argmax(counts))] -= 1
    frac = n * w - counts + 1e-9 * rng.random(k)  # ties broken at random
    for i in np.argsort(-frac, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(k), counts)
    return rng.permutation(labels)


def _label_plan(cfg: SynthDermConfig, split: str, n: int) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 100 + SPLIT_CODES[split]])
    if split in ("train", "val"):
        weights = [d.prevalence for d in vocab.DISEASES]
    else:
        weights = [1.0] * len(vocab.DISEASES)
    return allocate(n, weights, rng)


PREFIX = {"train": "train", "val": "val", "zeroshot": "zs", "concepts": "sc", "retrieval": "rt"}


def _relpath(split: str, index: int, fmt: str) -> tuple[str, str]:
    """(path relative to the output root, filename as the layout's CSV names it)."""
    ext = "jpg" if fmt in ("jpg", "jpeg") else "png"
    name = f"{PREFIX[split]}_{index:06d}.{ext}"
    if split in ("train", "val"):
        return f"make/images/{split}/{name}", f"images/{split}/{name}"
    if split == "zeroshot":
        return f"zeroshot/images/{name}", f"images/{name}"
    if split == "concepts":
        return f"skincon/final_images/{name}", name
    return f"retrieval/images/{name}", f"images/{name}"


# ------------------------------------------------------------------------------------------------ one item


def make_item(cfg: SynthDermConfig, split: str, index: int, label: int, out_dir: str | None) -> dict:
    """Draw item `index` of `split` (its case, captions, knowledge gaps, image); write the image when out_dir is
    given. Returns its ground truth and the layout fields."""
    ss = np.random.SeedSequence([cfg.seed, SPLIT_CODES[split], index])
    case_rng, cap_rng, know_rng, desc_rng = (np.random.default_rng(s) for s in ss.spawn(4))
    case = sample_case(case_rng, int(label))
    path, filename = _relpath(split, index, cfg.image_format)
    item = {"split": split, "index": index, "path": path, "filename": filename, "case": case}
    if split in ("train", "val"):
        cap = captions.write_caption(case, cap_rng)
        m = cap["mentions"]
        u = know_rng.random(3)
        item["caption"] = cap
        item["has_disease"] = bool(m["disease"] or u[0] >= cfg.p_no_disease)
        item["has_concepts"] = bool(m["concepts"] or u[1] >= cfg.p_no_concepts)
        item["release_disease"] = bool(
            item["has_disease"] and (m["disease"] or u[2] < cfg.p_release_disease_unmentioned)
        )
    elif split == "retrieval":
        item["descriptions"] = [captions.write_description(case, desc_rng) for _ in range(cfg.captions_per_image)]
    if out_dir is not None:
        img = draw_case(case, cfg.image_size)
        layouts.save_image(os.path.join(out_dir, path), img, cfg.image_format)
    return item


def _work(args):
    return make_item(*args)


# ------------------------------------------------------------------------------------------------ writers


def _write_split_outputs(out: str, cfg: SynthDermConfig, split: str, items: list[dict]) -> None:
    gt_path = os.path.join(out, "groundtruth", f"{split}.jsonl")
    with open(gt_path, "w", encoding="utf-8", newline="\n") as f:
        for it in items:
            f.write(json.dumps(it, sort_keys=True, separators=(",", ":")) + "\n")

    if split in ("train", "val"):
        make_rows, release_rows = [], []
        for it in items:
            row = layouts.make_row(it["filename"], it["case"], it["caption"], it["has_disease"], it["has_concepts"])
            make_rows.append(row)
            release_rows.append(layouts.derm1m_row(row, it["case"], it["caption"], it["release_disease"]))
        layouts.write_csv(os.path.join(out, "make", f"{split}.csv"), layouts.MAKE_COLUMNS, make_rows)
        name = "Derm1M_v2_pretrain.csv" if split == "train" else "Derm1M_v2_validation.csv"
        layouts.write_csv(os.path.join(out, "make", name), schema.DERM1M_COLUMNS, release_rows)
        if split == "train":
            layouts.write_csv(
                os.path.join(out, "make", "concept.csv"),
                ("filename", "skin_concept_standarized"),
                (
                    {"filename": r["filename"], "skin_concept_standarized": r["skin_concept_standarized"]}
                    for r in release_rows
                ),
            )
    elif split == "zeroshot":
        layouts.write_csv(
            os.path.join(out, "zeroshot", "test.csv"),
            ("filename", "label"),
            ({"filename": it["filename"], "label": it["case"]["label"]} for it in items),
        )
    elif split == "concepts":
        rows = []
        present = {k: 0 for k in vocab.CONCEPT_KEYS}
        for it in items:
            row = {"ImageID": it["filename"]}
            for k in vocab.CONCEPT_KEYS:
                row[k] = int(k in it["case"]["concepts"])
                present[k] += row[k]
            rows.append(row)
        layouts.write_csv(os.path.join(out, "skincon", "meta.csv"), ("ImageID",) + vocab.CONCEPT_KEYS, rows)
        # like SkinCon's list: the concepts that can be scored (at least one positive and one negative image)
        usable = [k for k in vocab.CONCEPT_KEYS if 0 < present[k] < len(items)]
        layouts.write_lines(os.path.join(out, "skincon", "concept_list.txt"), usable)
    elif split == "retrieval":
        rows = [{"filename": it["filename"], "caption": d} for it in items for d in it["descriptions"]]
        layouts.write_csv(os.path.join(out, "retrieval", "retrieval.csv"), ("filename", "caption"), rows)


def manifest(cfg: SynthDermConfig) -> dict:
    return {
        "generator": "make_jax.synthderm",
        "version": VERSION,
        "config": asdict(cfg),
        "classnames": list(vocab.CLASSNAMES),
        "ontology": {d.name: d.ontology for d in vocab.DISEASES},
        "concepts": {c.key: {"name": c.name, "kind": c.kind} for c in vocab.CONCEPTS},
        "layouts": {
            "make": {
                "image_root": "make",
                "train_csv": "make/train.csv",
                "val_csv": "make/val.csv",
                "derm1m_pretrain_csv": "make/Derm1M_v2_pretrain.csv",
                "derm1m_validation_csv": "make/Derm1M_v2_validation.csv",
                "derm1m_concept_csv": "make/concept.csv",
                "derm1m_ontology_json": "make/ontology.json",
            },
            "zeroshot": {
                "image_root": "zeroshot",
                "csv": "zeroshot/test.csv",
                "classnames": "zeroshot/classnames.json",
            },
            "skincon": {
                "dir": "skincon",
                "image_dir": "skincon/final_images",
                "meta_csv": "skincon/meta.csv",
                "concept_list": "skincon/concept_list.txt",
            },
            "retrieval": {"image_root": "retrieval", "csv": "retrieval/retrieval.csv"},
            "groundtruth": {s: f"groundtruth/{s}.jsonl" for s in SPLIT_CODES},
        },
    }


def generate(
    out_dir: str,
    cfg: SynthDermConfig = SynthDermConfig(),
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the dataset under out_dir; returns the manifest (also written to out_dir/synthderm.json)."""
    if cfg.image_format not in ("png", "jpg"):
        raise ValueError("image_format must be 'png' or 'jpg'")
    if cfg.image_size < 16:
        raise ValueError("image_size must be at least 16")
    os.makedirs(out_dir, exist_ok=True)
    existing = [e for e in OUTPUT_ENTRIES if os.path.exists(os.path.join(out_dir, e))]
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds SynthDerm output ({', '.join(existing)}); pass overwrite=True / --overwrite"
            )
        for e in existing:
            p = os.path.join(out_dir, e)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    for d in (
        "make/images/train",
        "make/images/val",
        "zeroshot/images",
        "skincon/final_images",
        "retrieval/images",
        "groundtruth",
    ):
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)

    counts = {
        "train": cfg.num_train,
        "val": cfg.num_val,
        "zeroshot": cfg.num_zeroshot,
        "concepts": cfg.num_concepts,
        "retrieval": cfg.num_retrieval,
    }
    jobs = []
    for split, n in counts.items():
        labels = _label_plan(cfg, split, n)
        jobs.extend((cfg, split, i, int(labels[i]), out_dir) for i in range(n))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="SynthDerm", unit="img")
    results: dict[str, list[dict]] = {s: [] for s in counts}
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # safe in processes that already run threads (e.g. JAX)
        with ctx.Pool(workers) as pool:
            for it in pool.imap(_work, jobs, chunksize=32):
                results[it["split"]].append(it)
                if bar is not None:
                    bar.update(1)
            pool.close()
            pool.join()
    else:
        for job in jobs:
            it = _work(job)
            results[it["split"]].append(it)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    for split, items in results.items():
        _write_split_outputs(out_dir, cfg, split, items)
    with open(os.path.join(out_dir, "make", "ontology.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(vocab.ontology_tree(), f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "zeroshot", "classnames.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(
            {
                "source": "SynthDerm (make_jax.synthderm), synthetic",
                "dataset": "SynthDerm zero-shot",
                "num_classes": len(vocab.CLASSNAMES),
                "note": "label index i in the eval CSV = position i in this list",
                "classnames": list(vocab.CLASSNAMES),
            },
            f,
            indent=1,
        )
        f.write("\n")
    man = manifest(cfg)
    with open(os.path.join(out_dir, "synthderm.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(man, f, indent=1, sort_keys=True)
        f.write("\n")
    return man
