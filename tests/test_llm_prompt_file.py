"""The knowledge builder's prompt file: the paper's two-prompt form (a disease request and a concepts request, each
answered with a bracketed list) against the local fake endpoint, and one-line refusals of malformed files."""

import json

import pytest

from make_jax.knowledge.lexicon import LexiconExtractor
from make_jax.knowledge.llm_extract import (DEFAULT_PROMPT, LLMConfig, LLMExtractor, load_prompt_file,
                                       prompt_version)
from test_llm_extract import KEY, FakeLLM, golden_rows, lexicon, ontology  # noqa: F401 - fixtures

PAPER_FORM = {
    "name": "make-paper-prompts",
    "requests": [
        {"system": "<the paper's Disease Extraction Prompt>", "user": 'Case: """{caption}"""\nResponse:',
         "answer": "disease"},
        {"system": "<the paper's Skin Concept Extraction Prompt>", "user": 'Input: """{caption}""" Response:',
         "answer": "concepts"},
    ],
}


def test_paper_form_two_requests_per_caption(tmp_path, lexicon, ontology):  # noqa: F811
    (tmp_path / "prompt.json").write_text(json.dumps(PAPER_FORM))
    prompt = load_prompt_file(tmp_path / "prompt.json")
    gold = golden_rows()
    a, b = gold[2]["caption"], gold[0]["caption"]
    script = {
        a: [(200, "The description reports eczema in a child.\n[Atopic dermatitis]", 0.0),
            (200, "[erythema, scale, rough skin]", 0.0)],
        b: [(200, "[No definitive diagnosis]", 0.0), (200, "[No matching attributes]", 0.0)],
    }
    with FakeLLM(script) as fake:
        cfg = LLMConfig(base_url=fake.base_url, model="fake-model", api_key=KEY, timeout=5.0, max_retries=0,
                        backoff=0.0, concurrency=1)
        ext = LLMExtractor(cfg, LexiconExtractor(lexicon, ontology), cache_path=tmp_path / "cache.jsonl",
                           sleep=lambda s: None, prompt=prompt)
        ra, rb = ext.extract_many([a, b])
        ext.close()
        assert fake.count(a) == 2 and fake.count(b) == 2  # one disease and one concepts request per caption
    assert ra.source == "llm" and ra.disease == "atopic dermatitis"
    assert ra.disease_path == gold[2]["ontology_final"]  # "inflammatory, non-infectious, atopic dermatitis, ..."
    assert ra.concepts == ["erythema", "scale"] and "rough skin" in ra.note  # outside the vocabulary: dropped
    assert rb.source == "llm" and rb.disease is None and rb.concepts == []
    # another prompt is another cache entry
    assert prompt_version(ext.vocabulary, prompt) != prompt_version(ext.vocabulary, DEFAULT_PROMPT)


@pytest.mark.parametrize("content, message", [
    ({"name": "x", "requests": [{"system": "s", "user": "no caption here"}]}, "requests[0].user: the template has no"),
    ({"name": "x", "requests": [{"system": "s", "user": "{caption}", "answer": "yaml"}]}, "requests[0].answer"),
    ({"name": "x", "requests": [{"system": "s", "user": "{caption}"},
                                {"system": "s", "user": "{caption}", "answer": "disease"}]}, "one 'json' request"),
    ({"name": "x", "requests": [{"system": "s", "user": "{caption} {unknown}"}]}, "requests[0].user: bad template"),
    ({"requests": []}, "'name'"),
])
def test_malformed_prompt_files_are_refused(tmp_path, content, message):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="p.json") as e:
        load_prompt_file(f)
    assert message in str(e.value) and "\n" not in str(e.value)
