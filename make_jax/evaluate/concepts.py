"""Concept annotation (SkinCon / Derm7pt; docs/evaluation.md), MONET's reference-prompt scoring as the MAKE code runs it.

For concept c with synonyms s_1..s_S and prompt pair k (template_k, reference_k), k = 1..K (six pairs):

    a_k = mean_s cos(image, template_k(s))      r_k = cos(image, reference_k)   (mean over its reference texts)
    p_k = softmax(scale · [a_k, r_k])[0]         score(image, c) = mean_k p_k

with scale = exp(4.5944) ≈ 98.94. AUROC of the scores against the 0/1 labels per concept, then the mean.
Concepts are matched to meta.csv columns and to the synonym table BY NAME (normalize_name), never by position;
a concept without a column, without synonyms, or without both a positive and a negative image is reported
under "excluded" and left out of the mean.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from make_jax.evaluate import metrics as M
from make_jax.evaluate.common import encode_texts, l2n, skipped_block, skipped_lines
from make_jax.evaluate.datasets import ConceptSet, normalize_name, read_concept_set
from make_jax.evaluate.images import encode_image_files
from make_jax.evaluate.presets import DEFAULT_CONCEPT_SCALE, load_concept_prompts, load_concept_terms
from make_jax.evaluate.registry import register

__all__ = ["concept_presence_scores", "concept_prompt_embeddings", "evaluate_concepts", "format_concepts",
           "lookup_synonyms", "run"]


def lookup_synonyms(concept: str, terms: Mapping[str, Sequence[str]]) -> tuple[str | None, list[str]]:
    """(key in `terms`, synonyms) for a concept name: exact key, then normalize_name; (None, []) if absent."""
    if concept in terms:
        return concept, list(terms[concept])
    norm = {normalize_name(k): k for k in terms}
    k = norm.get(normalize_name(concept))
    return (k, list(terms[k])) if k is not None else (None, [])


def concept_prompt_embeddings(encoder: Any, synonyms: Mapping[str, Sequence[str]], templates: Sequence[str],
                              references: Sequence[Sequence[str]], *, progress: bool = False
                              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({concept: (K, S, E) target embeddings}, (K, R, E) reference embeddings), all L2-normalised; one text
    encoding pass for every prompt. Reference lists must all have the same length R (1 in MAKE's)."""
    if len(templates) != len(references):
        raise ValueError(f"{len(templates)} templates but {len(references)} reference lists")
    r_len = {len(r) for r in references}
    if len(r_len) != 1:
        raise ValueError(f"reference lists must have equal lengths, got {sorted(r_len)}")
    texts: list[str] = [ref for refs in references for ref in refs]
    spans = {}
    for c, syns in synonyms.items():
        start = len(texts)
        texts += [t.format(s) for t in templates for s in syns]
        spans[c] = (start, len(syns))
    emb, _ = encode_texts(encoder, texts, progress=progress, desc="concept prompts")
    k, r = len(templates), r_len.pop()
    ref = emb[: k * r].reshape(k, r, -1)
    targets = {c: emb[a:a + k * s].reshape(k, s, -1) for c, (a, s) in spans.items()}
    return targets, ref


