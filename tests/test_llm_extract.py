"""The optional LLM extractor (make_jax.knowledge.llm_extract): answer parsing on recorded answers, and the HTTP path
against a local fake OpenAI-compatible server (http.server on 127.0.0.1, in a thread). No real endpoint is used.
"""

import csv
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from make_jax.knowledge.builder import main
from make_jax.knowledge.lexicon import ConceptLexicon, LexiconExtractor, Ontology
from make_jax.knowledge.llm_extract import (
    PROMPT_VERSION,
    LLMConfig,
    LLMExtractor,
    build_messages,
    cache_key,
    parse_answer,
    prompt_version,
)

ANSWERS = Path(__file__).parent / "data" / "llm_answers"
GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"
KEY = "sk-test-SECRET-0123456789abcdef"


def golden_rows():
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def lexicon():
    return ConceptLexicon.from_json()


@pytest.fixture(scope="module")
def ontology():
    return Ontology.from_rows(golden_rows(), "ontology_final", "standardized_disease")


# --- parsing recorded answers ----------------------------------------------------------------------------------------
# file -> (ok, disease, concepts, dropped) for usable answers, or (False, error substring) for rejected ones.
EXPECTED = {
    "good_plain.json": (True, "atopic dermatitis", ["erythema", "lichenification", "scale", "erosion", "crust"], []),
    "fenced_json.txt": (True, "nummular eczema", ["crust"], []),
    "trailing_prose.txt": (True, "irritant diaper dermatitis", ["erythema", "patch"], []),
    "leading_prose.txt": (True, "keratosis pilaris", ["papule"], []),
    "single_quotes.txt": (True, "ichthyosis vulgaris", ["scale"], []),
    "python_none.txt": (True, None, ["vesicle", "erythema", "plaque"], []),
    "json_null_disease.json": (True, None, ["erythema", "scale"], []),
    "no_definitive.json": (True, None, [], []),
    "capitalised_keys.json": (True, "Psoriasis", ["plaque", "scale"], []),
    "extra_keys.json": (True, "atopic dermatitis", ["erythema"], []),
    "concepts_string.json": (True, "psoriasis", ["plaque", "scale"], []),
    "out_of_vocab.json": (True, "atopic dermatitis", ["erythema", "scale", "crust"], ["desquamation", "weeping"]),
    "missing_concepts.json": (False, "missing key 'concepts'"),
    "missing_disease.json": (False, "missing key 'disease'"),
    "wrong_types.json": (False, "'disease' is a int"),
    "null.txt": (False, "answer is null"),
    "empty.txt": (False, "empty answer"),
    "whitespace.txt": (False, "empty answer"),
    "non_json.txt": (False, "no JSON object"),
    "truncated.txt": (False, "truncated JSON"),
    "invalid_json.txt": (False, "invalid JSON"),
}


