"""Optional LLM extraction of the disease and visual concepts from a caption (the paper used Qwen2-72B-Instruct).

Talks to any OpenAI-compatible chat endpoint (``POST {base}/chat/completions``) using only the standard library.
Configuration comes from the environment:

* ``MAKE_LLM_BASE_URL`` - e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended unless present)
* ``MAKE_LLM_MODEL``    - the model name the server expects
* ``MAKE_LLM_API_KEY``  - optional bearer token. It is sent only in the Authorization header and is never
  logged, cached, or written into reasons: every message this module produces passes through ``redact``.

The model is asked for strict JSON ``{"disease": str|null, "concepts": [str]}`` with concepts restricted to the
vocabulary (``PROMPT_VERSION`` names the prompt). ``parse_answer`` accepts the common deviations (a ```json
fence, prose around the object, single quotes / Python literals) and rejects the rest (empty, ``null``, non-JSON,
truncated JSON, missing keys, wrong types) with a reason; concepts outside the vocabulary are mapped through the
lexicon's surface forms ("scaly" -> scale) or dropped and noted. A rejected answer or a failed request makes the
row fall back to the lexicon result, with the reason recorded.

Requests run in a thread pool (``concurrency``) and are retried with exponential backoff (``backoff * 2**k``,
capped at ``max_backoff``, honouring ``Retry-After``) on HTTP 408/409/425/429/5xx, timeouts and dropped
connections; other HTTP errors are permanent. Every successful answer (parsable or not) is cached on disk in a
JSONL file keyed by sha256(model, prompt version, caption), so a rerun makes no request for a cached caption.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, field

from .lexicon import ConceptLexicon, Extraction, LexiconExtractor, Ontology

log = logging.getLogger(__name__)

PROMPT_VERSION = "make-knowledge-v1"
ENV_BASE_URL = "MAKE_LLM_BASE_URL"
ENV_MODEL = "MAKE_LLM_MODEL"
ENV_API_KEY = "MAKE_LLM_API_KEY"

RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))

SYSTEM_PROMPT = (
    "You are a dermatologist who turns image captions into structured knowledge. "
    "Answer with a single JSON object and nothing else."
)

USER_TEMPLATE = """Caption of a dermatology image:
\"\"\"{caption}\"\"\"

Return a JSON object with exactly these two keys:
"disease": the one primary skin disease or diagnosis that the caption states, in lower case, as written in the \
caption; null if the caption states no diagnosis. Do not infer a diagnosis from the appearance, and leave out body \
sites, severity, causes and secondary conditions.
"concepts": the visible lesion attributes the caption describes, as a list of terms taken only from this \
vocabulary: {vocabulary}. Map close wording to the vocabulary term (for example "erythematous" -> "erythema", \
"scaly" -> "scale", "crusted" -> "crust"). Leave out attributes the caption negates (such as "no scale"), disease \
names, body locations and symptoms. Use [] when none apply.

