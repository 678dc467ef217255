"""Offline (dictionary) extraction of the disease and the visual concepts named in a caption.

Concepts: the 64-concept vocabulary of ``make_jax/resources/ConceptTerms.json`` (concept -> synonyms). A concept
is found when one of its surface forms occurs as a whole word or phrase (case-insensitive, letters on either
side break the match, hyphens do not: "erythematous-violaceous" finds erythema and purple). Surface forms are:
the concept name (split at "/" and "(...)": "purpura/petechiae" -> purpura, petechiae), its synonyms from the
JSON minus ``EXCLUDED_SYNONYMS`` (disease names and words too generic to mean the concept in free text, e.g.
"dermatitis" listed under plaque), the hand-written derived forms of ``EXTRA_FORMS`` (both read from
``make_jax/resources/concept_forms.json``; erythematous -> erythema,
scaly/scaling -> scale, crusted/crusting -> crust, papular -> papule, ...) and simple plurals (+s, +es,
-a -> -ae, -y -> -ies, on the last word of a phrase). A surface form shared by two concepts belongs to the first
one in the JSON's order. Matching is leftmost-longest; the result lists each concept once, in order of first
mention.

Diseases: an ``Ontology`` maps disease names to their hierarchy path (general -> specific). The first disease
mentioned in the caption wins (longest name at that position); its path becomes the disease text.

Negation (both): a mention is dropped when, within the same clause, one of ``NEGATION_CUES`` ("no", "not",
"without", "absence of", "lack of", "free of", "negative for", "denies", "neither", "nor", ...) precedes it by at
most 5 words, when "non"/"non-" is glued to it ("non-scaly"), or when "absent" / "not seen|present|observed|noted|
visible" follows it within 4 words. Clauses end at . ; : ! ? ( ) and at "but", "however", "although", "though",
"except", "yet", "with", "which", "whereas" (a comma does not end the scope: "no scale, crust or erosion" negates
all three).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from make_jax.errors import InputError
from make_jax.records.csv_io import is_missing, split_list_field

# --- concept vocabulary --------------------------------------------------------------------------------------------
#: make_jax/resources/concept_forms.json: the hand-written additions to ConceptTerms.json for text matching.
_FORMS = json.loads(resources.files("make_jax.resources").joinpath("concept_forms.json").read_text(encoding="utf-8"))
#: (concept, synonym) pairs of ConceptTerms.json not used for text matching, and why.
EXCLUDED_SYNONYMS: dict[tuple[str, str], str] = {(e["concept"], e["synonym"]): e["why"]
                                                 for e in _FORMS["excluded_synonyms"]}
#: Derived word forms (adjectives, participles, variant spellings) per concept, written by hand.
EXTRA_FORMS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _FORMS["extra_forms"].items()}

NEGATION_CUES = (
    "no", "not", "without", "absence of", "absent", "lack of", "lacking", "free of", "negative for", "denies",
    "denied", "neither", "nor", "never", "none",
)  # fmt: skip
_NEG_WINDOW = 5
_NEG_PRE = re.compile(r"(?<![a-z])(?:" + "|".join(re.escape(c) for c in NEGATION_CUES) + r")(?![a-z])", re.I)
_NEG_POST = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:absent|not\s+(?:seen|present|observed|noted|visible|evident))(?![a-z])", re.I
)
_CLAUSE_END = re.compile(
    r"[.;:!?()\[\]]|(?<![a-z])(?:but|however|although|though|except|yet|with|which|whereas)(?![a-z])", re.I
)
_NON_PREFIX = re.compile(r"non[\s-]?$", re.I)


def _plurals(form: str) -> set[str]:
    """Simple plural forms of the last word of ``form``."""
    head, _, last = form.rpartition(" ")
    pre = head + " " if head else ""
    out = {form}
    if not last.isalpha() or len(last) < 3:
        return out
    out.add(pre + last + "s")
    if last.endswith(("s", "x", "z", "ch", "sh")):
        out.add(pre + last + "es")
    if last.endswith("a"):
        out.add(pre + last + "e")
    if last.endswith("y") and last[-2:-1] not in "aeiou":
        out.add(pre + last[:-1] + "ies")
    return out


def _variants(form: str) -> set[str]:
    """Hyphen/space variants: 'pus-filled lump' also matches 'pus filled lump'."""
    out = {form}
    if "-" in form:
        out.add(form.replace("-", " "))
    return out


def _name_parts(concept: str) -> list[str]:
    """'brown(hyperpigmentation)' -> ['brown', 'hyperpigmentation']; 'purpura/petechiae' -> both halves."""
    m = re.match(r"^(.*?)\s*\((.*)\)\s*$", concept)
    parts = [m.group(1), m.group(2)] if m else [concept]
    out: list[str] = []
    for p in parts:
        out.extend(x.strip() for x in p.split("/") if x.strip())
    return out


def _trie_pattern(forms: Iterable[str]) -> str:
    """A regex alternation of ``forms`` factored as a character trie (fast with Python's backtracking ``re``);
    a space in a form matches any whitespace run. Alternatives are ordered so that a longer form is tried
    before its prefix; with the word-boundary lookahead this gives the longest match at each position."""
    trie: dict = {}
    for f in forms:
        node = trie
        for ch in " ".join(f.split()):
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        alts = []
        for ch in sorted(k for k in node if k):
            alts.append((r"\s+" if ch == " " else re.escape(ch)) + build(node[ch]))
        if "" in node:
            alts.append("")  # end of a form: tried last
        if not alts:
            return ""
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    return build(trie)


def _form_regex(forms: Iterable[str]) -> re.Pattern[str]:
    """Whole-word/phrase matcher for ``forms`` (case-insensitive; letters may not touch either end)."""
    return re.compile(r"(?<![A-Za-z])" + _trie_pattern(set(forms)) + r"(?![A-Za-z])", re.I)


def is_negated(text: str, start: int, end: int) -> bool:
    """Is the mention text[start:end] negated (see module doc)?"""
    if _NON_PREFIX.search(text[max(0, start - 4) : start]):
        return True
    # pre-negation: a cue in the same clause, at most _NEG_WINDOW words before the mention
    left = text[:start]
    ends = list(_CLAUSE_END.finditer(left))
    clause = left[ends[-1].end() :] if ends else left
    cues = list(_NEG_PRE.finditer(clause))
    if cues:
        between = clause[cues[-1].end() :]
        if len(re.findall(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*", between)) <= _NEG_WINDOW:
            return True
    # post-negation within the clause
    right = text[end:]
    m = _CLAUSE_END.search(right)
    clause_r = right[: m.start()] if m else right
    return bool(_NEG_POST.search(clause_r))


class ConceptLexicon:
    """Concept vocabulary with surface forms; ``extract(text)`` -> concept names in order of first mention."""

    def __init__(self, terms: Mapping[str, Sequence[str]], excluded: Mapping[tuple[str, str], str] | None = None):
        excluded = EXCLUDED_SYNONYMS if excluded is None else excluded
        self.concepts: list[str] = list(terms)
        self.form_to_concept: dict[str, str] = {}
        for concept, synonyms in terms.items():
            forms: list[str] = _name_parts(concept)
            forms += [s for s in synonyms if (concept, s) not in excluded]
            forms += list(EXTRA_FORMS.get(concept, ()))
            expanded: set[str] = set()
            for f in forms:
                for v in _variants(f.strip().lower()):
                    expanded |= _plurals(v)
            for f in sorted(expanded):
                key = " ".join(f.split())
                self.form_to_concept.setdefault(key, concept)  # first concept in file order keeps a shared form
        self._lower = {c.lower(): c for c in self.concepts}
        self._regex = _form_regex(self.form_to_concept)

    @classmethod
    def from_json(cls, path: str | os.PathLike | None = None) -> ConceptLexicon:
        """Load ConceptTerms.json (default: the copy shipped in ``make_jax/resources``)."""
        if path is None:
            text = resources.files("make_jax.resources").joinpath("ConceptTerms.json").read_text(encoding="utf-8")
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        data = json.loads(text)
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
        ):
            raise ValueError("concept terms must be a JSON object: concept -> list of synonyms")
        return cls(data)

    def canonical(self, term: str) -> str | None:
        """Map a term to its vocabulary concept: a concept name or any surface form (case-insensitive)."""
        t = " ".join(term.strip().lower().split())
        if t in self._lower:
            return self._lower[t]
        if t in self.form_to_concept:
            return self.form_to_concept[t]
        t2 = t.replace(" (", "(").replace("( ", "(").replace(" )", ")")
        return self._lower.get(t2)

    def mentions(self, text: str) -> list[tuple[int, int, str, bool]]:
        """All (start, end, concept, negated) mentions, leftmost-longest."""
        out = []
        for m in self._regex.finditer(text):
            concept = self.form_to_concept[" ".join(m.group(0).lower().split())]
            out.append((m.start(), m.end(), concept, is_negated(text, m.start(), m.end())))
        return out

    def extract(self, text: str) -> list[str]:
        """Concepts mentioned (not negated) in ``text``, each once, in order of first mention."""
        seen: dict[str, None] = {}
        for _, _, concept, negated in self.mentions(text):
            if not negated:
                seen.setdefault(concept, None)
        return list(seen)


# --- disease ontology ----------------------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return " ".join(name.strip().lower().split())


MAX_ONTOLOGY_DEPTH = 64  # far beyond any disease hierarchy (Derm1M: 4-6 levels); deeper is a malformed file


class OntologyError(InputError):
    """An ontology file that cannot be read (the message names the file and what is wrong, in one line)."""


class Ontology:
    """Disease name -> hierarchy path (tuple of levels, general -> specific).

    Accepted JSON layouts (``from_json`` / ``from_mapping``):

    1. flat, list path:   {"atopic dermatitis": ["inflammatory", "non-infectious", "atopic dermatitis"]}
    2. flat, string path: {"atopic dermatitis": "inflammatory, non-infectious, atopic dermatitis"}
    3. flat with synonyms: {"atopic dermatitis": {"path": [...], "synonyms": ["atopic eczema"]}}
    4. nested tree:       {"inflammatory": {"non-infectious": {"atopic dermatitis": {}, "eczema": ["nummular
       eczema"]}}} - every node below the top level is a disease whose path is its ancestors plus itself; a list
       holds leaf names; the top-level nodes are categories and are not matched in captions.
    """

    def __init__(self) -> None:
        self._paths: dict[str, tuple[str, ...]] = {}  # normalised name -> path
        self._names: dict[str, str] = {}  # normalised name or synonym -> normalised canonical name
        self._regex: re.Pattern[str] | None = None

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, name: str) -> bool:
        return self.lookup(name) is not None

    def names(self) -> list[str]:
        return list(self._paths)

    def add(self, name: str, path: Sequence[str], synonyms: Iterable[str] = (), overwrite: bool = True) -> None:
        key = _norm(name)
        levels = tuple(" ".join(p.split()) for p in path if p and p.strip())
        if not key or not levels:
            raise ValueError(f"disease entry needs a name and a non-empty path: {name!r} -> {path!r}")
        if overwrite or key not in self._paths:
            self._paths[key] = levels
        for n in (key, *(_norm(s) for s in synonyms)):
            if n and (overwrite or n not in self._names):
                self._names[n] = key
        self._regex = None

    def update(self, other: Ontology) -> Ontology:
        """Entries of ``other`` win on conflicts. Returns self."""
        for n, canon in other._names.items():
            self._names[n] = canon
        self._paths.update(other._paths)
        self._regex = None
        return self

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """Path of a disease name or synonym (case-insensitive; a simple plural of the last word also matches)."""
        key = self._resolve(name)
        return self._paths[self._names[key]] if key is not None else None

    def path_text(self, name: str) -> str | None:
        path = self.lookup(name)
        return ", ".join(path) if path else None

    def _compiled(self) -> re.Pattern[str] | None:
        if self._regex is None and self._names:
            forms: set[str] = set()
            for n in self._names:
                if len(n) >= 3:
                    forms |= _plurals(n)
            self._regex = _form_regex(forms) if forms else None
        return self._regex

    def find(self, text: str) -> tuple[str, tuple[str, ...]] | None:
        """First non-negated disease mention in ``text`` -> (canonical name, path), or None."""
        rx = self._compiled()
        if rx is None:
            return None
        for m in rx.finditer(text):
            if is_negated(text, m.start(), m.end()):
                continue
            key = self._resolve(m.group(0))
            if key is not None:
                canon = self._names[key]
                return canon, self._paths[canon]
        return None

    def _resolve(self, name: str) -> str | None:
        """The known name (or synonym) that ``name`` spells, allowing a simple plural of the last word."""
        key = _norm(name)
        cands = [key]
        if key.endswith("ies"):
            cands.append(key[:-3] + "y")
        if key.endswith("es"):
            cands.append(key[:-2])
        if key.endswith(("s", "ae")):
            cands.append(key[:-1])
        for cand in cands:
            if cand in self._names:
                return cand
        return None

    # -- construction --
    @classmethod
    def from_mapping(cls, data: object) -> Ontology:
        ont = cls()
        if isinstance(data, list):  # [{"name": ..., "path": [...]}, ...]
            for item in data:
                if not isinstance(item, dict) or "name" not in item:
                    raise ValueError("list layout needs objects with 'name' and 'path'")
                ont._add_value(item["name"], item)
            return ont
        if not isinstance(data, dict):
            raise ValueError("ontology JSON must be an object or a list")
        nested = any(isinstance(v, dict) and not ({"path", "hierarchy"} & set(v)) for v in data.values())
        if nested:
            for top, sub in data.items():
                ont._add_tree(sub, (str(top),))
        else:
            for name, value in data.items():
                ont._add_value(name, value)
        return ont

    def _add_value(self, name: str, value: object) -> None:
        if not isinstance(name, str):
            raise ValueError(f"disease name {name!r} is not a string")
        synonyms: Sequence[str] = ()
        if isinstance(value, dict):
            synonyms = value.get("synonyms", ()) or ()
            if not isinstance(synonyms, (list, tuple)) or not all(isinstance(s, str) for s in synonyms):
                raise ValueError(f"synonyms of {name!r} must be a list of strings")
            value = value.get("path", value.get("hierarchy"))
        if isinstance(value, str):
            path = split_list_field(value)
        elif isinstance(value, list) and all(isinstance(x, str) for x in value):
            path = list(value)
        else:
            raise ValueError(f"path of {name!r} must be a list of strings or a comma-separated string")
        self.add(name, path, synonyms)

    def _add_tree(self, node: object, prefix: tuple[str, ...]) -> None:
        if node is None:
            return
        if len(prefix) > MAX_ONTOLOGY_DEPTH:
            raise ValueError(f"nested deeper than {MAX_ONTOLOGY_DEPTH} levels under {prefix[0]!r}")
        if isinstance(node, dict):
            for child, sub in node.items():
                path = (*prefix, str(child))
                self.add(str(child), path, overwrite=False)
                self._add_tree(sub, path)
        elif isinstance(node, list):
            for leaf in node:
                if isinstance(leaf, str):
                    self.add(leaf, (*prefix, leaf), overwrite=False)
                else:
                    self._add_tree(leaf, prefix)
        elif isinstance(node, str):
            self.add(node, (*prefix, node), overwrite=False)
        else:
            raise ValueError(f"unexpected node {node!r} in ontology tree")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Ontology:
        """An ontology JSON file; `OntologyError` (one line naming the file) when it is not valid JSON or not one
        of the layouts `from_mapping` reads."""
        if os.path.isdir(path):
            raise OntologyError(f"{path}: is a directory, not an ontology JSON file")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise OntologyError(f"{path}: not valid UTF-8 JSON ({type(e).__name__}: {e})") from None
        try:
            return cls.from_mapping(data)
        except (ValueError, TypeError) as e:  # user data of the wrong shape (a name that is a list, ...)
            raise OntologyError(f"{path}: malformed ontology ({e})") from None

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, str]], path_col: str = "ontology_final", name_col: str | None = None
    ) -> Ontology:
        """Derive an ontology from table rows that carry both a path and (optionally) the disease names.

        Each row's path (``path_col``, comma-separated, kept verbatim) is attached to every name in ``name_col``
        (comma-separated; without that column, to the path's last level). A name seen with several paths takes the
        path of the rows where it is the only name (it is then the whole diagnosis), most frequent first, ties to
        the first seen; otherwise the most frequent of all its paths.
        """
        solo: dict[str, Counter] = {}
        any_: dict[str, Counter] = {}
        order: dict[tuple[str, ...], int] = {}
        for row in rows:
            p = row.get(path_col)
            if is_missing(p):
                continue
            try:
                path = tuple(split_list_field(p))
            except ValueError:
                continue
            names: list[str]
            raw_names = row.get(name_col) if name_col else None
            if name_col and not is_missing(raw_names):
                try:
                    names = split_list_field(raw_names)
                except ValueError:
                    continue
            else:
                names = [path[-1]]
            order.setdefault(path, len(order))
            for n in names:
                key = _norm(n)
                any_.setdefault(key, Counter())[path] += 1
                if len(names) == 1:
                    solo.setdefault(key, Counter())[path] += 1
        ont = cls()
        for key, counts in any_.items():
            pool = solo.get(key) or counts
            best = min(pool, key=lambda pth: (-pool[pth], order[pth]))
            ont.add(key, best)
        return ont


# --- the extractor -------------------------------------------------------------------------------------------------
@dataclass
class Extraction:
    """What an extractor found in one caption. ``disease_path`` is '' when no disease was found."""

    disease: str | None = None
    disease_path: str = ""
    concepts: list[str] = field(default_factory=list)
    source: str = "none"  # 'lexicon' | 'llm' | 'none'
    note: str = ""  # why the result came from a fallback, if it did

    @property
    def concept_list(self) -> str:
        return ", ".join(self.concepts)


class LexiconExtractor:
    """Dictionary extractor: ``extract(caption)`` -> ``Extraction`` (disease from the ontology, concepts)."""

    source = "lexicon"

    def __init__(self, concepts: ConceptLexicon | None = None, ontology: Ontology | None = None):
        self.concepts = concepts if concepts is not None else ConceptLexicon.from_json()
        self.ontology = ontology if ontology is not None else Ontology()

    def extract(self, caption: str) -> Extraction:
        found = self.ontology.find(caption)
        disease, path = (found[0], ", ".join(found[1])) if found else (None, "")
        return Extraction(disease, path, self.concepts.extract(caption), "lexicon")