def test_every_recorded_answer_has_an_expectation():
    files = {p.name for p in ANSWERS.iterdir() if p.name != "README.md"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_recorded_answer(name, lexicon):
    text = (ANSWERS / name).read_text(encoding="utf-8")
    got = parse_answer(text, lexicon)
    exp = EXPECTED[name]
    if exp[0]:
        assert got.ok, got.error
        assert (got.disease, got.concepts, got.dropped) == exp[1:]
    else:
        assert not got.ok
        assert exp[1] in got.error
        assert got.concepts == [] and got.disease is None


def test_parse_never_raises(lexicon):
    for text in (None, "{", "}", "{{}}", "[1, 2]", '{"disease": {"a": 1}, "concepts": []}', "{'a': }", "\x00"):
        assert parse_answer(text, lexicon).ok is False


def test_prompt(lexicon):
    msgs = build_messages("Erythematous plaque on the knee.", lexicon.concepts)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert '"""Erythematous plaque on the knee."""' in user
    assert '"disease"' in user and '"concepts"' in user and "null" in user
    for concept in lexicon.concepts:
        assert f'"{concept}"' in user  # the whole vocabulary is offered
    v = prompt_version(lexicon.concepts)
    assert v.startswith(PROMPT_VERSION + "+") and v != prompt_version(lexicon.concepts[:-1])
    assert cache_key("m", v, "a") != cache_key("m", v, "b") != cache_key("m2", v, "b")


def test_config_from_env():
    with pytest.raises(ValueError, match="MAKE_LLM_BASE_URL, MAKE_LLM_MODEL"):
        LLMConfig.from_env({})
    cfg = LLMConfig.from_env({"MAKE_LLM_BASE_URL": "http://h:1/v1/", "MAKE_LLM_MODEL": "m", "MAKE_LLM_API_KEY": KEY})
    assert cfg.endpoint == "http://h:1/v1/chat/completions"
    assert KEY not in repr(cfg)
    assert LLMConfig("http://h/v1/chat/completions", "m").endpoint == "http://h/v1/chat/completions"


# --- fake OpenAI-compatible server -----------------------------------------------------------------------------------
class FakeLLM:
    """Answers chat completions from a script: caption -> list of steps, each (status, content_or_body, delay).

    `delay` is seconds to sleep, or a `threading.Event` that holds the answer until the test sets it (no race
    between a sleep and the client's timeout on a loaded machine).

    A step with status 200 returns a chat completion whose message content is the given text; other statuses
    return that status with the text as body. The last step repeats. Requests are counted per caption and capped
    (``limit``): beyond it the server answers 503 and records the overflow, so a runaway retry loop is bounded.
    """

    def __init__(self, script, default=(200, '{"disease": null, "concepts": []}', 0.0), limit=200):
        self.script = {k: list(v) for k, v in script.items()}
        self.default = default
        self.limit = limit
        self.requests = []  # (caption, authorization header)
        self.overflow = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][1]["content"]
                caption = user.split('"""')[1]
                with fake.lock:
                    fake.requests.append((caption, self.headers.get("Authorization")))
                    n = len(fake.requests)
                    steps = fake.script.get(caption)
                    step = (steps.pop(0) if len(steps) > 1 else steps[0]) if steps else fake.default
                if n > fake.limit:
                    fake.overflow += 1
                    step = (503, "over limit", 0.0)
                status, text, delay = step
                if isinstance(delay, threading.Event):
                    delay.wait(60)
                elif delay:
                    time.sleep(delay)
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": "stop"}]}  # fmt: skip
                    data = json.dumps(payload).encode()
                else:
                    data = text.replace("{auth}", self.headers.get("Authorization") or "").encode()
                try:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def count(self, caption=None):
        with self.lock:
            return sum(1 for c, _ in self.requests if caption is None or c == caption)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def make_extractor(fake, lexicon, ontology, cache, **kw):
    cfg = LLMConfig(base_url=fake.base_url, model="fake-model", api_key=KEY, timeout=kw.pop("timeout", 5.0),
                    max_retries=kw.pop("max_retries", 3), backoff=0.0, concurrency=kw.pop("concurrency", 4), **kw)  # fmt: skip
    return LLMExtractor(cfg, LexiconExtractor(lexicon, ontology), cache_path=cache, sleep=lambda s: None)


# Hand-written answers for the 10 example captions, chosen so that the expected outputs can be derived by hand.
ANSWERS_FOR_GOLDEN = [
    '{"disease": "ichthyosis", "concepts": ["erythema", "scale"]}',
    '```json\n{"disease": "irritant diaper dermatitis", "concepts": ["erythema", "patch"]}\n```',
    '{"disease": "atopic dermatitis", "concepts": []}',
    "{'disease': 'nummular eczema', 'concepts': ['crust']}",
    '{"disease": "atopic dermatitis", "concepts": ["erythema", "lichenification", "scale", "erosion", "crust"]}',
    '{"disease": "atopic dermatitis", "concepts": ["erythema", "patch"]}',
    '{"disease": "keratosis pilaris", "concepts": ["papule", "follicular"]}',
    '{"disease": "ichthyosis vulgaris", "concepts": ["scale"]}',
    '{"disease": "atopic dermatitis", "concepts": ["erosion", "crust", "exudate"]}',
    '{"disease": "allergic contact dermatitis", "concepts": ["vesicle", "erythema", "plaque"]}',
]


