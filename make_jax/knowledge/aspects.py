"""The aspect-text templates of the MAKE knowledge set (slot layout: ``make_jax.data.schema``).

The templates are
the ones visible in the MAKE training CSV (tests/golden/MAKE_training_example.csv): the disease text is built from
the ontology path (`ontology_final`), the concept text from the standardised concept list
(`skin_concept_standarized`); subtexts are the caption's sentences without their final full stop.
"""

from __future__ import annotations

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


DAGGER_ORDERS = ("append", "prepend")


def dagger_text(raw: str, disease: str, concept: str, order: str = "append") -> str:
    """Derm1M† text: the raw caption and the valid aspect texts in one (the knowledge-augmented baselines).

    `order` 'append' (default) puts the aspect texts after the caption, as the public CSV's `augmented_caption`
    column does (joined with no space after the caption's full stop, the concept sentence written "The skin photo
    shows ..."); 'prepend' puts them first, as the paper describes Derm1M†. With the 77-token cut the two differ:
    a long caption loses its aspect texts when they are appended, its own tail when they are prepended.
    """
    if order not in DAGGER_ORDERS:
        raise ValueError(f"dagger order must be one of {DAGGER_ORDERS}, got {order!r}")
    aspects = []
    if disease:
        aspects.append(disease)
    if concept:
        aspects.append(concept.replace("This skin photo shows", "The skin photo shows", 1))
    parts = [raw.strip()] + aspects if order == "append" else aspects + [raw.strip()]
    return "".join(parts)