def concept_presence_scores(image_emb: np.ndarray, target_emb: np.ndarray, ref_emb: np.ndarray,
                            scale: float = DEFAULT_CONCEPT_SCALE) -> np.ndarray:
    """(N,) presence scores. image_emb (N, E) and the (K, S, E) / (K, R, E) prompt embeddings, L2-normalised."""
    img = np.asarray(image_emb, np.float64)
    a = np.einsum("kse,ne->kn", np.asarray(target_emb, np.float64), img) / target_emb.shape[1]  # mean over synonyms
    r = np.einsum("kre,ne->kn", np.asarray(ref_emb, np.float64), img) / ref_emb.shape[1]
    # softmax([scale·a, scale·r])[0] = sigmoid(scale·(a − r)), computed stably
    z = scale * (a - r)
    p = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
    return p.mean(axis=0)


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the columns of scores (N, C) / binary labels (N, C) that have positives and negatives (NaN if
    none has both)."""
    aucs = [M.auroc(labels[:, j], scores[:, j]) for j in range(scores.shape[1])
            if 0 < labels[:, j].sum() < labels.shape[0]]
    return float(np.mean(aucs)) if aucs else float("nan")


def evaluate_concepts(encoder: Any, cset: ConceptSet, terms: Mapping[str, Sequence[str]] | None = None,
                      prompts: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None, *,
                      scale: float = DEFAULT_CONCEPT_SCALE, workers: int | None = None, progress: bool = True,
                      strict: bool = False, save_scores: bool = False, bootstrap: int = 0,
                      bootstrap_seed: int = 0) -> dict:
    terms = load_concept_terms() if terms is None else terms
    templates, references = load_concept_prompts() if prompts is None else prompts
    excluded = [{"concept": c, "reason": f"no column named {c!r} in {cset.meta_path.name}"} for c in cset.unmatched]
    synonyms: dict[str, list[str]] = {}
    term_keys: dict[str, str] = {}
    for c in cset.concepts:
        key, syns = lookup_synonyms(c, terms)
        if not syns:
            excluded.append({"concept": c, "reason": "no synonyms in the concept-terms table"})
        else:
            synonyms[c] = syns
            term_keys[c] = key
    enc = encode_image_files(encoder, cset.paths, workers=workers, progress=progress, desc="concept images",
                             strict=strict)
    img = l2n(enc.embeddings)
    labels = cset.labels[enc.indices]
    col_of = dict(zip(cset.concepts, range(len(cset.concepts))))
    scored = {}
    for c in list(synonyms):
        y = labels[:, col_of[c]]
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            excluded.append({"concept": c, "reason": f"needs positive and negative images; has {n_pos} positive of "
                                                     f"{len(y)}"})
            del synonyms[c]
    t0 = time.perf_counter()
    targets, ref = concept_prompt_embeddings(encoder, synonyms, templates, references, progress=progress) \
        if synonyms else ({}, None)
    text_s = time.perf_counter() - t0
    per = []
    for c in synonyms:
        j = col_of[c]
        s = concept_presence_scores(img, targets[c], ref, scale)
        y = labels[:, j]
        auc = M.auroc(y, s)
        scored[c] = s
        per.append({"concept": c, "column": cset.columns[j], "terms_key": term_keys[c], "synonyms": synonyms[c],
                    "positives": int(y.sum()), "negatives": int(len(y) - y.sum()), "auroc": auc})
    aucs = [p["auroc"] for p in per]
    result = {
        "task": "concepts",
        "dataset": {"dir": str(cset.root), "meta_csv": str(cset.meta_path), "image_dir": str(cset.image_dir),
                    "rows": len(cset), "evaluated": int(len(enc.indices)), "concepts_requested":
                        len(cset.concepts) + len(cset.unmatched)},
        "skipped_images": skipped_block(enc.bad, cset.lines),
        "metrics": {"mean_auroc": float(np.mean(aucs)) if aucs else float("nan"), "num_concepts": len(per),
                    "concepts_above_0.7": int(sum(a > 0.7 for a in aucs)), "per_concept": per},
        "excluded": excluded,
        "prompts": {"templates": list(templates), "references": [list(r) for r in references], "scale": scale},
        "timing": {**enc.timing(), "text_seconds": text_s},
    }
    if bootstrap and scored:
        from make_jax.evaluate.bootstrap import bootstrap_ci

        cols = list(scored)
        y_all = labels[:, [col_of[c] for c in cols]]
        result["ci95"] = bootstrap_ci(lambda s, y: {"mean_auroc": mean_auroc(s, y)}, y_all,
                                      np.stack([scored[c] for c in cols], axis=1), n=int(bootstrap),
                                      seed=int(bootstrap_seed))
        result["ci95_protocol"] = {"replicates": int(bootstrap), "seed": int(bootstrap_seed),
                                   "method": "percentile bootstrap over images; a replicate's mean AUROC is over "
                                             "the concepts that have positives and negatives in it"}
    if save_scores:
        result["scores"] = {"image_ids": [cset.image_ids[i] for i in enc.indices],
                            **{c: s.tolist() for c, s in scored.items()}}
    return result


def format_concepts(r: dict) -> str:
    m, d = r["metrics"], r["dataset"]
    mean = m["mean_auroc"]
    return (f"concepts {r.get('name') or d['dir']}: {d['evaluated']}/{d['rows']} images, {m['num_concepts']} concepts "
            f"scored ({len(r['excluded'])} excluded) | mean AUROC "
            f"{'n/a' if mean is None or mean != mean else f'{mean:.4f}'}  (>0.7: {m['concepts_above_0.7']})"
            + (f" | skipped {r['skipped_images']['count']}" if r["skipped_images"]["count"] else "")
            + "".join(f"\n  excluded {x['concept']!r}: {x['reason']}" for x in r["excluded"])
            + skipped_lines(r))


def headline_concepts(r: dict) -> dict:
    return {"mean_auroc": r["metrics"].get("mean_auroc"), "concepts": r["metrics"].get("num_concepts")}


@register("concepts", summary="concept annotation AUROC on a SkinCon / Derm7pt-layout directory",
          table=format_concepts, headline=headline_concepts)
def run(encoder: Any, *, data_dir: str, meta: str = "meta.csv", image_dir: str = "final_images",
        concept_list: Any = "concept_list.txt", concept_terms: str | None = None, concept_prompts: str | None = None,
        id_column: str = "ImageID", scale: float = DEFAULT_CONCEPT_SCALE, workers: int | None = None,
        progress: bool = True, strict: bool = False, save_scores: bool = False, bootstrap: int = 0,
        bootstrap_seed: int = 0) -> dict:
    """concept annotation: AUROC per concept (reference-prompt scoring) and the mean."""
    if isinstance(concept_list, str) and concept_list.lower() in ("all", "*", "none", ""):
        concept_list = None
    cset = read_concept_set(data_dir, meta, image_dir, concept_list, id_column)
    return evaluate_concepts(encoder, cset, load_concept_terms(concept_terms), load_concept_prompts(concept_prompts),
                             scale=scale, workers=workers, progress=progress, strict=strict, save_scores=save_scores,
                             bootstrap=bootstrap, bootstrap_seed=bootstrap_seed)