def test_extract_many_then_cached_rerun(tmp_path, lexicon, ontology):
    gold = golden_rows()
    captions = [g["caption"] for g in gold]
    script = {c: [(200, a, 0.0)] for c, a in zip(captions, ANSWERS_FOR_GOLDEN)}
    cache = tmp_path / "cache.jsonl"
    with FakeLLM(script) as fake:
        ext = make_extractor(fake, lexicon, ontology, cache)
        res = ext.extract_many(captions + captions[:3])  # duplicates are asked once
        ext.close()
        assert fake.count() == 10
        assert all(auth == f"Bearer {KEY}" for _, auth in fake.requests)
        assert [r.source for r in res] == ["llm"] * 13
        # disease names map to ontology paths (directly, or through the ontology's matcher on the name)
        assert [r.disease_path for r in res[:10]] == [g["ontology_final"] for g in gold]
        assert res[6].concepts == ["papule"] and "follicular" in res[6].note  # outside the vocabulary: dropped
        assert res[8].concepts == ["erosion", "crust", "exudate"]
        assert res[10].concepts == res[0].concepts
        # second run: everything from the cache, zero requests
        ext2 = make_extractor(fake, lexicon, ontology, cache)
        res2 = ext2.extract_many(captions)
        ext2.close()
        assert fake.count() == 10
        assert ext2.client.requests == 0 and ext2.stats.cache_hits == 10
        assert [(r.disease_path, r.concepts) for r in res2] == [(r.disease_path, r.concepts) for r in res[:10]]
    assert KEY not in cache.read_text()


def test_429_then_success(tmp_path, lexicon, ontology):
    cap = "Erythematous patches sparing the skin folds."
    script = {cap: [(429, '{"error": "rate limited"}', 0.0), (200, '{"disease": null, "concepts": ["erythema", "patch"]}', 0.0)]}
    with FakeLLM(script) as fake:
        ext = make_extractor(fake, lexicon, ontology, tmp_path / "c.jsonl")
        (r,) = ext.extract_many([cap])
        ext.close()
        assert fake.count(cap) == 2
    assert (r.source, r.concepts, r.note) == ("llm", ["erythema", "patch"], "")
    assert ext.client.retries == 1 and ext.client.requests == 2


def test_timeout_then_success(tmp_path, lexicon, ontology):
    # The first answer is held until the client has given up on it and retried: the retry, not a race between
    # a sleep and the timeout, decides the outcome. The retry is answered at once, far inside the timeout.
    cap = "Crusted plaque."
    release = threading.Event()
    script = {cap: [(200, '{"disease": null, "concepts": ["crust"]}', release),
                    (200, '{"disease": null, "concepts": ["plaque", "crust"]}', 0.0)]}
    with FakeLLM(script) as fake:
        try:
            ext = make_extractor(fake, lexicon, ontology, None, timeout=1.0)
            r = ext.extract(cap)
            assert fake.count(cap) == 2
            assert ext.client.retries == 1
        finally:
            release.set()  # let the held handler finish before the server shuts down
    assert (r.source, r.concepts) == ("llm", ["plaque", "crust"])


def test_permanent_500_falls_back_to_lexicon(tmp_path, lexicon, ontology):
    cap = "Chronic atopic dermatitis with lichenified plaques."
    cache = tmp_path / "c.jsonl"
    with FakeLLM({cap: [(500, "internal error", 0.0)]}) as fake:
        ext = make_extractor(fake, lexicon, ontology, cache, max_retries=2)
        (r,) = ext.extract_many([cap])
        ext.close()
        assert fake.count(cap) == 3  # first attempt + 2 retries, then stop
        assert fake.overflow == 0
    assert r.source == "lexicon"
    assert (r.disease, r.concepts) == ("atopic dermatitis", ["lichenification", "plaque"])
    assert "HTTP 500" in r.note and "after 3 attempts" in r.note and "used the lexicon" in r.note
    assert not cache.exists() or cache.read_text() == ""  # failures are not cached
    assert ext.stats.request_failures == 1


def test_key_never_logged_or_written(tmp_path, lexicon, ontology, caplog):
    cap = "Scaly plaque."
    # the server echoes the Authorization header in a 401 body (some servers do) -> must be redacted everywhere
    with FakeLLM({cap: [(401, '{"error": "invalid key {auth}"}', 0.0)]}) as fake:
        caplog.set_level(logging.DEBUG)
        ext = make_extractor(fake, lexicon, ontology, tmp_path / "c.jsonl")
        r = ext.extract(cap)
        ext.close()
        assert fake.count(cap) == 1  # 401 is permanent: no retry
    assert r.source == "lexicon" and "HTTP 401" in r.note and "***" in r.note
    assert KEY not in r.note
    assert KEY not in caplog.text
    assert KEY not in repr(ext.config)


def test_request_budget(tmp_path, lexicon, ontology):
    caps = [f"Plaque number {i}." for i in range(5)]
    with FakeLLM({}) as fake:
        ext = make_extractor(fake, lexicon, ontology, None, max_requests=2, concurrency=1)
        res = ext.extract_many(caps)
        assert fake.count() == 2
    assert [r.source for r in res] == ["llm", "llm", "lexicon", "lexicon", "lexicon"]
    assert "request budget of 2 exhausted" in res[2].note


