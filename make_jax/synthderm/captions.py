"""Caption writers: Derm1M-like noisy captions and SkinCAP-like complete descriptions.

`write_caption(case, rng)` writes a caption in the voice of the case's source (textbook, PubMed figure legend,
YouTube narration, patient forum post, public-dataset label). Aspects are mentioned at random: the disease name
is often absent (forum posts rarely know it), concepts are said with synonyms ("erythematous", "red",
"scaly", "flaky") or not at all, and there is noise: irrelevant sentences, negations ("No ulceration is seen"),
a wrong diagnosis ("My doctor thought it was eczema"). So the standardised disease and concept texts built from
the ground truth often carry information the caption lacks, as in Derm1M. What the caption does say is returned
as `mentions`, from which the Derm1M-like metadata columns are filled.

Every sentence is free of internal full stops, so a caption splits into its sentences at ". " exactly.
"""

from __future__ import annotations

import numpy as np

from . import vocab

VOWELS = "aeiou"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _plural(noun: str) -> str:
    head, _, tail = noun.rpartition(" ")
    last = tail or head
    if last.endswith(("ch", "sh", "s", "x")):
        p = last + "es"
    else:
        p = last + "s"
    return (head + " " + p) if tail and head else p


def _article(next_word: str) -> str:
    return "an" if next_word[:1].lower() in VOWELS else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join_and(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


class _Mentions:
    def __init__(self):
        self.concepts: list[str] = []
        self.negated: list[str] = []
        self.disease = False
        self.wrong_disease: str | None = None
        self.site = False
        self.symptoms: list[str] = []
        self.age = ""  # the age as the caption states it: "45", "child", "elderly"; "" = not stated
        self.gender = False

    def concept(self, key: str):
        if key not in self.concepts:
            self.concepts.append(key)

    def as_dict(self) -> dict:
        order = {k: i for i, k in enumerate(vocab.CONCEPT_KEYS)}
        return {
            "concepts": sorted(self.concepts, key=order.__getitem__),
            "negated": sorted(self.negated, key=order.__getitem__),
            "disease": self.disease,
            "wrong_disease": self.wrong_disease,
            "site": self.site,
            "symptoms": list(self.symptoms),
            "age": self.age,
            "gender": self.gender,
        }


GENERIC_NOUNS = ("lesion", "spot", "area", "growth", "mark")
HISTORY_NOISE = (
    "The patient has no relevant medical history",
    "There is no family history of skin disease",
    "The lesion has been slowly enlarging",
    "Previous treatment with moisturisers did not help",
    "The patient works outdoors",
    "No medications were taken",
    "It gets worse in winter",
    "The patient is otherwise healthy",
)
SHAPE_WORDS = {
    "annular": ("annular", "ring-shaped"),
    "irregular": ("irregular", "irregularly shaped", "asymmetric"),
    "oval": ("oval",),
    "round": ("round",),
}
GENERIC_RASH = ("rash", "eruption", "lesions", "spots")


def morph_phrase(comp: dict, rng, m: _Mentions, p_colour=0.65, p_type=0.8, p_sec=0.7, p_count=1.0) -> tuple[str, bool]:
    """Noun phrase for one component, e.g. 'a well-demarcated erythematous plaque with silvery scale'.

    Returns (phrase, plural)."""
    t = comp["type"]
    plural = len(comp["blobs"]) > 1
    words: list[str] = []
    if comp["size_word"] and rng.random() < 0.35:
        words.append(comp["size_word"])
    if rng.random() < 0.35:
        words.append(
            _pick(rng, ("well-demarcated", "sharply defined", "well-circumscribed"))
            if comp["border"] == "well-defined"
            else _pick(rng, ("ill-defined", "poorly demarcated"))
        )
    shape_p = {"annular": 0.8, "irregular": 0.55, "oval": 0.3, "round": 0.2}[comp["shape"]]
    if rng.random() < shape_p:
        words.append(_pick(rng, SHAPE_WORDS[comp["shape"]]))
    colour_words = []
    for c in comp["colours"]:
        if rng.random() < p_colour:
            colour_words.append(_pick(rng, vocab.CONCEPT_BY_KEY[c].adjectives))
            m.concept(c)
    if colour_words:
        words.append(_join_and(list(dict.fromkeys(colour_words))))
    sec_after = []
    for k in comp["secondary"]:
        if rng.random() >= p_sec:
            continue
        cpt = vocab.CONCEPT_BY_KEY[k]
        m.concept(k)
        if cpt.adjectives and rng.random() < 0.4:
            words.append(_pick(rng, cpt.adjectives))
        else:
            sec_after.append(_pick(rng, cpt.phrases))

    if t == "base":
        noun = (
            _pick(rng, ("area", "background", "base", "patch of skin"))
            if colour_words
            else _pick(rng, ("area of inflamed skin", "inflamed area"))
        )
        plural = False
    elif rng.random() < p_type:
        cpt = vocab.CONCEPT_BY_KEY[t]
        m.concept(t)
        if rng.random() < 0.2 and cpt.adjectives:
            words.append(_pick(rng, cpt.adjectives))
            noun = _pick(rng, GENERIC_RASH if plural else GENERIC_NOUNS)
            if noun == "lesions" and not plural:
                noun = "lesion"
            if plural and not noun.endswith("s") and noun not in ("rash", "eruption"):
                noun = _plural(noun)
        else:
            noun = _pick(rng, cpt.nouns)
            noun = _plural(noun) if plural else noun
    else:
        noun = _pick(rng, GENERIC_RASH) if plural else _pick(rng, GENERIC_NOUNS)
    body = " ".join(words + [noun])
    if sec_after:
        body += " " + " and ".join(sec_after)
    if p_count and rng.random() < p_count:
        if comp["distribution"] == "single" or not plural:
            det = _pick(rng, ("a", "a solitary", "a single", "an isolated", "a"))
            if det in ("a", "an"):
                det = _article(body)
        elif comp["distribution"] == "clustered":
            det = _pick(rng, ("grouped", "a cluster of", "clustered", "several", "a group of"))
        else:
            det = _pick(rng, ("multiple", "numerous", "scattered", "multiple scattered", "many"))
        if noun in ("rash", "eruption") and det not in ("a", "an"):
            det = _article(body)
        body = det + " " + body
    elif not plural:
        body = _article(body) + " " + body
    return body, plural and noun not in ("rash", "eruption")


def _site_phrase(case, rng, m: _Mentions) -> str:
    m.site = True
    return _pick(rng, vocab.SITES[case["site"]][0])


def _disease_name(d: vocab.Disease, rng) -> str:
    return _pick(rng, d.synonyms)


def _person(case, rng, m: _Mentions) -> str:
    """'a 45-year-old woman' / 'an elderly man' / 'a child' (mentions age and gender as said)."""
    age, g = case["age"], case["gender"]
    noun = {"male": ("man", "boy"), "female": ("woman", "girl")}[g]
    if rng.random() < 0.7:
        m.age = str(age)
        m.gender = True
        who = noun[1] if age < 16 else noun[0]
        return (
            f"a {age}-year-old {who}" if age not in (8, 11, 18) and not 80 <= age <= 89 else f"an {age}-year-old {who}"
        )
    if age < 16:
        m.age = "child"
        return _pick(rng, ("a child", "a young child"))
    if age >= 65:
        m.age = "elderly"
        m.gender = True
        return "an elderly " + noun[0]
    m.gender = True
    return "a " + noun[0]


def _symptom_sentence(case, rng, m: _Mentions, first_person=False) -> str | None:
    syms = case["symptoms"]
    if not syms:
        return None
    said = [s for s in syms if rng.random() < 0.8] or syms[:1]
    m.symptoms.extend(s for s in said if s not in m.symptoms)
    adj = [_pick(rng, vocab.SYMPTOMS[s]) for s in said]
    if first_person:
        return _pick(rng, ("It is ", "It has been ", "The spot is ")) + _join_and(adj)
    return _pick(rng, ("The lesion is ", "The eruption is ", "The patient reports that it is ", "It is ")) + _join_and(
        adj
    )


def _distribution_sentence(comp, rng) -> str:
    return _pick(
        rng,
        {
            "single": ("There is a single lesion", "The lesion is solitary", "Only one lesion is present"),
            "clustered": (
                "The lesions are grouped together",
                "Lesions are arranged in a cluster",
                "They are clustered in one area",
            ),
            "scattered": (
                "The lesions are scattered",
                "Lesions are widely distributed",
                "Numerous lesions are scattered across the area",
            ),
        }[comp["distribution"]],
    )


def _size_sentence(comp, rng) -> str:
    mm = comp["diameter_mm"]
    if len(comp["blobs"]) > 1:
        lo, hi = max(1, int(mm * 0.7)), max(2, int(round(mm * 1.3)))
        return _pick(rng, (f"Individual lesions measure {lo} to {hi} mm", f"Each lesion is about {mm} mm across"))
    if mm >= 20 and rng.random() < 0.5:
        return f"The lesion measures about {mm // 10} cm"
    return _pick(
        rng, (f"The lesion measures about {mm} mm", f"It is approximately {mm} mm in diameter", f"Size about {mm} mm")
    )


def _negation(case, rng, m: _Mentions) -> str | None:
    absent = [k for k in ("ulcer", "scale", "crust", "vesicle", "pustule") if k not in case["concepts"]]
    if not absent:
        return None
    k = _pick(rng, absent)
    m.negated.append(k)
    return {
        "ulcer": "No ulceration is seen",
        "scale": "There is no scale",
        "crust": "There is no crusting",
        "vesicle": "No blisters are present",
        "pustule": "There are no pustules",
    }[k]


def _wrong_disease(case, rng) -> str:
    others = [d for d in vocab.DISEASES if d.name != case["disease"]]
    return _pick(rng, others).name


def _dedupe(sentences: list[str]) -> list[str]:
    out: list[str] = []
    for s in sentences:
        if s and s not in out:
            out.append(s)
    return out


def write_caption(case: dict, rng: np.random.Generator) -> dict:
    """Caption for a case: {'sentences': [...], 'caption': str, 'mentions': {...}}."""
    d = vocab.DISEASE_BY_NAME[case["disease"]]
    m = _Mentions()
    comps = [c for c in case["components"]]
    main = next((c for c in comps if c["type"] != "base"), comps[0])
    others = [c for c in comps if c is not main]
    src = case["source"]
    s: list[str] = []

    def morph_sentence(comp, site=True, **kw) -> str:
        phrase, plural = morph_phrase(comp, rng, m, **kw)
        plural = plural and not phrase.startswith(("a ", "an "))
        site_txt = (" " + _site_phrase(case, rng, m)) if site else ""
        form = int(rng.integers(5))
        if form == 0:
            return _cap(phrase) + site_txt
        if form == 1:
            return ("There are " if plural else "There is ") + phrase + site_txt
        if form == 2:
            return (
                _pick(rng, ("Examination revealed ", "Examination shows ", "Clinical examination showed "))
                + phrase
                + site_txt
            )
        if form == 3:
            return _cap(phrase) + site_txt + (" are seen" if plural else " is seen")
        return _pick(rng, ("The image shows ", "The photo shows ", "Note ")) + phrase + site_txt

    def other_sentences(p: float):
        for c in others:
            if rng.random() < p:
                phrase, plural = morph_phrase(c, rng, m, p_count=0.8)
                if c["type"] == "base":
                    s.append(_pick(rng, ("On ", "Surrounded by ", "Over ")) + phrase)
                elif c.get("anchored"):
                    s.append("With " + phrase + _pick(rng, (" in the centre", " centrally", "")))
                else:
                    plural = plural and not phrase.startswith(("a ", "an "))
                    s.append(("There are also " if plural else "There is also ") + phrase)

    if src == "public_dataset":
        r = rng.random()
        if r < 0.45:
            m.disease = True
            s.append(_cap(_disease_name(d, rng)))
        elif r < 0.7:
            m.disease = True
            s.append(
                _pick(rng, ("Clinical image of ", "Clinical photograph of ", "Image of "))
                + _disease_name(d, rng)
                + " "
                + _site_phrase(case, rng, m)
            )
        elif r < 0.85:
            s.append(_pick(rng, ("Skin lesion ", "Lesion ", "Rash ")) + _site_phrase(case, rng, m))
        else:
            s.append(morph_sentence(main, site=rng.random() < 0.5))
    elif src == "textbook_english":
        title = rng.random() < 0.55
        if title:
            m.disease = True
            name = _cap(_disease_name(d, rng))
            if rng.random() < 0.5:
                phrase, _ = morph_phrase(main, rng, m)
                s.append(name + ": " + phrase + (" " + _site_phrase(case, rng, m) if rng.random() < 0.5 else ""))
            else:
                s.append(name)
                s.append(morph_sentence(main, site=rng.random() < 0.6))
        elif rng.random() < 0.9:
            s.append(morph_sentence(main, site=rng.random() < 0.6))
        other_sentences(0.6)
        if rng.random() < 0.3:
            s.append(_distribution_sentence(main, rng))
        if rng.random() < 0.2:
            s.append(_size_sentence(main, rng))
        if not title and rng.random() < 0.35:
            m.disease = True
            s.append(_pick(rng, ("Typical appearance of ", "Characteristic ", "A case of ")) + _disease_name(d, rng))
        if rng.random() < 0.1:
            s.append(_pick(rng, vocab.IRRELEVANT_SENTENCES))
        if not s:
            s.append(morph_sentence(main, site=True))
    elif src == "pubmed":
        if rng.random() < 0.3:
            s.append(f"Figure {int(rng.integers(1, 7))}")
        if rng.random() < 0.7:
            who = _person(case, rng, m)
            if rng.random() < 0.5:
                s.append(_cap(who) + f" presented with a lesion present for {case['duration']}")
            else:
                s.append(_cap(who) + " presented to the clinic")
        s.append(morph_sentence(main, site=rng.random() < 0.7))
        other_sentences(0.7)
        if rng.random() < 0.4:
            s.append(_size_sentence(main, rng))
        if rng.random() < 0.35:
            s.append(_distribution_sentence(main, rng))
        if rng.random() < 0.5:
            s.append(_symptom_sentence(case, rng, m) or "")
        if rng.random() < 0.15:
            s.append(f"Fitzpatrick skin type {vocab.ROMAN[case['fitzpatrick'] - 1]}")
        if rng.random() < 0.15:
            s.append(_negation(case, rng, m) or "")
        if rng.random() < 0.7:
            m.disease = True
            s.append(
                _pick(
                    rng,
                    (
                        "Histopathology confirmed ",
                        "The diagnosis was ",
                        "Findings were consistent with ",
                        "Biopsy showed ",
                    ),
                )
                + _disease_name(d, rng)
            )
        if rng.random() < 0.25:
            s.append(
                _pick(
                    rng, ("Treatment was started", "The patient was referred for follow-up", "A biopsy was performed")
                )
            )
    elif src == "youtube":
        s.append(
            _pick(rng, ("In this case we look at ", "Here we see ", "This video shows "))
            + morph_phrase(main, rng, m)[0]
        )
        if rng.random() < 0.6:
            s.append(_pick(rng, ("It is located ", "This one is ", "You can see it ")) + _site_phrase(case, rng, m))
        other_sentences(0.5)
        if rng.random() < 0.4:
            s.append(_distribution_sentence(main, rng))
        if rng.random() < 0.4:
            s.append(_symptom_sentence(case, rng, m) or "")
        if rng.random() < 0.5:
            m.disease = True
            s.append(
                _pick(rng, ("This is a classic case of ", "The diagnosis here is ", "This is ")) + _disease_name(d, rng)
            )
        for _ in range(int(rng.integers(0, 3))):
            s.append(
                _pick(
                    rng,
                    vocab.IRRELEVANT_SENTENCES
                    + ("Let us zoom in", "Pay attention to the border", "Remember this pattern"),
                )
            )
        if rng.random() < 0.2:
            s.append(_negation(case, rng, m) or "")
    else:  # forum
        kind = "rash" if len(main["blobs"]) > 1 else _pick(rng, ("spot", "bump", "patch", "mark"))
        site = _site_phrase(case, rng, m) if rng.random() < 0.75 else ""
        s.append(f"I have had this {kind} {site} for {case['duration']}".replace("  ", " "))
        if rng.random() < 0.7:
            s.append(
                _pick(rng, ("It looks like ", "It started as ", "Now it is "))
                + morph_phrase(main, rng, m, p_colour=0.8, p_type=0.4)[0]
            )
        other_sentences(0.4)
        if rng.random() < 0.7:
            s.append(_symptom_sentence(case, rng, m, first_person=True) or "")
        if rng.random() < 0.3:
            who = _person(case, rng, m)
            s.append(f"I am {who}")
        if rng.random() < 0.3:
            m.wrong_disease = _wrong_disease(case, rng)
            s.append(
                _pick(
                    rng, ("My doctor thought it was ", "At first I thought it was ", "A pharmacist said it might be ")
                )
                + m.wrong_disease
            )
        if rng.random() < 0.12:
            m.disease = True
            s.append(_pick(rng, ("My dermatologist said it is ", "I was diagnosed with ")) + _disease_name(d, rng))
        for _ in range(int(rng.integers(0, 3))):
            s.append(
                _pick(
                    rng,
                    ("Any ideas what this could be", "Should I be worried", "Thanks in advance")
                    + vocab.IRRELEVANT_SENTENCES,
                )
            )

    if src in ("pubmed", "youtube", "forum") and rng.random() < 0.2:  # a rambling, long caption
        for _ in range(int(rng.integers(2, 6))):
            r = rng.random()
            if r < 0.2:
                s.append(_size_sentence(main, rng))
            elif r < 0.3:
                s.append(f"Fitzpatrick skin type {vocab.ROMAN[case['fitzpatrick'] - 1]}")
            elif r < 0.4:
                s.append(_symptom_sentence(case, rng, m) or "")
            else:
                s.append(_pick(rng, vocab.IRRELEVANT_SENTENCES + HISTORY_NOISE))
    sentences = [x.strip() for x in _dedupe(s)]
    for x in sentences:
        assert "." not in x, x
    return {"sentences": sentences, "caption": ". ".join(sentences) + ".", "mentions": m.as_dict()}


def write_description(case: dict, rng: np.random.Generator) -> str:
    """A complete, clinician-style description (SkinCAP-like): morphology, site, arrangement, diagnosis."""
    d = vocab.DISEASE_BY_NAME[case["disease"]]
    m = _Mentions()
    comps = case["components"]
    main = next((c for c in comps if c["type"] != "base"), comps[0])
    phrase, plural = morph_phrase(main, rng, m, p_colour=1.0, p_type=1.0, p_sec=1.0)
    out = [
        _pick(rng, ("The image shows ", "The picture shows ", "This image shows "))
        + phrase
        + " "
        + _site_phrase(case, rng, m)
    ]
    for c in comps:
        if c is main:
            continue
        ph, pl = morph_phrase(c, rng, m, p_colour=1.0, p_type=1.0, p_sec=1.0, p_count=1.0)
        if c["type"] == "base":
            out.append("On " + ph)
        elif c.get("anchored"):
            out.append("With " + ph + " in the centre")
        else:
            pl = pl and not ph.startswith(("a ", "an "))
            out.append(("There are also " if pl else "There is also ") + ph)
    out.append(_distribution_sentence(main, rng))
    if rng.random() < 0.5:
        out.append(_size_sentence(main, rng))
    if case["symptoms"] and rng.random() < 0.5:
        out.append(_symptom_sentence(case, rng, m) or "")
    out.append(
        _pick(rng, ("The findings are consistent with ", "These features suggest ", "The most likely diagnosis is "))
        + _disease_name(d, rng)
    )
    sentences = _dedupe(out)
    for x in sentences:
        assert "." not in x, x
    return ". ".join(sentences) + "."