Example caption: \"\"\"Grouped vesicles on an erythematous base in a child with contact dermatitis; no crusting.\"\"\"
Example answer: {{"disease": "contact dermatitis", "concepts": ["vesicle", "erythema"]}}"""

_NO_DISEASE = {"", "none", "null", "n/a", "na", "unknown", "no definitive diagnosis", "[no definitive diagnosis]"}


# --- prompts ---------------------------------------------------------------------------------------------------------
ANSWER_KINDS = ("json", "disease", "concepts")


@dataclass(frozen=True)
class PromptRequest:
    """One chat request per caption. ``user`` is a ``str.format`` template with ``{caption}`` (required) and
    ``{vocabulary}`` (optional; literal braces written ``{{ }}``). ``answer``: 'json' (one object with "disease"
    and "concepts", ``parse_answer``), 'disease' (one term in square brackets, e.g. "[Psoriasis]" or
    "[No definitive diagnosis]") or 'concepts' (a bracketed comma list, e.g. "[papule, crust]" or
    "[No matching attributes]"); with bracket answers the last bracketed group of the reply is read."""

    system: str
    user: str
    answer: str = "json"


@dataclass(frozen=True)
class PromptSpec:
    """The prompts of the extractor: a name (part of the cache key) and one or more requests per caption."""

    name: str
    requests: tuple[PromptRequest, ...]


DEFAULT_PROMPT = PromptSpec(PROMPT_VERSION, (PromptRequest(SYSTEM_PROMPT, USER_TEMPLATE, "json"),))


def load_prompt_file(path: str | os.PathLike) -> PromptSpec:
    """A prompt file (JSON): ``{"name": str, "requests": [{"system": str, "user": str, "answer": kind}, ...]}``.
    Either one 'json' request, or a 'disease' and/or a 'concepts' request (as the paper's two prompts). Raises
    ValueError naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the prompt file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ValueError(f"{path}: needs a non-empty string 'name'")
    reqs = data.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise ValueError(f"{path}: needs a non-empty list 'requests'")
    out = []
    for i, r in enumerate(reqs):
        where = f"{path}: requests[{i}]"
        if not isinstance(r, dict) or set(r) - {"system", "user", "answer"}:
            raise ValueError(f"{where}: an object with keys system, user, answer only")
        for k in ("system", "user"):
            if not isinstance(r.get(k), str):
                raise ValueError(f"{where}.{k}: must be a string")
        answer = r.get("answer", "json")
        if answer not in ANSWER_KINDS:
            raise ValueError(f"{where}.answer: one of {ANSWER_KINDS}, got {answer!r}")
        try:
            r["user"].format(caption="", vocabulary="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{where}.user: bad template ({e!r}); use {{caption}}, {{vocabulary}}, and {{{{ }}}} for "
                             "literal braces") from None
        if "{caption}" not in r["user"]:
            raise ValueError(f"{where}.user: the template has no {{caption}}")
        out.append(PromptRequest(r["system"], r["user"], answer))
    kinds = [q.answer for q in out]
    if ("json" in kinds and len(kinds) > 1) or len(set(kinds)) != len(kinds):
        raise ValueError(f"{path}: requests must be one 'json' request, or at most one 'disease' and one "
                         f"'concepts' request; got {kinds}")
    return PromptSpec(data["name"].strip(), tuple(out))


def build_messages(caption: str, vocabulary: Sequence[str],
                   request: PromptRequest = DEFAULT_PROMPT.requests[0]) -> list[dict[str, str]]:
    """The chat messages of one request for one caption."""
    vocab = ", ".join(f'"{v}"' for v in vocabulary)
    return [
        {"role": "system", "content": request.system},
        {"role": "user", "content": request.user.format(caption=caption.strip(), vocabulary=vocab)},
    ]


def prompt_version(vocabulary: Sequence[str], spec: PromptSpec = DEFAULT_PROMPT) -> str:
    """The prompt's name plus a short hash of the vocabulary (a changed vocabulary is a changed prompt) and, for
    a prompt file, of its requests (a changed prompt text is a changed prompt)."""
    h = hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()[:10]
    if spec == DEFAULT_PROMPT:
        return f"{PROMPT_VERSION}+{h}"
    body = json.dumps([dataclasses.astuple(r) for r in spec.requests], ensure_ascii=False)
    return f"{spec.name}+{h}+{hashlib.sha256(body.encode()).hexdigest()[:10]}"


def cache_key(model: str, version: str, caption: str) -> str:
    return hashlib.sha256(json.dumps([model, version, caption], ensure_ascii=False).encode()).hexdigest()


# --- answer parsing ------------------------------------------------------------------------------------------------
@dataclass
class ParsedAnswer:
    """Result of ``parse_answer``: ``ok`` False means the answer is unusable and ``error`` says why."""

    ok: bool
    disease: str | None = None
    concepts: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # concepts outside the vocabulary
    error: str = ""


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(?:```|$)", re.S)


def _json_object_span(text: str) -> tuple[int, int] | None | str:
    """(start, end) of the first balanced {...} (string-aware, both quote styles); None if no '{'; 'truncated'
    if the object never closes."""
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    quote = ""
    esc = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return start, i + 1
    return "truncated"


def _loads_lenient(s: str) -> object:
    try:
        return json.loads(s)
    except ValueError:
        pass
    py = re.sub(r"(?<![\w'\"])(null|true|false)(?![\w'\"])", lambda m: {"null": "None", "true": "True",
                                                                         "false": "False"}[m.group(1)], s)
    return ast.literal_eval(py)


def parse_answer(text: str | None, lexicon: ConceptLexicon) -> ParsedAnswer:
    """Parse a model answer into (disease, vocabulary concepts). Never raises."""
    try:
        return _parse_answer(text, lexicon)
    except Exception as e:  # noqa: BLE001 - a parser bug must not take the run down
        return ParsedAnswer(False, error=f"unparsable answer ({type(e).__name__})")


def _parse_answer(text: str | None, lexicon: ConceptLexicon) -> ParsedAnswer:
    if text is None or not text.strip():
        return ParsedAnswer(False, error="empty answer")
    body = text.strip()
    fence = _FENCE.search(body)
    if fence and "{" in fence.group(1):
        body = fence.group(1).strip()
    span = _json_object_span(body)
    if span is None:
        if body.strip().lower() in ("null", "none"):
            return ParsedAnswer(False, error="answer is null")
        return ParsedAnswer(False, error="no JSON object in answer")
    if span == "truncated":
        return ParsedAnswer(False, error="truncated JSON object")
    raw = body[span[0] : span[1]]
    try:
        obj = _loads_lenient(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return ParsedAnswer(False, error="invalid JSON object")
    if not isinstance(obj, dict):
        return ParsedAnswer(False, error="answer is not a JSON object")
    keys = {str(k).strip().lower(): v for k, v in obj.items()}
    missing = [k for k in ("disease", "concepts") if k not in keys]
    if missing:
        return ParsedAnswer(False, error="missing key " + ", ".join(repr(k) for k in missing))
    disease = keys["disease"]
    if isinstance(disease, list) and len(disease) == 1 and isinstance(disease[0], str):
        disease = disease[0]
    if disease is not None and not isinstance(disease, str):
        return ParsedAnswer(False, error=f"'disease' is a {type(disease).__name__}, not a string or null")
    if isinstance(disease, str):
        disease = " ".join(disease.split()).strip(" .")
        if disease.lower() in _NO_DISEASE:
            disease = None
    concepts = keys["concepts"]
    if concepts is None:
        concepts = []
    elif isinstance(concepts, str):
        concepts = [c for c in (x.strip() for x in concepts.split(",")) if c]
    if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
        return ParsedAnswer(False, error="'concepts' is not a list of strings")
    kept: dict[str, None] = {}
    dropped: list[str] = []
    for c in concepts:
        canon = lexicon.canonical(c)
        if canon is None:
            found = lexicon.extract(c)
            canon = found[0] if len(found) == 1 else None
        if canon is None:
            dropped.append(c)
        else:
            kept.setdefault(canon, None)
    return ParsedAnswer(True, disease, list(kept), dropped)


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NO_CONCEPTS = {"", "no matching attributes", "none", "n/a"}


def _last_bracketed(text: str) -> str | None:
    found = _BRACKETS.findall(text or "")
    return found[-1].strip() if found else None


def parse_disease_answer(text: str) -> ParsedAnswer:
    """A 'disease' answer: the last "[...]" of the reply is the diagnosis ("[No definitive diagnosis]": none)."""
    inner = _last_bracketed(text)
    if inner is None:
        return ParsedAnswer(False, error="no [bracketed] diagnosis in the answer")
    disease = " ".join(inner.split()).strip(" .")
    return ParsedAnswer(True, None if disease.lower() in _NO_DISEASE else disease)


def parse_concepts_answer(text: str, lexicon: ConceptLexicon) -> ParsedAnswer:
    """A 'concepts' answer: the last "[a, b, ...]" of the reply, each term mapped to the vocabulary as in
    ``parse_answer`` ("[No matching attributes]": none)."""
    inner = _last_bracketed(text)
    if inner is None:
        return ParsedAnswer(False, error="no [bracketed] attribute list in the answer")
    if inner.lower().strip(" .") in _NO_CONCEPTS:
        return ParsedAnswer(True, None, [])
    terms = [t.strip().strip("'\"") for t in inner.split(",") if t.strip()]
    return parse_answer(json.dumps({"disease": None, "concepts": terms}), lexicon)


# --- HTTP client ---------------------------------------------------------------------------------------------------
# Bytes of an HTTP error body read for the message (redacted whole, then shortened to 120 characters).
ERROR_BODY_BYTES = 1 << 16

class LLMError(RuntimeError):
    """A request that failed for good (after retries, or a permanent HTTP error). The message is redacted."""


@dataclass
class LLMConfig:
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    timeout: float = 60.0
    max_retries: int = 4  # retries after the first attempt
    backoff: float = 1.0  # seconds; attempt k waits backoff * 2**k (+ up to 10% jitter)
    max_backoff: float = 60.0
    concurrency: int = 4
    max_tokens: int = 256
    temperature: float = 0.0
    json_mode: bool = False  # send response_format={"type": "json_object"} (not every server supports it)
    max_requests: int | None = None  # stop asking after this many HTTP requests (then: lexicon fallback)

    def __repr__(self) -> str:  # never show the key
        return f"LLMConfig(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self.api_key else ''!r})"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> LLMConfig:
        env = os.environ if env is None else env
        base, model = env.get(ENV_BASE_URL, "").strip(), env.get(ENV_MODEL, "").strip()
        missing = [n for n, v in ((ENV_BASE_URL, base), (ENV_MODEL, model)) if not v]
        if missing:
            raise ValueError("the LLM extractor needs the environment variable(s) " + ", ".join(missing))
        return cls(base_url=base, model=model, api_key=env.get(ENV_API_KEY, "").strip(), **overrides)

    @property
    def safe_endpoint(self) -> str:
        """The endpoint without user info or query string (for logs)."""
        u = urllib.parse.urlsplit(self.endpoint)
        host = u.hostname or ""
        if u.port:
            host += f":{u.port}"
        return urllib.parse.urlunsplit((u.scheme, host, u.path, "", ""))

    @property
    def endpoint(self) -> str:
        url = self.base_url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ChatClient:
    """Minimal OpenAI-compatible chat client (urllib) with retries. Thread-safe; counts its requests."""

    def __init__(self, config: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.failures = 0
        self._opener = urllib.request.build_opener()

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the API key replaced by '***'. Redact whole texts, before any cut: a
        key that straddles a cut would leave its first characters."""
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def _take_request_slot(self) -> None:
        with self._lock:
            cap = self.config.max_requests
            if cap is not None and self.requests >= cap:
                raise LLMError(f"request budget of {cap} exhausted")
            self.requests += 1

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.config.backoff * (2**attempt)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        delay = min(delay, self.config.max_backoff)
        delay += random.uniform(0, 0.1 * delay) if delay > 0 else 0.0
        with self._lock:
            self.retries += 1
        self._sleep(delay)

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant message content. Raises LLMError (redacted) when the request fails for good."""
        cfg = self.config
        payload = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                   "max_tokens": cfg.max_tokens}  # fmt: skip
        if cfg.json_mode:
            payload["response_format"] = {"type": "json_object"}
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        last = ""
        for attempt in range(cfg.max_retries + 1):
            self._take_request_slot()
            req = urllib.request.Request(cfg.endpoint, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with self._opener.open(req, timeout=cfg.timeout) as resp:
                    body = resp.read()
                return self._content(body)
            except urllib.error.HTTPError as e:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                snippet = ""
                try:
                    # Redacted before the cut to 120 characters below (a key straddling it would leave a prefix).
                    # The read limit is far past that cut, so a key cut by the read is never shown.
                    snippet = self.redact(e.read(ERROR_BODY_BYTES).decode("utf-8", "replace"))
                except Exception:  # noqa: BLE001 - an unreadable error body: the status code alone is reported
                    pass
                last = f"HTTP {e.code}" + (f": {' '.join(snippet.split())[:120]}" if snippet else "")
                if e.code not in RETRY_STATUS:
                    break
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    http.client.HTTPException) as e:  # fmt: skip
                reason = getattr(e, "reason", e)
                last = f"{type(e).__name__}: {reason}"
            except LLMError as e:  # a 200 whose body is not a chat completion: permanent
                last = str(e)
                break
            if attempt < cfg.max_retries:
                log.debug("LLM request failed (%s); retry %d", self.redact(last), attempt + 1)
                self._wait(attempt, retry_after)
        with self._lock:
            self.failures += 1
        n = attempt + 1
        raise LLMError(self.redact(f"{last} after {n} attempt{'s' if n > 1 else ''}"))

    def _content(self, body: bytes) -> str:
        try:
            obj = json.loads(body.decode("utf-8", "replace"))
            content = obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError("malformed chat completion response") from None
        return "" if content is None else str(content)


# --- on-disk cache -------------------------------------------------------------------------------------------------
class AnswerCache:
    """JSONL cache of raw model answers: one line {"key", "model", "prompt_version", "content"} per caption.

    Loaded into memory at start; appended (and flushed) as answers arrive; unreadable lines are skipped.
    Holds no credentials and no request headers.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fh = None
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self._data[rec["key"]] = rec["content"]
                    except (ValueError, KeyError, TypeError):
                        continue

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, model: str, version: str, content: str) -> None:
        with self._lock:
            self._data[key] = content
            if self.path:
                if self._fh is None:
                    d = os.path.dirname(os.path.abspath(self.path))
                    os.makedirs(d, exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")
                rec = {"key": key, "model": model, "prompt_version": version, "content": content}
                self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


# --- the extractor -------------------------------------------------------------------------------------------------
@dataclass
class LLMStats:
    captions: int = 0
    cache_hits: int = 0
    answered: int = 0
    parse_failures: int = 0
    request_failures: int = 0
    dropped_concepts: int = 0
    unknown_diseases: int = 0


class LLMExtractor:
    """Extract with the LLM, falling back to the lexicon per caption. ``extract_many`` keeps input order.

    ``unknown_disease``: what to do with a disease name the ontology does not know (after trying the ontology's
    own matcher on the name): 'drop' (default; the disease text must be a path of the ontology) or 'keep' (use
    the name alone as a one-level path).
    """

    source = "llm"

    def __init__(
        self,
        config: LLMConfig,
        lexicon: LexiconExtractor,
        cache_path: str | os.PathLike | None = None,
        unknown_disease: str = "drop",
        sleep: Callable[[float], None] = time.sleep,
        prompt: PromptSpec = DEFAULT_PROMPT,
    ):
        if unknown_disease not in ("drop", "keep"):
            raise ValueError("unknown_disease must be 'drop' or 'keep'")
        self.config = config
        self.lexicon = lexicon
        self.client = ChatClient(config, sleep=sleep)
        self.cache = AnswerCache(cache_path)
        self.vocabulary = list(lexicon.concepts.concepts)
        self.prompt = prompt
        self.version = prompt_version(self.vocabulary, prompt)
        self.unknown_disease = unknown_disease
        self.stats = LLMStats()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.cache.close()

    def _answer(self, caption: str, k: int = 0) -> tuple[str | None, str]:
        """(raw answer to request k of the prompt or None, failure reason)."""
        version = self.version if k == 0 else f"{self.version}#{k}"
        key = cache_key(self.config.model, version, caption)
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.stats.cache_hits += 1
            return hit, ""
        try:
            content = self.client.complete(build_messages(caption, self.vocabulary, self.prompt.requests[k]))
        except LLMError as e:
            return None, str(e)
        self.cache.put(key, self.config.model, version, content)
        return content, ""

    def _parsed(self, caption: str) -> tuple[ParsedAnswer | None, str]:
        """The prompt's requests for one caption, parsed and combined (None and the reason on any failure)."""
        disease, concepts, dropped = None, [], []
        for k, request in enumerate(self.prompt.requests):
            raw, failure = self._answer(caption, k)
            if raw is None:
                with self._lock:
                    self.stats.request_failures += 1
                return None, f"llm request failed: {failure}"
            if request.answer == "json":
                parsed = parse_answer(raw, self.lexicon.concepts)
            elif request.answer == "disease":
                parsed = parse_disease_answer(raw)
            else:
                parsed = parse_concepts_answer(raw, self.lexicon.concepts)
            if not parsed.ok:
                with self._lock:
                    self.stats.parse_failures += 1
                return None, f"llm answer rejected: {parsed.error}"
            if request.answer in ("json", "disease"):
                disease = parsed.disease
            if request.answer in ("json", "concepts"):
                concepts, dropped = parsed.concepts, parsed.dropped
        return ParsedAnswer(True, disease, concepts, dropped), ""

    def _disease_path(self, name: str) -> tuple[str | None, str, str]:
        """(canonical disease or None, path text, note)."""
        ont: Ontology = self.lexicon.ontology
        path = ont.lookup(name)
        if path is not None:
            return name.lower(), ", ".join(path), ""
        found = ont.find(name)
        if found is not None:
            return found[0], ", ".join(found[1]), ""
        with self._lock:
            self.stats.unknown_diseases += 1
        if self.unknown_disease == "keep":
            return name.lower(), name.lower(), f"disease {name!r} not in ontology, kept as is"
        return None, "", f"disease {name!r} not in ontology, dropped"

    def extract(self, caption: str) -> Extraction:
        with self._lock:
            self.stats.captions += 1
        parsed, failure = self._parsed(caption)
        if parsed is None:
            return self._fallback(caption, failure)
        with self._lock:
            self.stats.answered += 1
            self.stats.dropped_concepts += len(parsed.dropped)
        notes = []
        disease, path = None, ""
        if parsed.disease:
            disease, path, note = self._disease_path(parsed.disease)
            if note:
                notes.append(note)
        if parsed.dropped:
            notes.append("concepts outside the vocabulary dropped: " + ", ".join(parsed.dropped))
        return Extraction(disease, path, parsed.concepts, "llm", self.client.redact("; ".join(notes)))

    def _fallback(self, caption: str, reason: str) -> Extraction:
        ex = self.lexicon.extract(caption)
        ex.note = self.client.redact(reason) + "; used the lexicon"
        return ex

    def extract_many(self, captions: Iterable[str]) -> list[Extraction]:
        """Extract for many captions concurrently (duplicates asked once); results in input order."""
        captions = list(captions)
        unique = list(dict.fromkeys(captions))
        workers = max(1, int(self.config.concurrency))
        if workers == 1 or len(unique) <= 1:
            results = {c: self.extract(c) for c in unique}
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="make-llm") as pool:
                results = dict(zip(unique, pool.map(self.extract, unique)))
        out = []
        for c in captions:
            r = results[c]
            out.append(Extraction(r.disease, r.disease_path, list(r.concepts), r.source, r.note))
        return out
