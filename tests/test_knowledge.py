"""Knowledge-set construction: the CLI/orchestration (make_jax.knowledge), the offline lexicon extractor
(make_jax.knowledge.lexicon) and the CSV helpers (make_jax.records.csv_io).

Expected values come from the 10 real MAKE rows (tests/golden/MAKE_training_example.csv) or are written by hand
from the documented rules.
"""

import csv
import json
from pathlib import Path

import pytest

from make_jax.records import csv_io
from make_jax.records.csv_io import MAKE_OUTPUT_COLUMNS, format_mask, parse_mask, split_list_field
from make_jax.knowledge.builder import knowledge_columns, main
from make_jax.knowledge.lexicon import ConceptLexicon, LexiconExtractor, Ontology, is_negated
from make_jax.knowledge.sentences import TextBudget

GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"
DERM1M_COLUMNS = ["filename", "caption", "source", "standardized_disease", "ontology_final", "skin_concept_standarized"]


def golden_rows():
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path, fieldnames, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.DictReader(fh)
        return r.fieldnames, list(r)


@pytest.fixture(scope="module")
def lexicon():
    return ConceptLexicon.from_json()


@pytest.fixture(scope="module")
def example_ontology():
    """The small built-in test ontology: derived from the 10 example rows."""
    return Ontology.from_rows(golden_rows(), "ontology_final", "standardized_disease")


def ontology_json(tmp_path, ontology):
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps({n: list(ontology.lookup(n)) for n in ontology.names()}))
    return str(path)


# --- the example rows are reproduced exactly ----------------------------------------------------------------------
def test_golden_rows_rebuilt_from_derm1m_columns(tmp_path):
    gold = golden_rows()
    inp = write_csv(tmp_path / "in.csv", DERM1M_COLUMNS, gold)
    out = tmp_path / "out.csv"
    assert main([inp, "-o", str(out), "--no-progress", "-q"]) == 0
    fields, rows = read_csv(out)
    assert fields == DERM1M_COLUMNS + list(MAKE_OUTPUT_COLUMNS)  # input columns kept, in order, then MAKE's
    assert len(rows) == 10
    for g, r in zip(gold, rows):
        for c in DERM1M_COLUMNS + list(MAKE_OUTPUT_COLUMNS):
            assert r[c] == g[c], (c, g["caption"])


def test_golden_rows_pure_function():
    for g in golden_rows():
        cols = knowledge_columns(g["caption"], g["ontology_final"], g["skin_concept_standarized"].replace(
            "No visual concepts", ""), TextBudget.tokens(77))
        for c in MAKE_OUTPUT_COLUMNS:
            assert cols[c] == g[c], c


