"""Writers for the public layouts SynthDerm imitates: rows, CSV files, image files.

- MAKE training CSV (`MAKE_COLUMNS`, the column order of tests/golden/MAKE_training_example.csv);
- Derm1M-release-like table (`make_jax.data.schema.DERM1M_COLUMNS`: caption + metadata, knowledge only where "extracted");
- zero-shot `filename,label` CSV and class-name JSON;
- SkinCon `meta.csv` (`ImageID` + one 0/1 column per concept) and `concept_list.txt`;
- retrieval `filename,caption` CSV (SkinCAP-like).

CSV files are written with the csv module, comma-separated, minimal quoting, "\\n" line ends (as the MAKE CSV).
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib

import numpy as np

from make_jax.data import schema
from make_jax.knowledge import aspects
from . import vocab

# The MAKE training CSV's column order (tests/golden/MAKE_training_example.csv): the Derm1M columns with the
# knowledge columns of make_jax.records.csv_io.MAKE_OUTPUT_COLUMNS placed as the released CSV has them.
_CONCEPTS_END = schema.DERM1M_COLUMNS.index("skin_concept_standarized") + 1
MAKE_COLUMNS: tuple[str, ...] = (
    *schema.DERM1M_COLUMNS[:_CONCEPTS_END],
    "augmented_caption",
    *schema.DERM1M_COLUMNS[_CONCEPTS_END:],
    "visual_concept_caption",
    "ontology_caption",
    "sub_captions",
    *(f"subcaption_{i}" for i in range(1, schema.NUM_SUBTEXTS + 1)),
    "sub_caption_mask",
    "knowledge_masks",
)

NO_BODY = "No body location information"
NO_SYMPTOM = "No symptom information"
NO_AGE = "No age information"
NO_GENDER = "No gender information"

# The raw slot is the truncated caption: its first sentences, at most NUM_SUBTEXTS of them and at most this many
# words (about what fits CLIP's 77 tokens), at least one sentence.
TRUNCATE_WORDS = 65


def mask_str(bits) -> str:
    """[1, 0, 1] → "[1, 0, 1]" (the Python-list strings of the MAKE CSV)."""
    return "[" + ", ".join(str(int(b)) for b in bits) + "]"


def truncate_sentences(sentences: list[str]) -> list[str]:
    out: list[str] = []
    words = 0
    for s in sentences[: schema.NUM_SUBTEXTS]:
        n = len(s.split())
        if out and words + n > TRUNCATE_WORDS:
            break
        out.append(s)
        words += n
    return out


def concept_list_text(keys: list[str]) -> str:
    """Standardised concept names, comma-separated, or aspects.NO_CONCEPTS."""
    names = [vocab.CONCEPT_BY_KEY[k].name for k in keys]
    return ", ".join(names) if names else aspects.NO_CONCEPTS


def metadata(case: dict, mentions: dict) -> dict:
    """Derm1M metadata columns, filled only with what the caption says (as text extraction would)."""
    return {
        "body_location": case["site"] if mentions["site"] else NO_BODY,
        "symptoms": ", ".join(mentions["symptoms"]) if mentions["symptoms"] else NO_SYMPTOM,
        "age": mentions["age"] or NO_AGE,
        "gender": case["gender"] if mentions["gender"] else NO_GENDER,
    }


def make_row(filename: str, case: dict, cap: dict, has_disease: bool, has_concepts: bool) -> dict:
    """One MAKE training-CSV row; knowledge from the ground truth through make_jax.knowledge.aspects."""
    sentences = cap["sentences"]
    kept = truncate_sentences(sentences)
    caption = ". ".join(sentences) + "."
    truncated = ". ".join(kept) + "."
    ontology = case["ontology"] if has_disease else ""
    concepts = concept_list_text(case["concepts"] if has_concepts else [])
    d_text = aspects.disease_text(ontology)
    c_text = aspects.concept_text(concepts)
    row = {
        "filename": filename,
        "caption": caption,
        "truncated_caption": truncated,
        "source": case["source"],
        "source_type": case["source_type"],
        "standardized_disease": case["disease"] if has_disease else "",
        "ontology_final": ontology,
        "skin_concept_standarized": concepts,
        "augmented_caption": aspects.dagger_text(truncated, d_text, c_text),
        **metadata(case, cap["mentions"]),
        "visual_concept_caption": c_text,
        "ontology_caption": d_text,
        "sub_captions": str(len(kept)),
    }
    for i in range(schema.NUM_SUBTEXTS):
        row[f"subcaption_{i + 1}"] = kept[i] if i < len(kept) else ""
    row["sub_caption_mask"] = mask_str([i < len(kept) for i in range(schema.NUM_SUBTEXTS)])
    row["knowledge_masks"] = mask_str([1, bool(d_text), bool(c_text)])
    return row


def derm1m_row(make: dict, case: dict, cap: dict, release_disease: bool) -> dict:
    """Derm1M-release-like row: the caption, its metadata, the disease only where known to the release
    (`release_disease`), the concepts only as extracted from the caption (empty → "No visual concepts")."""
    m = cap["mentions"]
    row = {k: make[k] for k in schema.DERM1M_COLUMNS if k in make}
    row["standardized_disease"] = make["standardized_disease"] if release_disease else ""
    row["ontology_final"] = make["ontology_final"] if release_disease else ""
    row["skin_concept_standarized"] = concept_list_text(m["concepts"])
    return row


def write_csv(path: str, columns, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])


def write_lines(path: str, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


# ------------------------------------------------------------------------------------------------ images


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """8-bit RGB PNG with the 'Up' filter on every row. Small, dependency-free and byte-stable (Pillow's
    encoder chooses filters adaptively), and about twice as fast as Pillow's at compress_level 1."""
    h, w, c = img.shape
    assert c == 3 and img.dtype == np.uint8
    rows = img.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG requires
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


def encode_image(img: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return encode_png(img)
    if fmt in ("jpg", "jpeg"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        return buf.getvalue()
    raise ValueError(f"unknown image format {fmt!r} (png or jpg)")


def save_image(path: str, img: np.ndarray, fmt: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_image(img, fmt))
