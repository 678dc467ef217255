"""Official mode feeds the texts the public MAKE code feeds: an empty aspect cell is tokenized as "nan", an empty
subcaption as "" (SOT + EOT), a masked-out text as itself, and validity is the CSV masks. The expectation is an
independent transcription of the public dataset class (src/open_clip_train/data.py, MultiPositiveCsvDataset:
pandas reads an empty cell as NaN, aspects go through str(), subcaptions through fillna(''), masks through eval)
applied to the CSV rows."""

import ast
import csv
from pathlib import Path

import grain
import numpy as np
import pytest
from PIL import Image

from make_jax.records import convert as C
from make_jax.data import pipeline as P
from make_jax.data import records as R
from make_jax.tokenizer import tokenize

GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"


def public_code_inputs(row: dict):
    """(ids (11, 77), mask (11,)) of one CSV row as the public dataset class builds them."""
    def pandas_cell(v):  # pd.read_csv: an empty cell is NaN
        return float("nan") if v == "" else v

    knowledge = [str(pandas_cell(row[c])) for c in ("truncated_caption", "ontology_caption", "visual_concept_caption")]
    subcaptions = [row[f"subcaption_{k}"] for k in range(1, 9)]  # df[subcaption_keys].fillna('')
    mask = ast.literal_eval(row["knowledge_masks"]) + ast.literal_eval(row["sub_caption_mask"])
    return tokenize(knowledge + subcaptions, 77), np.asarray(mask, bool)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official_inputs")
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["ontology_caption"], rows[0]["knowledge_masks"] = "", "[1, 0, 1]"  # absent disease text
    rows[1]["visual_concept_caption"] = ""  # absent concept text whose mask still says 1
    rows[4]["subcaption_2"] = "A second sentence that the mask switches off."  # a text with mask 0
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        r["filename"] = f"img/{i:02d}.png"
        (tmp / "images" / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp / "images" / r["filename"])
    with open(tmp / "train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = C.convert(str(tmp / "train.csv"), str(tmp / "images"), str(tmp / "out"), workers=0, shorter_side=36,
                    progress=False, log=lambda s: None)
    return res.directory, rows


def _batch(directory, official: bool):
    config = P.PipelineConfig(image_size=32, prefetch=0, with_index=True, official_inputs=official)
    it = iter(P.train_dataset(directory, 10, config, num_epochs=1, shard_options=grain.sharding.NoSharding()))
    return next(it)


def test_official_inputs_are_the_public_codes(records):
    directory, rows = records
    source = R.read_records(directory, "train")
    official, paper = _batch(directory, True), _batch(directory, False)
    for b, index in enumerate(official["index"]):
        row = rows[int(source[int(index)]["row"]) - 1]
        want_ids, want_mask = public_code_inputs(row)
        np.testing.assert_array_equal(official["text_ids"][b], want_ids, err_msg=row["filename"])
        np.testing.assert_array_equal(official["text_valid"][b], want_mask, err_msg=row["filename"])
        # paper mode: the same ids wherever the slot is a text, all-zero ids elsewhere, validity = mask AND text
        pv = paper["text_valid"][b]
        np.testing.assert_array_equal(paper["text_ids"][b][pv], want_ids[pv])
        assert not paper["text_ids"][b][~pv].any()
    # the planted cases are there: "nan" for the absent disease text, SOT+EOT for an empty subcaption
    nan_ids = tokenize(["nan"], 77)[0]
    assert any((official["text_ids"][b][1] == nan_ids).all() and not official["text_valid"][b][1]
               for b in range(10))
    assert any(official["text_valid"][b][2] and (official["text_ids"][b][2] == nan_ids).all() for b in range(10))
    assert (official["text_ids"][:, 10, :2] == [49406, 49407]).all()


def test_training_config_in_official_mode_asks_for_public_inputs():
    from configs.ablation import get_config
    from make_jax.train.data import pipeline_config

    assert pipeline_config(get_config("row=official")).official_inputs
    assert not pipeline_config(get_config("row=make")).official_inputs