def test_check_mode_on_the_training_csv(tmp_path):
    summary = tmp_path / "s.json"
    assert main([str(GOLDEN), "--check", "--no-progress", "-q", "--summary-json", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert sorted(s["compared_columns"]) == sorted(MAKE_OUTPUT_COLUMNS)
    assert sum(s["mismatches"].values()) == 0
    assert s["rows_written"] == 10

    # corrupt two cells: a wrong mask order and a wrong subtext -> exactly those are reported, exit code 1
    gold = golden_rows()
    fields = list(gold[0].keys())
    gold[2]["knowledge_masks"] = "[1, 0, 1]"  # the row has a disease and no concepts: truth is [1, 1, 0]
    gold[5]["subcaption_1"] = "Erythematous patches"
    gold[7]["sub_caption_mask"] = "[1,0,0,0,0,0,0,0]"  # same value, other spacing: not a mismatch
    bad = write_csv(tmp_path / "bad.csv", fields, gold)
    assert main([bad, "--check", "--no-progress", "-q", "--summary-json", str(summary)]) == 1
    s = json.loads(summary.read_text())
    assert {k: v for k, v in s["mismatches"].items() if v} == {"knowledge_masks": 1, "subcaption_1": 1}
    assert s["mismatch_examples"]["knowledge_masks"][0] == {"row": "3", "existing": "[1, 0, 1]", "rebuilt": "[1, 1, 0]"}


# --- masks and aspect texts ----------------------------------------------------------------------------------------
def test_knowledge_mask_order_raw_disease_concept():
    c = knowledge_columns("Plaque on the knee.", "inflammatory, psoriasis", "")
    assert c["knowledge_masks"] == "[1, 1, 0]"
    assert c["ontology_caption"] == "This is a skin photo diagnosed as inflammatory, psoriasis."
    assert c["visual_concept_caption"] == ""
    c = knowledge_columns("Plaque on the knee.", "", "plaque, scale")
    assert c["knowledge_masks"] == "[1, 0, 1]"
    assert c["visual_concept_caption"] == "This skin photo shows plaque, scale."
    assert c["augmented_caption"] == "Plaque on the knee.The skin photo shows plaque, scale."
    c = knowledge_columns("Plaque. Scale. Crust.", "", "")
    assert c["knowledge_masks"] == "[1, 0, 0]"
    assert c["sub_caption_mask"] == "[1, 1, 1, 0, 0, 0, 0, 0]"
    assert c["sub_captions"] == "3"
    assert [c[f"subcaption_{i}"] for i in range(1, 5)] == ["Plaque", "Scale", "Crust", ""]


def test_csv_io_masks_and_lists():
    assert parse_mask("[1, 0, 0]") == [1, 0, 0]
    assert parse_mask(" [1,1,0,0,0,0,0,0] ", 8) == [1, 1, 0, 0, 0, 0, 0, 0]
    assert format_mask([1, 1, 0]) == "[1, 1, 0]"
    for bad in ("1, 0, 0", "[1, 2, 0]", "[1, 0", "[a]", ""):
        with pytest.raises(ValueError):
            parse_mask(bad)
    with pytest.raises(ValueError):
        parse_mask("[1, 0]", 3)
    assert split_list_field("inflammatory, non-infectious, eczema") == ["inflammatory", "non-infectious", "eczema"]
    assert split_list_field("['erythema', 'scale']") == ["erythema", "scale"]
    assert split_list_field('["erythema"]') == ["erythema"]
    for bad in ("a,,b", "a, ", "['a'", "[1, 2]"):
        with pytest.raises(ValueError):
            split_list_field(bad)
    assert csv_io.is_missing("nan") and csv_io.is_missing("  ") and not csv_io.is_missing("No visual concepts")


# --- lexicon ---------------------------------------------------------------------------------------------------------
def test_example_ontology_derivation(example_ontology):
    # written by hand from the rule in Ontology.from_rows: a name takes the path of the rows where it is the only
    # name; 'dermatitis' alone is rows 2 and 10 -> 'inflammatory, dermatitis', not the atopic path.
    expected = {
        "ichthyosis": "hereditary, ichthyosis",
        "dermatitis": "inflammatory, dermatitis",
        "atopic dermatitis": "inflammatory, non-infectious, atopic dermatitis, dermatitis",
        "eczema": "inflammatory, non-infectious, eczema, eczema, nummular eczema",
        "nummular eczema": "inflammatory, non-infectious, eczema, eczema, nummular eczema",
        "keratosis": "hereditary, keratosis, keratosis pilaris",
        "keratosis pilaris": "hereditary, keratosis, keratosis pilaris",
    }
    assert sorted(example_ontology.names()) == sorted(expected)
    for name, path in expected.items():
        assert example_ontology.path_text(name) == path


# Concepts the lexicon should find in each example caption (hand-derived from the rules: whole words, derived
# forms, order of first mention) and the disease (first mention in the example ontology).
LEXICON_EXPECTED = [
    (None, ["erythema", "scale"]),  # "ichthyosiform" is not "ichthyosis"
    ("dermatitis", ["erythema", "patch"]),  # 'dermatitis' is excluded as a synonym of plaque
    ("atopic dermatitis", []),
    ("nummular eczema", ["crust"]),
    ("atopic dermatitis", ["erythema", "lichenification", "scale", "erosion", "crust"]),
    ("atopic dermatitis", ["erythema", "patch"]),
    ("keratosis pilaris", ["papule"]),
    ("ichthyosis", ["scale"]),  # "atopic dermatitic" (sic) is not a disease name
    ("atopic dermatitis", ["erosion", "crust"]),
    (None, ["vesicle", "erythema", "plaque"]),  # "poison ivy" names no disease
]


def test_lexicon_on_example_captions(lexicon, example_ontology):
    ex = LexiconExtractor(lexicon, example_ontology)
    gold = golden_rows()
    for g, (disease, concepts) in zip(gold, LEXICON_EXPECTED):
        e = ex.extract(g["caption"])
        assert e.disease == disease, g["caption"]
        assert e.concepts == concepts, g["caption"]
        if disease is not None:
            assert e.disease_path == g["ontology_final"]  # the path of the gold row
        gold_concepts = set() if g["skin_concept_standarized"] == "No visual concepts" else set(
            split_list_field(g["skin_concept_standarized"]))
        if gold_concepts <= set(lexicon.concepts):  # gold uses only vocabulary concepts -> same set
            assert set(concepts) == gold_concepts, g["caption"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Erythematous plaque without scale, with central crusting.", ["erythema", "plaque", "crust"]),
        ("No scale or crust; erythematous papules.", ["erythema", "papule"]),
        ("Non-scaly papules and nonscaly macules.", ["papule", "macule"]),
        ("Scale is absent but crusts are seen.", ["crust"]),
        ("Ulceration was not observed; bullae present.", ["bulla"]),
        ("Lesions negative for ulceration. Telangiectases noted.", ["telangiectasia"]),
        ("Flat-topped violaceous papules and dome shaped nodules.", ["flat topped", "purple", "papule", "dome-shaped", "nodule"]),
        ("Hyperpigmented macules.", ["brown(hyperpigmentation)", "macule"]),
        ("SCALY PATCHES", ["scale", "patch"]),
        ("Scalp psoriasis and dermatitis.", []),  # disease names are not concepts; 'scalp' is not 'scale'
        ("Petechial rash with purpuric papules.", ["purpura/petechiae", "papule"]),
    ],
)
def test_concept_forms_and_negation(lexicon, text, expected):
    assert lexicon.extract(text) == expected


def test_negation_scope():
    t = "no scale, but erythema"
    assert is_negated(t, t.index("scale"), t.index("scale") + 5)
    assert not is_negated(t, t.index("erythema"), len(t))
    t = "without any obvious signs of the well known scale"  # cue more than 5 words before
    assert not is_negated(t, t.index("scale"), len(t))


def test_ontology_layouts(tmp_path):
    flat = Ontology.from_mapping({"atopic dermatitis": ["inflammatory", "non-infectious", "atopic dermatitis"]})
    assert flat.path_text("Atopic Dermatitis") == "inflammatory, non-infectious, atopic dermatitis"
    s = Ontology.from_mapping({"psoriasis": "inflammatory, non-infectious, psoriasis"})
    assert s.path_text("psoriasis") == "inflammatory, non-infectious, psoriasis"
    syn = Ontology.from_mapping({"atopic dermatitis": {"path": ["inflammatory", "atopic dermatitis"],
                                                       "synonyms": ["atopic eczema"]}})
    assert syn.find("Flexural atopic eczema in a child")[1] == ("inflammatory", "atopic dermatitis")
    tree = Ontology.from_mapping(
        {"inflammatory": {"non-infectious": {"eczema": ["nummular eczema"], "psoriasis": {}}}, "hereditary": None}
    )
    assert tree.path_text("nummular eczema") == "inflammatory, non-infectious, eczema, nummular eczema"
    assert tree.path_text("psoriasis") == "inflammatory, non-infectious, psoriasis"
    assert tree.path_text("non-infectious") == "inflammatory, non-infectious"
    assert tree.lookup("inflammatory") is None  # top-level categories are not diseases
    listed = Ontology.from_mapping([{"name": "wart", "path": ["infectious", "viral", "wart"]}])
    assert listed.find("Multiple warts on the hand")[0] == "wart"  # plural of the name matches
    assert listed.find("No warts were seen") is None  # negated
    p = tmp_path / "o.json"
    p.write_text(json.dumps({"melanoma": ["neoplasm", "malignant", "melanoma"]}))
    assert Ontology.from_json(p).path_text("melanoma") == "neoplasm, malignant, melanoma"
    with pytest.raises(ValueError):
        Ontology.from_mapping({"x": 3})


def test_first_disease_mention_wins(example_ontology):
    found = example_ontology.find("Ichthyosis vulgaris with atopic dermatitis.")
    assert found[0] == "ichthyosis"
    found = example_ontology.find("Atopic dermatitis of the face.")
    assert found[0] == "atopic dermatitis"  # longest name at that position, not 'dermatitis'


# --- the CLI on Derm1M-style tables with missing fields ------------------------------------------------------------
def test_lexicon_fills_missing_fields(tmp_path, example_ontology):
    gold = golden_rows()
    blank = [dict(g, ontology_final="", skin_concept_standarized="") for g in gold]
    inp = write_csv(tmp_path / "in.csv", DERM1M_COLUMNS, blank)
    out = tmp_path / "out.csv"
    ont = ontology_json(tmp_path, example_ontology)
    assert main([inp, "-o", str(out), "--ontology", ont, "--no-progress", "-q", "--provenance"]) == 0
    _, rows = read_csv(out)
    for g, r, (disease, concepts) in zip(gold, rows, LEXICON_EXPECTED):
        expected_ont = g["ontology_caption"] if disease else ""
        assert r["ontology_caption"] == expected_ont
        assert r["visual_concept_caption"] == (f"This skin photo shows {', '.join(concepts)}." if concepts else "")
        assert r["knowledge_masks"] == format_mask([1, bool(disease), bool(concepts)])
        assert r["disease_source"] == "lexicon" and r["concept_source"] == "lexicon"
        assert r["ontology_final"] == "" and r["skin_concept_standarized"] == ""  # input columns untouched
        # subtexts do not depend on the knowledge fields
        assert [r[f"subcaption_{i}"] for i in range(1, 9)] == [g[f"subcaption_{i}"] for i in range(1, 9)]


def test_ontology_derived_from_the_table_itself(tmp_path):
    gold = golden_rows()
    rows = [dict(g) if i < 5 else dict(g, ontology_final="", skin_concept_standarized="") for i, g in enumerate(gold)]
    inp = write_csv(tmp_path / "in.csv", DERM1M_COLUMNS, rows)
    out = tmp_path / "out.csv"
    assert main([inp, "-o", str(out), "--no-progress", "-q", "--provenance"]) == 0
    _, res = read_csv(out)
    # rows 1-5 keep their fields; rows 6-10 use paths learnt from rows 1-5 (hand-derived):
    assert [r["disease_source"] for r in res] == ["field"] * 5 + ["lexicon"] * 5
    assert [r["ontology_caption"] for r in res[:5]] == [g["ontology_caption"] for g in gold[:5]]
    assert res[5]["ontology_caption"] == gold[5]["ontology_caption"]  # atopic dermatitis, seen in rows 3 and 5
    assert res[6]["ontology_caption"] == ""  # keratosis pilaris only appears in row 7 itself
    assert res[7]["ontology_caption"] == gold[7]["ontology_caption"]  # ichthyosis, from row 1
    assert res[8]["ontology_caption"] == gold[8]["ontology_caption"]
    assert res[9]["ontology_caption"] == ""


def test_extractor_none_and_explicit_none(tmp_path):
    rows = [
        {"filename": "a.png", "caption": "Erythematous plaque.", "ontology_final": "", "skin_concept_standarized": ""},
        {"filename": "b.png", "caption": "Erythematous plaque.", "ontology_final": "inflammatory, psoriasis",
         "skin_concept_standarized": "No visual concepts"},
    ]
    inp = write_csv(tmp_path / "in.csv", ["filename", "caption", "ontology_final", "skin_concept_standarized"], rows)
    out = tmp_path / "out.csv"
    assert main([inp, "-o", str(out), "--extractor", "none", "--no-progress", "-q"]) == 0
    _, res = read_csv(out)
    assert res[0]["knowledge_masks"] == "[1, 0, 0]" and res[0]["visual_concept_caption"] == ""
    assert res[1]["knowledge_masks"] == "[1, 1, 0]"
    # with the lexicon, the explicit "No visual concepts" still means none (no extraction)
    assert main([inp, "-o", str(out), "--no-progress", "-q"]) == 0
    _, res = read_csv(out)
    assert res[0]["visual_concept_caption"] == "This skin photo shows erythema, plaque."
    assert res[1]["visual_concept_caption"] == ""


def test_bad_rows_go_to_rejects(tmp_path):
    header = "filename,caption,ontology_final,skin_concept_standarized\n"
    body = (
        'ok1.png,Erythematous plaque.,"inflammatory, psoriasis",plaque\n'  # 1 good
        "e.png,,,\n"  # 2 empty caption
        "n.png,nan,,\n"  # 3 'nan' caption
        "d.png,... !!,,\n"  # 4 no letters
        ",Plaque.,,\n"  # 5 empty filename
        "x.png,Plaque.,a,b,extra\n"  # 6 too many fields
        'm.png,Scaly plaque.,"inflammatory,,psoriasis",scale\n'  # 7 malformed path -> field ignored
        "c.png,Crusted papule.,,\"['crust'\"\n"  # 8 malformed concept list -> field ignored
        "z.png,Vesicle\x00s on the palm.,,\n"  # 9 NUL byte dropped, kept
        "ok2.png,Plaque. Scale.,,\n"  # 10 good
    )
    inp = tmp_path / "in.csv"
    inp.write_text(header + body, encoding="utf-8")
    out, rej, summ = tmp_path / "out.csv", tmp_path / "rej.csv", tmp_path / "s.json"
    assert main([str(inp), "-o", str(out), "--rejects", str(rej), "--summary-json", str(summ), "--no-progress",
                 "-q"]) == 0  # fmt: skip
    _, res = read_csv(out)
    assert [r["filename"] for r in res] == ["ok1.png", "m.png", "c.png", "z.png", "ok2.png"]
    assert res[1]["ontology_caption"] == ""  # malformed path ignored; the lexicon finds no disease in the caption
    assert res[1]["visual_concept_caption"] == "This skin photo shows scale."  # from the valid concept field
    assert res[2]["visual_concept_caption"] == "This skin photo shows crust, papule."  # lexicon
    assert res[3]["caption"] == "Vesicles on the palm."
    _, rejects = read_csv(rej)
    got = [(r["row"], r["field"], r["action"]) for r in rejects]
    assert got == [
        ("2", "caption", "row dropped"),
        ("3", "caption", "row dropped"),
        ("4", "caption", "row dropped"),
        ("5", "filename", "row dropped"),
        ("6", "(row)", "row dropped"),
        ("7", "ontology_final", "field ignored; extractor used"),
        ("8", "skin_concept_standarized", "field ignored; extractor used"),
    ]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == "empty caption" and reasons[1] == "empty caption"
    assert reasons[2] == "caption has no letters" and reasons[3] == "empty filename"
    assert reasons[4] == "row has 5 fields, header has 4"
    assert "empty item" in reasons[5] and "does not parse" in reasons[6]
    s = json.loads(summ.read_text())
    assert (s["rows_read"], s["rows_written"], s["rows_dropped"], s["field_issues"]) == (10, 5, 5, 2)


def test_missing_required_column_fails_at_once(tmp_path, capsys):
    inp = write_csv(tmp_path / "in.csv", ["filename", "text"], [{"filename": "a.png", "text": "Plaque."}])
    assert main([inp, "-o", str(tmp_path / "o.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "caption column 'caption'" in err and "columns found: 'filename', 'text'" in err
    assert not (tmp_path / "o.csv").exists()
    # the right flag fixes it; absent optional default columns only warn
    assert main([inp, "-o", str(tmp_path / "o.csv"), "--caption-col", "text", "--no-progress", "-q"]) == 0
    # an optional column named explicitly is required
    assert main([inp, "-o", str(tmp_path / "o.csv"), "--caption-col", "text", "--ontology-col", "path",
                 "--no-progress", "-q"]) == 2  # fmt: skip
    assert "ontology column 'path'" in capsys.readouterr().err


def test_long_captions_merge_and_truncate(tmp_path):
    long_caption = " ".join(f"Sentence {i} here." for i in range(1, 11))  # 10 sentences, 30 words
    rows = [{"filename": "a.png", "caption": long_caption}]
    inp = write_csv(tmp_path / "in.csv", ["filename", "caption"], rows)
    out, summ = tmp_path / "out.csv", tmp_path / "s.json"
    assert main([inp, "-o", str(out), "--budget", "words:10", "--no-progress", "-q", "--summary-json", str(summ)]) == 0
    _, res = read_csv(out)
    r = res[0]
    assert r["sub_captions"] == "8" and r["sub_caption_mask"] == "[1, 1, 1, 1, 1, 1, 1, 1]"
    # lengths 16 x 9 and 17: the first pairs (1,2) then (3,4) are merged (smallest sums, leftmost)
    assert r["subcaption_1"] == "Sentence 1 here. Sentence 2 here"
    assert r["subcaption_2"] == "Sentence 3 here. Sentence 4 here"
    assert r["subcaption_8"] == "Sentence 10 here"
    assert r["truncated_caption"] == "Sentence 1 here. Sentence 2 here. Sentence 3 here."  # 9 words <= 10
    assert r["augmented_caption"] == r["truncated_caption"]  # no aspects
    s = json.loads(summ.read_text())
    assert s["merged_rows"] == 1 and s["truncated_rows"] == 1 and s["budget"] == "words:10"


def test_tsv_and_existing_columns_overwritten(tmp_path):
    inp = tmp_path / "in.tsv"
    inp.write_text("filename\tcaption\tsub_captions\tknowledge_masks\n"
                   "a.png\tPlaque. Scale.\t5\t[0, 0, 0]\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "out.tsv"
    assert main([str(inp), "-o", str(out), "--no-progress", "-q"]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        r = list(csv.DictReader(fh, delimiter="\t"))
    assert list(r[0])[:4] == ["filename", "caption", "sub_captions", "knowledge_masks"]  # kept in place
    assert r[0]["sub_captions"] == "2" and r[0]["knowledge_masks"] == "[1, 0, 1]"
    assert r[0]["visual_concept_caption"] == "This skin photo shows plaque, scale."
