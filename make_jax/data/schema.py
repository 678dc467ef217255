"""The text-slot schema of one training image and the Derm1M metadata columns — defined here once.

Slot order is fixed (docs/objectives.md, "Text slots"): 0 raw caption, 1 disease aspect, 2 concept aspect,
3..10 subtexts 1..8 — ``N = K + 3 = 11`` slots. The losses, the records, the pipeline, the knowledge builder
and SynthDerm all read these constants from here.
"""

from __future__ import annotations

NUM_SUBTEXTS = 8  # K: sentences of the caption kept as subtexts
NUM_KNOWLEDGE = 3  # raw caption, disease aspect, concept aspect
NUM_SLOTS = NUM_KNOWLEDGE + NUM_SUBTEXTS  # N = K + 3 = 11

SLOT_RAW, SLOT_DISEASE, SLOT_CONCEPT = 0, 1, 2
FIRST_SUBTEXT = NUM_KNOWLEDGE

#: Human-readable slot names (conversion statistics, reject reports).
SLOT_NAMES: tuple[str, ...] = ("raw", "disease", "concept", *(f"subtext_{i}" for i in range(1, NUM_SUBTEXTS + 1)))

#: The metadata columns of a Derm1M release table (and of the MAKE training CSV, which adds the knowledge
#: columns of ``make_jax.records.csv_io.MAKE_OUTPUT_COLUMNS``), in the release's order.
DERM1M_COLUMNS: tuple[str, ...] = (
    "filename",
    "caption",
    "truncated_caption",
    "source",
    "source_type",
    "standardized_disease",
    "ontology_final",
    "skin_concept_standarized",
    "body_location",
    "symptoms",
    "age",
    "gender",
)
