"""Sentence splitting, the >8 merge rule and caption truncation (make_jax.knowledge.sentences).

Expected values come from the MAKE example rows (tests/golden/MAKE_training_example.csv) or are written by hand
from the documented rules.
"""

import csv
from pathlib import Path

import pytest

from make_jax.knowledge.sentences import (
    TextBudget,
    merge_to_limit,
    sentence_spans,
    split_sentences,
    split_subtexts,
    strip_final_stop,
    truncate_caption,
)

GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"


def golden_rows():
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_golden_subcaptions_reproduced():
    rows = golden_rows()
    assert len(rows) == 10
    for r in rows:
        expected = [r[f"subcaption_{i}"] for i in range(1, 9) if r[f"subcaption_{i}"]]
        assert split_subtexts(r["caption"]) == expected, r["caption"]
        assert len(expected) == int(r["sub_captions"])


def test_golden_row_two_sentences():
    # the brief's reference case (row 2 of the file)
    assert split_subtexts("Irritant diaper dermatitis. Erythematous patches sparing the skin folds.") == [
        "Irritant diaper dermatitis",
        "Erythematous patches sparing the skin folds",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        # abbreviations that never end a sentence
        ("Lesions, e.g. papules and plaques, are seen. Biopsy was done.",
         ["Lesions, e.g. papules and plaques, are seen.", "Biopsy was done."]),
        ("Scaly patches i.e. Psoriasis vulgaris. Nail pits.", ["Scaly patches i.e. Psoriasis vulgaris.", "Nail pits."]),
        ("Courtesy of Dr. Smith. Plaque on the elbow.", ["Courtesy of Dr. Smith.", "Plaque on the elbow."]),
        ("Psoriasis vs. Eczema on the hands. Both itch.", ["Psoriasis vs. Eczema on the hands.", "Both itch."]),
        ("A nodule of approx. 4 mm on the nose. It bled.", ["A nodule of approx. 4 mm on the nose.", "It bled."]),
        ("See Fig. 3 for the dermoscopy. Note the network.", ["See Fig. 3 for the dermoscopy.", "Note the network."]),
        # 'et al.' and units end a sentence only before an upper-case word
        ("As described by Yan et al. The lesions were pruritic.",
         ["As described by Yan et al.", "The lesions were pruritic."]),
        ("Reported by Yan et al. in 2025. Plaques.", ["Reported by Yan et al. in 2025.", "Plaques."]),
        ("A papule of 3 mm. in diameter on the lip.", ["A papule of 3 mm. in diameter on the lip."]),
        ("A plaque of 3 cm. The border is raised.", ["A plaque of 3 cm.", "The border is raised."]),
        # initials
        ("Photo by Anthony J. Mancini and P. Krowchuk. Erythema.",
         ["Photo by Anthony J. Mancini and P. Krowchuk.", "Erythema."]),
        ("Deficiency of vitamin D. The skin is dry.", ["Deficiency of vitamin D.", "The skin is dry."]),
        # decimals
        ("A 3.5 mm papule. A 0.5 cm crust.", ["A 3.5 mm papule.", "A 0.5 cm crust."]),
        # colons and semicolons never split
        ("Keratosis pilaris: Follicular papules; Rough skin: Arms.", ["Keratosis pilaris: Follicular papules; Rough skin: Arms."]),
        # ellipses
        ("The rash spread... Then it faded. It recurred... after sun.",
         ["The rash spread...", "Then it faded.", "It recurred... after sun."]),
        ("Erythema… Scale.", ["Erythema…", "Scale."]),
        # ! and ?
        ("Is it scabies? Burrows are seen! Treat.", ["Is it scabies?", "Burrows are seen!", "Treat."]),
        # quotes and brackets
        ('He called it "a target." Then it blistered.', ['He called it "a target."', "Then it blistered."]),
        ("(See Fig. 2. Note the scale.) Plaque.", ["(See Fig. 2. Note the scale.)", "Plaque."]),
        ("Multiple lesions (each approx. 2 mm.) are seen. Good.", ["Multiple lesions (each approx. 2 mm.) are seen.", "Good."]),
        # lower-case continuation never starts a sentence
        ("Erythema. scaling was absent", ["Erythema. scaling was absent"]),
        # enumerators
        ("1. Erythema. 2. Scale.", ["1. Erythema.", "2. Scale."]),
        ("A. Clinical photo. B. Dermoscopy.", ["A. Clinical photo.", "B. Dermoscopy."]),
        # no trailing full stop; missing space after a full stop
        ("Vesicles on the palm", ["Vesicles on the palm"]),
        ("Erythematous plaque.Central crust", ["Erythematous plaque.", "Central crust"]),
        # line breaks
        ("Erythema of the cheeks\nScale on the scalp", ["Erythema of the cheeks", "Scale on the scalp"]),
        ("Erythema of the\ncheeks.", ["Erythema of the cheeks."]),
        # whitespace collapsed, empty input
        ("  Plaque.   Scale.  ", ["Plaque.", "Scale."]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("Erythematous plaque.", "Erythematous plaque"),
        ("It spread...", "It spread"),
        ('He said "it itches."', 'He said "it itches"'),
        ("(see Fig. 2.)", "(see Fig. 2)"),
        ("Is it scabies?", "Is it scabies?"),
        ("A 3.5 mm papule", "A 3.5 mm papule"),
    ],
)
def test_strip_final_stop(sentence, expected):
    assert strip_final_stop(sentence) == expected


