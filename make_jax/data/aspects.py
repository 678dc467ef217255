"""The text slots of one training image and the aspect-text templates (spec §1).

Slot order is fixed: 0 raw caption, 1 disease aspect, 2 concept aspect, 3..10 subtexts 1..8. The templates are
the ones visible in the MAKE training CSV (tests/golden/MAKE_training_example.csv): the disease text is built from
the ontology path (`ontology_final`), the concept text from the standardised concept list
(`skin_concept_standarized`); subtexts are the caption's sentences without their final full stop.
"""

from __future__ import annotations

NUM_SUBTEXTS = 8
NUM_KNOWLEDGE = 3
NUM_SLOTS = NUM_KNOWLEDGE + NUM_SUBTEXTS  # N = K + 3 = 11

SLOT_RAW, SLOT_DISEASE, SLOT_CONCEPT = 0, 1, 2
FIRST_SUBTEXT_SLOT = 3

# Marker the Derm1M table uses for "no concepts"; the CSV then has an empty concept text and mask 0.
NO_CONCEPTS = "No visual concepts"


def disease_text(ontology_path: str) -> str:
    """'inflammatory, dermatitis' → 'This is a skin photo diagnosed as inflammatory, dermatitis.' ('' if empty)."""
    path = ontology_path.strip().rstrip(".")
    return f"This is a skin photo diagnosed as {path}." if path else ""


def concept_text(concepts: str) -> str:
    """'erythema, scale' → 'This skin photo shows erythema, scale.' ('' if empty or 'No visual concepts')."""
    concepts = concepts.strip().rstrip(".")
    if not concepts or concepts == NO_CONCEPTS:
        return ""
    return f"This skin photo shows {concepts}."


def dagger_text(raw: str, disease: str, concept: str) -> str:
    """Derm1M† text: the raw caption with the valid aspect texts appended (the knowledge-augmented baselines).

    Matches the CSV's `augmented_caption` column, which joins with no space after the caption's full stop and
    writes the concept sentence as "The skin photo shows ...".
    """
    parts = [raw.strip()]
    if disease:
        parts.append(disease)
    if concept:
        parts.append(concept.replace("This skin photo shows", "The skin photo shows", 1))
    return "".join(parts)