# --- the CLI with --extractor llm ------------------------------------------------------------------------------------
def test_cli_llm_end_to_end(tmp_path, monkeypatch, caplog, ontology):
    gold = golden_rows()
    cols = ["filename", "caption", "ontology_final", "skin_concept_standarized"]
    # rows 1-5 keep their fields (no request), rows 6-10 need extraction; row 10 gets a malformed answer
    rows = [dict(g) if i < 5 else dict(g, ontology_final="", skin_concept_standarized="") for i, g in enumerate(gold)]
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    ont = tmp_path / "ont.json"
    ont.write_text(json.dumps({n: list(ontology.lookup(n)) for n in ontology.names()}))
    answers = ANSWERS_FOR_GOLDEN[:9] + ['{"disease": "contact dermatitis", "concepts": ["vesicle", "erythe']
    script = {g["caption"]: [(200, a, 0.0)] for g, a in zip(gold, answers)}
    out, rej, cache, summ = (tmp_path / n for n in ("out.csv", "rej.csv", "cache.jsonl", "s.json"))
    args = [str(inp), "-o", str(out), "--rejects", str(rej), "--extractor", "llm", "--ontology", str(ont),
            "--llm-cache", str(cache), "--llm-backoff", "0", "--summary-json", str(summ), "--no-progress",
            "--provenance", "-v"]  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with FakeLLM(script) as fake:
        monkeypatch.setenv("MAKE_LLM_BASE_URL", fake.base_url)
        monkeypatch.setenv("MAKE_LLM_MODEL", "fake-model")
        monkeypatch.setenv("MAKE_LLM_API_KEY", KEY)
        assert main(args) == 0
        assert fake.count() == 5  # only the rows lacking fields
        with open(out, newline="", encoding="utf-8") as fh:
            res = list(csv.DictReader(fh))
        assert [r["disease_source"] for r in res] == ["field"] * 5 + ["llm"] * 4 + ["lexicon"]
        for i in range(5):
            assert res[i]["ontology_caption"] == gold[i]["ontology_caption"]
            assert res[i]["visual_concept_caption"] == gold[i]["visual_concept_caption"]
        for i in (5, 7, 8):  # answers name the gold disease; concepts as answered (vocabulary only)
            assert res[i]["ontology_caption"] == gold[i]["ontology_caption"]
        assert res[5]["visual_concept_caption"] == "This skin photo shows erythema, patch."
        assert res[6]["ontology_caption"] == "This is a skin photo diagnosed as hereditary, keratosis, keratosis pilaris."
        assert res[6]["visual_concept_caption"] == "This skin photo shows papule."
        assert res[8]["visual_concept_caption"] == "This skin photo shows erosion, crust, exudate."
        # row 10: truncated answer -> lexicon fallback (no disease in the ontology, concepts from the caption)
        assert res[9]["ontology_caption"] == ""
        assert res[9]["visual_concept_caption"] == "This skin photo shows vesicle, erythema, plaque."
        assert res[9]["knowledge_masks"] == "[1, 0, 1]"
        with open(rej, newline="", encoding="utf-8") as fh:
            issues = list(csv.DictReader(fh))
        fallback = [i for i in issues if i["action"] == "lexicon fallback"]
        assert [(i["row"], i["field"]) for i in fallback] == [("10", "(llm)")]
        assert "truncated JSON" in fallback[0]["reason"]
        # rerun: zero requests, same output
        out2 = tmp_path / "out2.csv"
        args2 = [out2 if a == str(out) else a for a in args]
        assert main([str(a) for a in args2]) == 0
        assert fake.count() == 5
        assert out2.read_text() == out.read_text()
    s = json.loads(summ.read_text())
    assert s["llm"]["requests"] == 0 and s["llm"]["cache hits"] == 5
    for path in (out, rej, cache, summ):
        assert KEY not in path.read_text()
    assert KEY not in caplog.text


def test_cli_llm_needs_env(tmp_path, monkeypatch, capsys):
    for v in ("MAKE_LLM_BASE_URL", "MAKE_LLM_MODEL", "MAKE_LLM_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    inp = tmp_path / "in.csv"
    inp.write_text("filename,caption\na.png,Plaque.\n")
    assert main([str(inp), "-o", str(tmp_path / "o.csv"), "--extractor", "llm", "--no-progress", "-q"]) == 2
    assert "MAKE_LLM_BASE_URL" in capsys.readouterr().err
