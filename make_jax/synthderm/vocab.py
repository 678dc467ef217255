"""SynthDerm vocabulary: visual concepts, diseases as probabilistic concept combinations, sites, symptoms.

Everything here is plain data; the sites, symptoms and diseases are read from
make_jax/resources/synthderm_vocab.json. Concept keys are the spelling of the keys of
make_jax/resources/ConceptTerms.json (so the SkinCon-layout `meta.csv` columns and `concept_list.txt` match the
concept-annotation synonyms); each concept also has a Derm1M-style standardised `name` (what
`skin_concept_standarized` lists) and the words the caption writer may use for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

# --------------------------------------------------------------------------------------------------------------
# Concepts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    key: str  # ConceptTerms.json key; SkinCon meta.csv column
    name: str  # Derm1M-style standardised term (skin_concept_standarized)
    kind: str  # "colour" | "morphology" | "secondary"
    adjectives: tuple[str, ...] = ()  # caption words used before a noun ("erythematous plaque")
    nouns: tuple[str, ...] = ()  # singular nouns ("plaque"); plural is built by _plural
    phrases: tuple[str, ...] = ()  # "with ..." phrases (secondary changes)


CONCEPTS: tuple[Concept, ...] = (
    # colours
    Concept("erythema", "erythema", "colour", ("erythematous", "red", "reddish", "red", "inflamed"), ("erythema",)),
    Concept("pink", "pink", "colour", ("pink", "pinkish", "pearly pink")),
    Concept(
        "brown(hyperpigmentation)", "hyperpigmentation", "colour", ("brown", "hyperpigmented", "tan", "dark brown")
    ),
    Concept(
        "white(hypopigmentation)",
        "hypopigmentation",
        "colour",
        ("white", "depigmented", "hypopigmented", "milky white"),
    ),
    Concept("purple", "purple", "colour", ("purple", "violaceous", "purplish")),
    Concept("yellow", "yellow", "colour", ("yellow", "yellowish", "yellow-orange")),
    Concept("black", "black", "colour", ("black", "blue-black", "jet-black")),
    # primary morphology
    Concept("macule", "macule", "morphology", ("macular",), ("macule", "flat spot", "macule")),
    Concept("patch", "patch", "morphology", ("patchy",), ("patch",)),
    Concept("papule", "papule", "morphology", ("papular",), ("papule", "bump", "papule", "small raised bump")),
    Concept("plaque", "plaque", "morphology", ("plaque-like",), ("plaque",)),
    Concept("nodule", "nodule", "morphology", ("nodular",), ("nodule", "lump", "nodule")),
    Concept("vesicle", "vesicle", "morphology", ("vesicular", "fluid-filled"), ("vesicle", "blister", "vesicle")),
    Concept("pustule", "pustule", "morphology", ("pustular", "pus-filled"), ("pustule", "pus bump", "pustule")),
    Concept("ulcer", "ulcer", "morphology", ("ulcerated",), ("ulcer", "ulceration", "open sore")),
    # secondary changes
    Concept(
        "scale",
        "scale",
        "secondary",
        ("scaly", "flaky", "scaling"),
        ("scale",),
        (
            "with scale",
            "with fine scale",
            "with silvery scale",
            "with overlying scaling",
            "with flaking",
            "with scales",
        ),
    ),
    Concept(
        "crust",
        "crust",
        "secondary",
        ("crusted", "crusty"),
        ("crust",),
        ("with crusting", "with crusts", "with yellow-brown crusts", "covered by crusts", "with scabbing"),
    ),
    Concept(
        "telangiectasia",
        "telangiectasia",
        "secondary",
        (),
        ("telangiectasia",),
        (
            "with telangiectasia",
            "with fine surface vessels",
            "with visible small blood vessels",
            "with telangiectasias",
        ),
    ),
)
CONCEPT_BY_KEY: dict[str, Concept] = {c.key: c for c in CONCEPTS}
CONCEPT_KEYS: tuple[str, ...] = tuple(c.key for c in CONCEPTS)
COLOURS: tuple[str, ...] = tuple(c.key for c in CONCEPTS if c.kind == "colour")
MORPHOLOGIES: tuple[str, ...] = tuple(c.key for c in CONCEPTS if c.kind == "morphology")
SECONDARIES: tuple[str, ...] = tuple(c.key for c in CONCEPTS if c.kind == "secondary")

# Lesion colours (RGB 0..255) on the lightest and on the darkest skin; interpolated by skin lightness.
COLOUR_RGB: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "erythema": ((214.0, 78.0, 78.0), (122.0, 34.0, 34.0)),
    "pink": ((238.0, 156.0, 164.0), (176.0, 98.0, 104.0)),
    "brown(hyperpigmentation)": ((138.0, 88.0, 54.0), (42.0, 25.0, 16.0)),
    "white(hypopigmentation)": ((252.0, 247.0, 242.0), (226.0, 214.0, 204.0)),
    "purple": ((128.0, 66.0, 134.0), (82.0, 38.0, 88.0)),
    "yellow": ((236.0, 204.0, 96.0), (204.0, 170.0, 66.0)),
    "black": ((34.0, 27.0, 30.0), (18.0, 14.0, 15.0)),
}

# Primary types the drawer knows. "base" is a diffuse colour field with no morphology label (e.g. the
# erythematous base under zoster vesicles). Radius ranges are in units of the image side.
TYPE_RADIUS: dict[str, tuple[float, float]] = {
    "base": (0.28, 0.45),
    "macule": (0.035, 0.09),
    "patch": (0.16, 0.34),
    "papule": (0.03, 0.065),
    "plaque": (0.16, 0.34),
    "nodule": (0.11, 0.22),
    "vesicle": (0.022, 0.042),
    "pustule": (0.025, 0.048),
    "ulcer": (0.13, 0.28),
}
SMALL_TYPES = frozenset({"macule", "papule", "vesicle", "pustule"})

DISTRIBUTIONS = ("single", "clustered", "scattered")
SHAPES = ("round", "oval", "irregular", "annular")
BORDERS = ("well-defined", "ill-defined")

# Fitzpatrick-like base skin tones (RGB), type I..VI.
SKIN_TONES: tuple[tuple[float, float, float], ...] = (
    (246.0, 221.0, 204.0),
    (236.0, 198.0, 172.0),
    (212.0, 168.0, 134.0),
    (178.0, 130.0, 94.0),
    (132.0, 90.0, 62.0),
    (90.0, 59.0, 42.0),
)
SKIN_TONE_WEIGHTS = (0.14, 0.24, 0.22, 0.18, 0.13, 0.09)
ROMAN = ("I", "II", "III", "IV", "V", "VI")

# --------------------------------------------------------------------------------------------------------------
# Sites and symptoms
# --------------------------------------------------------------------------------------------------------------

# site -> (phrases used in captions, hair density 0..1); symptom -> caption phrases (completing "The lesion is
# ..." / "Patient reports ..."). Both are data, read from VOCAB_FILE below.
SITES: dict[str, tuple[tuple[str, ...], float]]
SYMPTOMS: dict[str, tuple[str, ...]]

SOURCES: tuple[tuple[str, str, float], ...] = (
    # (source, source_type, weight)
    ("textbook_english", "knowledge", 0.34),
    ("pubmed", "knowledge", 0.24),
    ("youtube", "education", 0.14),
    ("forum", "social", 0.16),
    ("public_dataset", "dataset", 0.12),
)

# --------------------------------------------------------------------------------------------------------------
# Diseases
# --------------------------------------------------------------------------------------------------------------

P = dict[str, float]


@dataclass(frozen=True)
class ComponentRecipe:
    """One group of lesions: a primary type, its colour(s), arrangement and secondary changes, all random."""

    types: P  # type -> probability (keys of TYPE_RADIUS)
    colours: dict[tuple[str, ...], float]  # a colour set -> probability; () = skin-coloured / type-coloured
    distribution: P = field(default_factory=lambda: {"single": 1.0})
    shape: P = field(default_factory=lambda: {"round": 0.5, "oval": 0.5})
    border: P = field(default_factory=lambda: {"well-defined": 1.0})
    secondary: P = field(default_factory=dict)  # independent probabilities of scale / crust / telangiectasia
    presence: float = 1.0  # probability the component is drawn at all
    size: tuple[float, float] = (0.0, 1.0)  # quantile window inside the type's radius range
    anchor: bool = False  # centred on the previous component's lesions (e.g. ulcer inside a nodule)


@dataclass(frozen=True)
class Disease:
    name: str  # standardized_disease; zero-shot class name
    ontology: str  # ontology_final: the hierarchy path ending with the disease
    synonyms: tuple[str, ...]  # how captions name it
    components: tuple[ComponentRecipe, ...]
    sites: P
    symptoms: P  # independent probabilities
    age: tuple[int, int]
    prevalence: float = 1.0  # relative frequency in the training split
    durations: tuple[str, ...] = ("two weeks", "three months", "one year")


# The words of the vocabulary that are data, not code: sites, symptoms and diseases (one entry per Disease, fields
# left out take the dataclass defaults, in the order that fixes the class labels).
VOCAB_FILE = "synthderm_vocab.json"  # in make_jax/resources


def _recipe(entry: dict) -> ComponentRecipe:
    """A component of a disease entry: colour sets are written "a+b" ("" = skin- or type-coloured)."""
    colours = {tuple(k.split("+")) if k else (): p for k, p in entry["colours"].items()}
    size = {"size": tuple(entry["size"])} if "size" in entry else {}
    return ComponentRecipe(**{**entry, "colours": colours, **size})


def _disease(entry: dict) -> Disease:
    tuples = {k: tuple(entry[k]) for k in ("synonyms", "age", "durations") if k in entry}
    return Disease(**{**entry, **tuples, "components": tuple(_recipe(c) for c in entry["components"])})


def _load_vocab() -> tuple[dict, dict, tuple[Disease, ...]]:
    data = json.loads(resources.files("make_jax.resources").joinpath(VOCAB_FILE).read_text(encoding="utf-8"))
    sites = {k: (tuple(v["phrases"]), v["hair"]) for k, v in data["sites"].items()}
    symptoms = {k: tuple(v) for k, v in data["symptoms"].items()}
    return sites, symptoms, tuple(_disease(entry) for entry in data["diseases"])


SITES, SYMPTOMS, DISEASES = _load_vocab()
DISEASE_BY_NAME: dict[str, Disease] = {d.name: d for d in DISEASES}
CLASSNAMES: tuple[str, ...] = tuple(d.name for d in DISEASES)


def ontology_tree() -> dict:
    """The disease hierarchy as nested dicts (the `ontology.json` of the Derm1M-like release)."""
    tree: dict = {}
    for d in DISEASES:
        node = tree
        for part in (p.strip() for p in d.ontology.split(",")):
            node = node.setdefault(part, {})
    return tree


IRRELEVANT_SENTENCES: tuple[str, ...] = (
    "Image courtesy of the department of dermatology",
    "Figure 3",
    "See the text for details",
    "Photo taken with a phone camera",
    "Thanks for looking",
    "Clinical photograph",
    "Note the ruler for scale",
    "Reproduced with permission",
    "The photo was taken in natural light",
    "Sorry for the blurry picture",
    "Case courtesy of a colleague",
    "Follow-up visit",
)