def test_merge_rule_smallest_adjacent_pair():
    # lengths 5, 6, 7, 8, 9, 10, 11, 12, 13, 15 -> pairs: (5+6)=11 merged first; then (7+8)=15 vs (11+7)=18 ->
    # (7+8) merged -> 8 pieces.
    sents = [f"S{i} " + "w" * i + "." for i in range(1, 11)]
    caption = " ".join(sents)
    assert split_subtexts(caption) == [
        "S1 w. S2 ww",
        "S3 www. S4 wwww",
        "S5 wwwww",
        "S6 wwwwww",
        "S7 wwwwwww",
        "S8 wwwwwwww",
        "S9 wwwwwwwww",
        "S10 wwwwwwwwww",
    ]


def test_merge_ties_go_left():
    spans = [(0, 2), (3, 5), (6, 8), (9, 11)]  # all length 2
    assert merge_to_limit(spans, 3) == [(0, 5), (6, 8), (9, 11)]
    assert merge_to_limit(spans, 2) == [(0, 5), (6, 11)]
    assert merge_to_limit(spans, 8) == spans


def test_merge_loses_no_text():
    caption = " ".join(f"Sentence number {i} has {'x' * (i % 5)} words." for i in range(23))
    subs = split_subtexts(caption)
    assert len(subs) == 8
    # joining the subtexts (each had its final stop removed) gives back the caption's words
    assert " ".join(s + "." for s in subs).split() == caption.split()


def test_exactly_eight_is_not_merged():
    caption = " ".join(f"Part {i}." for i in range(1, 9))
    assert split_subtexts(caption) == [f"Part {i}" for i in range(1, 9)]


def test_spans_index_original_text():
    text = "Plaque.  Scale.\nCrust"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["Plaque.", "Scale.", "Crust"]


# --- truncation ----------------------------------------------------------------------------------------------------
def test_truncate_fits_unchanged():
    text = "One two three. Four five."
    assert truncate_caption(text, TextBudget.words(5)) == text
    assert truncate_caption("  " + text + " ", TextBudget.none()) == text


def test_truncate_at_sentence_boundary_words():
    text = "One two three. Four five six seven. Eight nine."
    assert truncate_caption(text, TextBudget.words(8)) == "One two three. Four five six seven."
    assert truncate_caption(text, TextBudget.words(6)) == "One two three."
    assert truncate_caption(text, TextBudget.words(9)) == text


def test_truncate_first_sentence_too_long_cuts_words():
    text = "One two three four five six seven eight. Nine."
    assert truncate_caption(text, TextBudget.words(4)) == "One two three four"


def test_truncate_chars():
    text = "Erythema. Scale on the scalp."
    assert truncate_caption(text, TextBudget.chars(12)) == "Erythema."
    assert truncate_caption(text, TextBudget.chars(5)) == ""  # not even one word fits
    assert truncate_caption(text, TextBudget.chars(29)) == text


def test_token_budget_with_counter():
    # a counter where every word is two tokens: limit 12 leaves 10 content tokens = 5 words
    budget = TextBudget.tokens(12, count=lambda s: 2 * len(s.split()))
    assert budget.fits("a b c d e") and not budget.fits("a b c d e f")
    assert truncate_caption("One two. Three four five. Six.", budget) == "One two. Three four five."


def test_token_budget_with_the_project_tokenizer():
    from make_jax.tokenizer import tokenize_with_lengths

    s1 = "Erythematous scaly plaques on the extensor surfaces of both elbows."
    s2 = "Silvery scale and nail pitting are present."
    s3 = " ".join(["Numerous small follicular papules and pustules with surrounding erythema"] * 6) + "."
    caption = f"{s1} {s2} {s3}"
    out = truncate_caption(caption, TextBudget.tokens(77))
    assert out == f"{s1} {s2}"
    _, lengths = tokenize_with_lengths([out, caption])
    assert lengths[0] < 77  # fits without being cut
    assert lengths[1] == 77  # the full caption would be cut by the 77-token context
