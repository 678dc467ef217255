"""SynthDerm vocabulary: visual concepts, diseases as probabilistic concept combinations, sites, symptoms.

Everything here is plain data. Concept keys are the spelling of the keys of make_jax/resources/ConceptTerms.json
(so the SkinCon-layout `meta.csv` columns and `concept_list.txt` match the concept-annotation synonyms); each
concept also has a Derm1M-style standardised `name` (what `skin_concept_standarized` lists) and the words the
caption writer may use for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

# site -> (phrases used in captions, hair density 0..1)
SITES: dict[str, tuple[tuple[str, ...], float]] = {
    "elbow": (("on the elbow", "over the extensor elbow", "on the elbows"), 0.2),
    "knee": (("on the knee", "over the knees", "on the extensor surface of the knee"), 0.3),
    "scalp": (("on the scalp", "in the scalp", "along the hairline"), 1.0),
    "lower back": (("on the lower back", "over the lumbar area"), 0.15),
    "shin": (("on the shin", "on the anterior lower leg"), 0.5),
    "trunk": (("on the trunk", "on the torso"), 0.2),
    "antecubital fossa": (("in the antecubital fossa", "in the elbow creases", "in the antecubital fossae"), 0.1),
    "popliteal fossa": (("in the popliteal fossa", "behind the knees"), 0.2),
    "neck": (("on the neck", "on the side of the neck"), 0.1),
    "face": (("on the face",), 0.1),
    "hand": (("on the hand", "on the back of the hand", "on the dorsal hand"), 0.2),
    "wrist": (("on the wrist", "on the flexor wrist", "on the inner wrists"), 0.15),
    "ankle": (("on the ankle", "around the ankle"), 0.3),
    "cheek": (("on the cheek", "on both cheeks"), 0.05),
    "back": (("on the back", "on the upper back"), 0.15),
    "chest": (("on the chest", "on the anterior chest"), 0.35),
    "groin": (("in the groin", "in the inguinal fold"), 0.4),
    "thigh": (("on the thigh", "on the inner thigh"), 0.45),
    "arm": (("on the arm", "on the upper arm", "on the forearm"), 0.55),
    "perioral": (("around the mouth", "on the perioral skin"), 0.05),
    "nose": (("on the nose", "on the nasal tip", "on the side of the nose"), 0.02),
    "chin": (("on the chin",), 0.2),
    "lower leg": (("on the lower leg", "on the calf"), 0.5),
    "flank": (("on the flank", "along the flank"), 0.1),
    "forehead": (("on the forehead",), 0.02),
    "ear": (("on the ear", "on the helix of the ear"), 0.02),
    "eyelid": (("on the upper eyelid", "on the eyelids", "near the inner canthus"), 0.0),
    "abdomen": (("on the abdomen",), 0.3),
    "foot": (("on the foot", "on the dorsum of the foot"), 0.2),
    "buttock": (("on the buttock", "on the buttocks"), 0.1),
    "temple": (("on the temple",), 0.1),
}

# symptom -> caption phrases (completing "The lesion is ..." / "Patient reports ...")
SYMPTOMS: dict[str, tuple[str, ...]] = {
    "itching": ("itchy", "pruritic", "intensely itchy"),
    "pain": ("painful", "tender", "sore"),
    "burning": ("burning", "associated with a burning sensation"),
    "bleeding": ("bleeding on contact", "prone to bleeding"),
    "swelling": ("swollen", "associated with swelling"),
    "asymptomatic": ("asymptomatic", "not itchy or painful"),
}

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


_SCATTER = {"single": 0.2, "clustered": 0.35, "scattered": 0.45}

DISEASES: tuple[Disease, ...] = (
    Disease(
        "psoriasis",
        "inflammatory, non-infectious, psoriasis",
        ("psoriasis", "plaque psoriasis", "psoriasis vulgaris"),
        (
            ComponentRecipe(
                {"plaque": 0.85, "papule": 0.15},
                {("erythema",): 0.85, ("pink",): 0.15},
                {"single": 0.35, "clustered": 0.3, "scattered": 0.35},
                {"round": 0.4, "oval": 0.4, "irregular": 0.2},
                {"well-defined": 0.92, "ill-defined": 0.08},
                {"scale": 0.92, "crust": 0.05},
            ),
        ),
        {"elbow": 0.25, "knee": 0.22, "scalp": 0.15, "lower back": 0.15, "shin": 0.12, "trunk": 0.11},
        {"itching": 0.45, "burning": 0.05, "asymptomatic": 0.2},
        (15, 75),
        1.3,
        ("several months", "many years", "two years", "a few weeks"),
    ),
    Disease(
        "atopic dermatitis",
        "inflammatory, non-infectious, atopic dermatitis, dermatitis",
        ("atopic dermatitis", "eczema", "atopic eczema"),
        (
            ComponentRecipe(
                {"base": 0.5, "patch": 0.3, "plaque": 0.2},
                {("erythema",): 0.9, ("erythema", "brown(hyperpigmentation)"): 0.1},
                {"single": 1.0},
                {"oval": 0.4, "irregular": 0.6},
                {"ill-defined": 0.9, "well-defined": 0.1},
                {"scale": 0.5, "crust": 0.35},
            ),
            ComponentRecipe(
                {"papule": 1.0},
                {("erythema",): 1.0},
                {"clustered": 0.5, "scattered": 0.5},
                {"round": 1.0},
                {"ill-defined": 0.6, "well-defined": 0.4},
                {"crust": 0.15},
                presence=0.45,
            ),
        ),
        {"antecubital fossa": 0.25, "popliteal fossa": 0.2, "neck": 0.15, "face": 0.15, "hand": 0.15, "wrist": 0.1},
        {"itching": 0.9, "pain": 0.05},
        (1, 30),
        1.3,
        ("several years", "several months", "a few weeks", "many years"),
    ),
    Disease(
        "lichen planus",
        "inflammatory, non-infectious, lichen planus",
        ("lichen planus",),
        (
            ComponentRecipe(
                {"papule": 0.6, "plaque": 0.4},
                {("purple",): 1.0},
                {"clustered": 0.5, "scattered": 0.4, "single": 0.1},
                {"round": 0.3, "oval": 0.3, "irregular": 0.4},
                {"well-defined": 1.0},
                {"scale": 0.3},
            ),
        ),
        {"wrist": 0.35, "shin": 0.25, "ankle": 0.15, "lower back": 0.1, "arm": 0.15},
        {"itching": 0.8},
        (30, 65),
        0.9,
        ("two months", "several weeks", "half a year"),
    ),
    Disease(
        "acne vulgaris",
        "inflammatory, non-infectious, acne, acne vulgaris",
        ("acne vulgaris", "acne", "inflammatory acne"),
        (
            ComponentRecipe(
                {"papule": 1.0},
                {("erythema",): 1.0},
                {"scattered": 0.7, "clustered": 0.3},
                {"round": 1.0},
                {"well-defined": 0.6, "ill-defined": 0.4},
                {"crust": 0.1},
            ),
            ComponentRecipe(
                {"pustule": 1.0},
                {("erythema",): 1.0},
                {"scattered": 0.7, "clustered": 0.3},
                {"round": 1.0},
                presence=0.75,
            ),
        ),
        {"face": 0.3, "cheek": 0.2, "forehead": 0.1, "back": 0.25, "chest": 0.15},
        {"pain": 0.25, "itching": 0.05},
        (12, 30),
        1.2,
        ("one year", "two years", "several months"),
    ),
    Disease(
        "leukocytoclastic vasculitis",
        "vascular, vasculitis, leukocytoclastic vasculitis",
        ("leukocytoclastic vasculitis", "cutaneous small-vessel vasculitis", "vasculitis"),
        (
            ComponentRecipe(
                {"papule": 0.6, "macule": 0.4},
                {("purple",): 0.8, ("purple", "erythema"): 0.2},
                {"scattered": 0.8, "clustered": 0.2},
                {"round": 1.0},
                {"well-defined": 0.7, "ill-defined": 0.3},
                {"crust": 0.1},
            ),
        ),
        {"lower leg": 0.6, "ankle": 0.2, "thigh": 0.1, "buttock": 0.1},
        {"pain": 0.3, "burning": 0.2, "asymptomatic": 0.3},
        (20, 80),
        0.8,
        ("a few days", "one week", "two weeks"),
    ),
    Disease(
        "tinea corporis",
        "infectious, fungal, tinea, tinea corporis",
        ("tinea corporis", "ringworm", "tinea", "dermatophyte infection"),
        (
            ComponentRecipe(
                {"plaque": 0.7, "patch": 0.3},
                {("erythema",): 0.9, ("pink",): 0.1},
                {"single": 0.5, "clustered": 0.3, "scattered": 0.2},
                {"annular": 0.85, "oval": 0.15},
                {"well-defined": 0.85, "ill-defined": 0.15},
                {"scale": 0.85},
            ),
        ),
        {"trunk": 0.3, "groin": 0.2, "thigh": 0.15, "arm": 0.2, "neck": 0.15},
        {"itching": 0.7},
        (5, 70),
        1.0,
        ("three weeks", "one month", "two months"),
    ),
    Disease(
        "impetigo",
        "infectious, bacterial, impetigo",
        ("impetigo", "impetigo contagiosa"),
        (
            ComponentRecipe(
                {"patch": 0.55, "plaque": 0.45},
                {("erythema",): 1.0},
                {"single": 0.5, "clustered": 0.5},
                {"irregular": 0.6, "oval": 0.4},
                {"ill-defined": 0.6, "well-defined": 0.4},
                {"crust": 0.95},
            ),
            ComponentRecipe(
                {"vesicle": 0.5, "pustule": 0.5},
                {(): 1.0},
                {"clustered": 1.0},
                {"round": 1.0},
                presence=0.35,
            ),
        ),
        {"perioral": 0.35, "nose": 0.25, "chin": 0.15, "hand": 0.15, "lower leg": 0.1},
        {"itching": 0.4, "pain": 0.1},
        (2, 12),
        0.9,
        ("four days", "one week", "ten days"),
    ),
    Disease(
        "herpes zoster",
        "infectious, viral, herpes zoster",
        ("herpes zoster", "shingles", "zoster"),
        (
            ComponentRecipe(
                {"base": 1.0},
                {("erythema",): 1.0},
                {"single": 1.0},
                {"oval": 1.0},
                {"ill-defined": 1.0},
                presence=0.9,
            ),
            ComponentRecipe(
                {"vesicle": 1.0},
                {(): 1.0},
                {"clustered": 1.0},
                {"round": 1.0},
                {"well-defined": 1.0},
                {"crust": 0.3},
            ),
            ComponentRecipe({"pustule": 1.0}, {(): 1.0}, {"clustered": 1.0}, {"round": 1.0}, presence=0.1),
        ),
        {"trunk": 0.4, "back": 0.25, "face": 0.15, "flank": 0.2},
        {"pain": 0.85, "burning": 0.5, "itching": 0.2},
        (50, 85),
        0.9,
        ("three days", "five days", "one week"),
    ),
    Disease(
        "vitiligo",
        "pigmentary, hypopigmentation, vitiligo",
        ("vitiligo",),
        (
            ComponentRecipe(
                {"macule": 0.4, "patch": 0.6},
                {("white(hypopigmentation)",): 1.0},
                {"single": 0.4, "clustered": 0.3, "scattered": 0.3},
                {"irregular": 0.5, "oval": 0.3, "round": 0.2},
                {"well-defined": 0.9, "ill-defined": 0.1},
            ),
        ),
        {"hand": 0.3, "face": 0.25, "elbow": 0.1, "knee": 0.1, "foot": 0.1, "trunk": 0.15},
        {"asymptomatic": 0.7},
        (8, 60),
        1.0,
        ("one year", "several years", "six months"),
    ),
    Disease(
        "melanocytic nevus",
        "neoplastic, benign, melanocytic, melanocytic nevus",
        ("melanocytic nevus", "nevus", "mole", "benign nevus"),
        (
            ComponentRecipe(
                {"macule": 0.5, "papule": 0.5},
                {("brown(hyperpigmentation)",): 1.0},
                {"single": 0.85, "scattered": 0.15},
                {"round": 0.7, "oval": 0.3},
                {"well-defined": 0.95, "ill-defined": 0.05},
                size=(0.4, 1.0),
            ),
        ),
        {"back": 0.3, "chest": 0.2, "arm": 0.2, "face": 0.15, "lower leg": 0.15},
        {"asymptomatic": 0.8, "itching": 0.05},
        (5, 60),
        1.1,
        ("many years", "several years", "decades"),
    ),
    Disease(
        "seborrheic keratosis",
        "neoplastic, benign, keratinocytic, seborrheic keratosis",
        ("seborrheic keratosis", "seborrhoeic keratosis", "basal cell papilloma"),
        (
            ComponentRecipe(
                {"plaque": 0.7, "papule": 0.3},
                {("brown(hyperpigmentation)",): 0.7, ("brown(hyperpigmentation)", "black"): 0.15, ("yellow",): 0.15},
                {"single": 0.6, "scattered": 0.4},
                {"oval": 0.5, "round": 0.3, "irregular": 0.2},
                {"well-defined": 1.0},
                {"scale": 0.55, "crust": 0.1},
                size=(0.0, 0.6),
            ),
        ),
        {"back": 0.35, "chest": 0.25, "face": 0.15, "temple": 0.1, "abdomen": 0.15},
        {"itching": 0.2, "asymptomatic": 0.5},
        (50, 85),
        1.0,
        ("several years", "a few years", "one year"),
    ),
    Disease(
        "actinic keratosis",
        "neoplastic, premalignant, keratinocytic, actinic keratosis",
        ("actinic keratosis", "solar keratosis"),
        (
            ComponentRecipe(
                {"macule": 0.4, "papule": 0.6},
                {("erythema",): 0.7, ("pink",): 0.3},
                {"single": 0.4, "scattered": 0.6},
                {"round": 0.4, "irregular": 0.6},
                {"ill-defined": 0.6, "well-defined": 0.4},
                {"scale": 0.9, "crust": 0.15},
            ),
        ),
        {"face": 0.3, "scalp": 0.2, "forehead": 0.15, "hand": 0.2, "ear": 0.15},
        {"pain": 0.2, "asymptomatic": 0.5},
        (55, 90),
        1.0,
        ("several months", "a year", "many months"),
    ),
    Disease(
        "basal cell carcinoma",
        "neoplastic, malignant, keratinocytic, basal cell carcinoma",
        ("basal cell carcinoma", "BCC", "nodular basal cell carcinoma"),
        (
            ComponentRecipe(
                {"papule": 0.35, "nodule": 0.65},
                {("pink",): 0.75, ("pink", "brown(hyperpigmentation)"): 0.1, ("erythema",): 0.15},
                {"single": 1.0},
                {"round": 0.6, "oval": 0.4},
                {"well-defined": 0.9, "ill-defined": 0.1},
                {"telangiectasia": 0.75, "crust": 0.15},
                size=(0.5, 1.0),
            ),
            ComponentRecipe({"ulcer": 1.0}, {(): 1.0}, {"single": 1.0}, {"round": 1.0}, presence=0.3, anchor=True),
        ),
        {"nose": 0.3, "cheek": 0.2, "forehead": 0.15, "ear": 0.1, "neck": 0.1, "back": 0.15},
        {"bleeding": 0.3, "asymptomatic": 0.5},
        (50, 90),
        1.0,
        ("one year", "several months", "two years"),
    ),
    Disease(
        "melanoma",
        "neoplastic, malignant, melanocytic, melanoma",
        ("melanoma", "malignant melanoma", "superficial spreading melanoma"),
        (
            ComponentRecipe(
                {"macule": 0.3, "plaque": 0.45, "nodule": 0.25},
                {
                    ("brown(hyperpigmentation)", "black"): 0.8,
                    ("black",): 0.12,
                    ("brown(hyperpigmentation)", "black", "erythema"): 0.08,
                },
                {"single": 1.0},
                {"irregular": 0.9, "oval": 0.1},
                {"ill-defined": 0.5, "well-defined": 0.5},
                {"crust": 0.1},
                size=(0.5, 1.0),
            ),
            ComponentRecipe({"ulcer": 1.0}, {(): 1.0}, {"single": 1.0}, {"round": 1.0}, presence=0.1, anchor=True),
        ),
        {"back": 0.35, "lower leg": 0.25, "arm": 0.15, "chest": 0.15, "face": 0.1},
        {"itching": 0.15, "bleeding": 0.2, "asymptomatic": 0.4},
        (30, 85),
        0.9,
        ("a few months", "six months", "one year"),
    ),
    Disease(
        "xanthelasma",
        "metabolic, xanthoma, xanthelasma",
        ("xanthelasma", "xanthelasma palpebrarum"),
        (
            ComponentRecipe(
                {"plaque": 0.7, "papule": 0.3},
                {("yellow",): 1.0},
                {"single": 0.6, "clustered": 0.4},
                {"oval": 1.0},
                {"well-defined": 1.0},
                size=(0.0, 0.5),
            ),
        ),
        {"eyelid": 1.0},
        {"asymptomatic": 0.9},
        (35, 75),
        0.7,
        ("one year", "several years", "a few months"),
    ),
    Disease(
        "venous ulcer",
        "vascular, venous insufficiency, venous ulcer",
        ("venous ulcer", "venous leg ulcer", "stasis ulcer"),
        (
            ComponentRecipe(
                {"base": 1.0},
                {("brown(hyperpigmentation)",): 0.5, ("erythema",): 0.5},
                {"single": 1.0},
                {"irregular": 1.0},
                {"ill-defined": 1.0},
                {"scale": 0.3},
                presence=0.9,
            ),
            ComponentRecipe(
                {"ulcer": 1.0},
                {("yellow",): 0.6, (): 0.4},
                {"single": 1.0},
                {"irregular": 0.6, "oval": 0.4},
                {"well-defined": 1.0},
                {"crust": 0.2},
            ),
        ),
        {"ankle": 0.5, "lower leg": 0.4, "foot": 0.1},
        {"pain": 0.6, "swelling": 0.4, "itching": 0.2},
        (55, 90),
        0.8,
        ("three months", "over a year", "six months"),
    ),
)
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
