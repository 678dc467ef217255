"""Build (or check) the MAKE knowledge-set columns of a training table: ``python -m make_jax.knowledge``.

Input: a CSV/TSV with a caption column, and optionally a disease hierarchy path column (Derm1M
``ontology_final``: "inflammatory, non-infectious, atopic dermatitis"), a concept list column (Derm1M
``skin_concept_standarized``: "erythema, scale" or "No visual concepts") and a filename column. Output: the same
table (all input columns kept, in order) with the MAKE columns (docs/data.md) written or overwritten:

    truncated_caption, ontology_caption, visual_concept_caption, augmented_caption, sub_captions,
    subcaption_1..8, sub_caption_mask ("[1, 1, 0, 0, 0, 0, 0, 0]"), knowledge_masks ("[raw, disease, concept]")

Per row: the disease text is ``aspects.disease_text`` over the path column, the concept text
``aspects.concept_text`` over the concept column; a row whose field is empty/missing gets them from the extractor
(``--extractor lexicon`` (default), ``llm`` or ``none``); an explicit "none" value ("No visual concepts", "No
definitive diagnosis") means no text and no extraction. Subtexts split the full caption (``sentences``); the raw
slot is the caption truncated to the budget at a sentence boundary; ``augmented_caption`` (Derm1M†) is
``aspects.dagger_text`` of the raw slot and the two aspect texts.

Bad rows (unreadable, wrong field count, empty filename, empty caption or one without letters) are dropped and
listed in the rejects CSV (row, filename, field, reason, action) together with field-level issues (a malformed
path/concept value is ignored and the extractor used instead; LLM fallbacks). A missing required column stops
the run at once. If the input already has MAKE columns, the recomputed values are compared with them and the
mismatches are reported; ``--check`` only compares (no output table) and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

from make_jax.atomic_io import check_writable
from make_jax.data import schema
from make_jax.errors import one_line
from make_jax.records import csv_io
from make_jax.records.csv_io import MAKE_OUTPUT_COLUMNS, RawRow, TableReader, is_missing, split_list_field
from . import aspects
from .lexicon import ConceptLexicon, Extraction, LexiconExtractor, Ontology
from .sentences import DEFAULT_WORD_BUDGET, TextBudget, default_budget, sentence_spans, split_subtexts, truncate_caption

log = logging.getLogger("make_jax.knowledge")

DEFAULT_CAPTION_COL = "caption"
DEFAULT_ONTOLOGY_COL = "ontology_final"
DEFAULT_CONCEPT_COL = "skin_concept_standarized"
DEFAULT_FILENAME_COL = "filename"
DEFAULT_DISEASE_NAME_COL = "standardized_disease"

PROVENANCE_COLUMNS = ("disease_source", "concept_source", "knowledge_note")
REJECT_COLUMNS = ("row", "filename", "field", "reason", "action")

# Values that state "there is none" (as opposed to "unknown"): no text, mask 0, no extraction.
_EXPLICIT_NONE = re.compile(
    r"^\[?\s*no\s+(?:visual\s+concepts?|(?:definitive\s+)?diagnosis|matching\s+attributes|concepts?|disease)\s*\]?\.?$",
    re.I,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def is_explicit_none(value: str) -> bool:
    """'No visual concepts', 'No definitive diagnosis', '[No matching attributes]', ... (case-insensitive)."""
    return bool(_EXPLICIT_NONE.match(value.strip()))


def knowledge_columns(
    caption: str, disease_path: str, concepts: str, budget: TextBudget | None = None
) -> dict[str, str]:
    """The MAKE columns of one row from its caption, disease path ('' if none) and concept list ('' if none).

    ``budget`` (default: no truncation) bounds the raw slot, ``truncated_caption``.
    """
    caption = caption.strip()
    raw = truncate_caption(caption, budget or TextBudget.none())
    disease = aspects.disease_text(disease_path)
    concept = aspects.concept_text(concepts)
    subs = split_subtexts(caption, schema.NUM_SUBTEXTS)
    cols = {
        csv_io.TRUNCATED_CAPTION: raw,
        csv_io.ONTOLOGY_CAPTION: disease,
        csv_io.VISUAL_CONCEPT_CAPTION: concept,
        csv_io.AUGMENTED_CAPTION: aspects.dagger_text(raw, disease, concept),
        csv_io.SUB_CAPTIONS: str(len(subs)),
    }
    for i, name in enumerate(csv_io.SUBCAPTION_COLUMNS):
        cols[name] = subs[i] if i < len(subs) else ""
    cols[csv_io.SUB_CAPTION_MASK] = csv_io.format_mask(csv_io.subtext_mask(len(subs)))
    cols[csv_io.KNOWLEDGE_MASKS] = csv_io.format_mask([bool(raw), bool(disease), bool(concept)])
    return cols


def _same(column: str, old: str, new: str) -> bool:
    """Compare an existing MAKE cell with the recomputed one (masks and counts by value, text exactly)."""
    old = (old or "").strip()
    if column == csv_io.SUB_CAPTION_MASK or column == csv_io.KNOWLEDGE_MASKS:
        try:
            return csv_io.parse_mask(old) == csv_io.parse_mask(new)
        except ValueError:
            return False
    if column == csv_io.SUB_CAPTIONS:
        try:
            return int(float(old)) == int(new)
        except ValueError:
            return False
    return old == new.strip()


@dataclass
class Columns:
    caption: str = DEFAULT_CAPTION_COL
    ontology: str | None = DEFAULT_ONTOLOGY_COL
    concept: str | None = DEFAULT_CONCEPT_COL
    filename: str | None = DEFAULT_FILENAME_COL
    disease_name: str | None = DEFAULT_DISEASE_NAME_COL


@dataclass
class Issue:
    row: int
    filename: str
    field: str
    reason: str
    action: str

    def as_row(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def _aspect(given: str | None, ex: Extraction | None, attr: str, found: Counter) -> tuple[str, str]:
    """(value, source) of one aspect of a row (disease path or concept list): the CSV field when the row has it
    ("field"), else what the extractor found (its source; `found` counts the rows where it found something),
    else ("", "none")."""
    if given is not None:
        return given, "field"
    if ex is None:
        return "", "none"
    value = getattr(ex, attr)
    if value:
        found[ex.source] += 1
    return value, ex.source


@dataclass
class Summary:
    rows_read: int = 0
    rows_written: int = 0
    rows_dropped: int = 0
    field_issues: int = 0
    disease_source: Counter = field(default_factory=Counter)
    concept_source: Counter = field(default_factory=Counter)
    disease_found: Counter = field(default_factory=Counter)  # extractor source -> rows where it found one
    concept_found: Counter = field(default_factory=Counter)
    subtexts: Counter = field(default_factory=Counter)
    merged_rows: int = 0
    truncated_rows: int = 0
    knowledge_masks: Counter = field(default_factory=Counter)
    drop_reasons: Counter = field(default_factory=Counter)
    compared_columns: list[str] = field(default_factory=list)
    mismatches: Counter = field(default_factory=Counter)
    mismatch_examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    budget: str = ""
    extractor: str = ""
    ontology_size: int = 0
    llm: dict[str, int] = field(default_factory=dict)
    output: str = ""
    rejects: str = ""

    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Counter):
                v = {str(a): b for a, b in sorted(v.items(), key=lambda kv: str(kv[0]))}
            d[f.name] = json.loads(json.dumps(v))
        return d

    def text(self) -> str:
        lines = [
            f"knowledge: {self.rows_read} rows read, {self.rows_written} written, {self.rows_dropped} dropped, "
            f"{self.field_issues} field issues" + (f" (see {self.rejects})" if self.rejects else ""),
        ]
        if self.drop_reasons:
            lines.append("  dropped: " + ", ".join(f"{r} x{n}" for r, n in self.drop_reasons.most_common()))
        src = lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"  # noqa: E731
        lines.append(f"  disease aspect from: {src(self.disease_source)}; extractor found a disease in "
                     f"{sum(self.disease_found.values())}")  # fmt: skip
        lines.append(f"  concept aspect from: {src(self.concept_source)}; extractor found concepts in "
                     f"{sum(self.concept_found.values())}")  # fmt: skip
        lines.append(f"  extractor: {self.extractor}; ontology: {self.ontology_size} diseases")
        lines.append(f"  knowledge_masks [raw, disease, concept]: {src(self.knowledge_masks)}")
        hist = ", ".join(f"{k}:{v}" for k, v in sorted(self.subtexts.items()))
        lines.append(f"  subtexts per row: {hist or '-'}; rows with >8 sentences merged: {self.merged_rows}")
        lines.append(f"  raw caption budget {self.budget}: {self.truncated_rows} rows truncated")
        if self.llm:
            lines.append("  llm: " + ", ".join(f"{k} {v}" for k, v in self.llm.items()))
        if self.compared_columns:
            bad = {c: n for c, n in self.mismatches.items() if n}
            if not bad:
                lines.append(f"  check: all {len(self.compared_columns)} existing MAKE columns match")
            else:
                lines.append("  check: mismatches " + ", ".join(f"{c} {n}" for c, n in bad.items()))
                for c, exs in self.mismatch_examples.items():
                    for ex in exs:
                        lines.append(
                            f"    row {ex['row']} {c}: existing {ex['existing']!r} != rebuilt {ex['rebuilt']!r}"
                        )
        if self.output:
            lines.append(f"  output: {self.output}")
        return "\n".join(lines)


@dataclass
class _Pending:
    number: int
    values: dict[str, str]
    filename: str
    caption: str
    disease_path: str | None  # None -> needs extraction
    concepts: str | None
    disease_src: str
    concept_src: str
    issues: list[Issue]


class KnowledgeBuilder:
    """Row-by-row construction of the MAKE columns (see module doc). Stateless apart from its ``summary``."""

    def __init__(
        self,
        fieldnames: Sequence[str],
        columns: Columns,
        extractor: LexiconExtractor | object | None,
        budget: TextBudget,
        provenance: bool = False,
        max_examples: int = 3,
    ):
        self.columns = columns
        self.extractor = extractor
        self.budget = budget
        self.provenance = provenance
        self.max_examples = max_examples
        self.has_ontology = bool(columns.ontology) and columns.ontology in fieldnames
        self.has_concept = bool(columns.concept) and columns.concept in fieldnames
        self.compare = [c for c in MAKE_OUTPUT_COLUMNS if c in fieldnames]
        out = list(fieldnames) + [c for c in MAKE_OUTPUT_COLUMNS if c not in fieldnames]
        if provenance:
            out += [c for c in PROVENANCE_COLUMNS if c not in out]
        self.output_fields = out
        self.summary = Summary(compared_columns=list(self.compare), budget=budget.describe())

    # -- stage 1: validate the input fields ---------------------------------------------------------------------
    def _field(self, number: int, fname: str, values: dict[str, str], col: str, issues: list[Issue]):
        """(value or None if extraction is needed, source)."""
        v = values.get(col, "")
        if is_missing(v):
            return None, "extractor"
        if is_explicit_none(v):
            return "", "field"
        try:
            return ", ".join(split_list_field(v)), "field"
        except ValueError as e:
            action = "field ignored; extractor used" if self.extractor is not None else "field ignored"
            issues.append(Issue(number, fname, col, str(e), action))
            return None, "extractor"

    def prepare(self, raw: RawRow) -> _Pending | Issue:
        cols = self.columns
        if raw.values is None:
            return Issue(raw.number, "", "(row)", raw.error, "row dropped")
        values = raw.values
        fname = (values.get(cols.filename, "") or "").strip() if cols.filename else ""
        if cols.filename and is_missing(fname):
            return Issue(raw.number, "", cols.filename, "empty filename", "row dropped")
        caption = _CONTROL.sub(" ", values.get(cols.caption, "") or "").strip()
        if is_missing(caption):
            return Issue(raw.number, fname, cols.caption, "empty caption", "row dropped")
        if not any(ch.isalpha() for ch in caption):
            return Issue(raw.number, fname, cols.caption, "caption has no letters", "row dropped")
        issues: list[Issue] = []
        dpath, dsrc, conc, csrc = None, "extractor", None, "extractor"
        if self.has_ontology:
            dpath, dsrc = self._field(raw.number, fname, values, cols.ontology, issues)
        if self.has_concept:
            conc, csrc = self._field(raw.number, fname, values, cols.concept, issues)
        return _Pending(raw.number, values, fname, caption, dpath, conc, dsrc, csrc, issues)

    def needs_extraction(self, p: _Pending) -> bool:
        return self.extractor is not None and (p.disease_path is None or p.concepts is None)

    # -- stage 2: build the columns -------------------------------------------------------------------------------
    def finish(self, p: _Pending, ex: Extraction | None) -> tuple[dict[str, str], list[Issue]]:
        s = self.summary
        issues = list(p.issues)
        name = getattr(self.extractor, "source", "none") if self.extractor is not None else "none"
        dpath, dsrc = _aspect(p.disease_path, ex, "disease_path", s.disease_found)
        conc, csrc = _aspect(p.concepts, ex, "concept_list", s.concept_found)
        note = ex.note if (ex is not None and (p.disease_path is None or p.concepts is None)) else ""
        if note:
            action = "lexicon fallback" if "used the lexicon" in note else "note"
            issues.append(Issue(p.number, p.filename, f"({name})", note, action))
        cols = knowledge_columns(p.caption, dpath, conc, self.budget)
        row = dict(p.values)
        # validation against existing MAKE columns
        for c in self.compare:
            if not _same(c, p.values.get(c, ""), cols[c]):
                s.mismatches[c] += 1
                exs = s.mismatch_examples.setdefault(c, [])
                if len(exs) < self.max_examples:
                    exs.append({"row": str(p.number), "existing": p.values.get(c, ""), "rebuilt": cols[c]})
        row.update(cols)
        if self.provenance:
            row.update(disease_source=dsrc, concept_source=csrc, knowledge_note=note)
        s.rows_written += 1
        s.disease_source[dsrc] += 1
        s.concept_source[csrc] += 1
        n_sub = int(cols[csv_io.SUB_CAPTIONS])
        s.subtexts[n_sub] += 1
        if n_sub == schema.NUM_SUBTEXTS and len(sentence_spans(p.caption)) > schema.NUM_SUBTEXTS:
            s.merged_rows += 1
        if cols[csv_io.TRUNCATED_CAPTION] != p.caption:
            s.truncated_rows += 1
        s.knowledge_masks[cols[csv_io.KNOWLEDGE_MASKS]] += 1
        s.field_issues += len(issues)
        return row, issues

    def process(self, raws: Sequence[RawRow]) -> tuple[list[dict[str, str]], list[Issue]]:
        """Process a chunk of rows (extraction batched, e.g. for the LLM thread pool); output in input order."""
        s = self.summary
        prepared: list[_Pending | Issue] = []
        for raw in raws:
            s.rows_read += 1
            try:
                prepared.append(self.prepare(raw))
            except Exception as e:  # noqa: BLE001 - one row must never stop the run
                reason = f"internal error: {type(e).__name__}: {e}"
                prepared.append(Issue(raw.number, "", "(row)", reason, "row dropped"))
        todo = [p for p in prepared if isinstance(p, _Pending) and self.needs_extraction(p)]
        extractions: dict[int, Extraction] = {}
        if todo:
            extractions = self._extract(todo)
        rows: list[dict[str, str]] = []
        issues: list[Issue] = []
        for p in prepared:
            if isinstance(p, Issue):
                s.rows_dropped += 1
                s.drop_reasons[p.reason if p.field != "(row)" else p.reason.split(":")[0]] += 1
                issues.append(p)
                continue
            try:
                row, its = self.finish(p, extractions.get(p.number))
            except Exception as e:  # noqa: BLE001
                s.rows_dropped += 1
                s.drop_reasons["internal error"] += 1
                issues.extend(p.issues)
                reason = f"internal error: {type(e).__name__}: {e}"
                issues.append(Issue(p.number, p.filename, "(row)", reason, "row dropped"))
                continue
            rows.append(row)
            issues.extend(its)
        return rows, issues

    def _extract(self, todo: list[_Pending]) -> dict[int, Extraction]:
        ext = self.extractor
        many = getattr(ext, "extract_many", None)
        if many is not None:
            results = many([p.caption for p in todo])
            return {p.number: r for p, r in zip(todo, results)}
        out = {}
        for p in todo:
            try:
                out[p.number] = ext.extract(p.caption)
            except Exception as e:  # noqa: BLE001
                out[p.number] = Extraction(source="none", note=f"extractor error: {type(e).__name__}: {e}")
        return out


# --- whole-table driver --------------------------------------------------------------------------------------------
class ColumnError(ValueError):
    """A required column is missing; the message lists the columns found."""


def check_columns(fieldnames: Sequence[str], columns: Columns, explicit: Iterable[str] = ()) -> Columns:
    """Fail on a missing required column; drop optional default columns the table lacks (with a warning).

    Required: the caption column, the filename column (unless disabled with ''), and any column named
    explicitly on the command line (``explicit``: attribute names of ``Columns``).
    """
    explicit = set(explicit)
    found = ", ".join(repr(f) for f in fieldnames) or "(none: empty file or no header)"
    missing = []
    for attr in ("caption", "filename", "ontology", "concept", "disease_name"):
        name = getattr(columns, attr)
        if not name or name in fieldnames:
            continue
        if attr in ("caption", "filename") or attr in explicit:
            missing.append(f"{attr} column {name!r}")
        else:
            if attr != "disease_name":
                log.warning("no %s column %r: every row uses the extractor for it", attr, name)
            setattr(columns, attr, None)
    if missing:
        raise ColumnError(f"missing {', '.join(missing)}; columns found: {found}")
    return columns


def build_ontology(
    input_path: str, columns: Columns, files: Sequence[str] = (), derive: bool = True, delimiter: str | None = None,
    encoding: str | None = None,
) -> tuple[Ontology, int]:
    """Ontology for the lexicon: derived from the input table's rows that have a path (``Ontology.from_rows``),
    updated with the given JSON files (files win). Returns (ontology, number of data rows in the table)."""
    ont = Ontology()
    n = 0
    with TableReader(input_path, delimiter, encoding) as reader:
        if derive and columns.ontology:

            def rows():
                nonlocal n
                for r in reader:
                    n += 1
                    if r.values is not None:
                        yield r.values

            ont = Ontology.from_rows(rows(), columns.ontology, columns.disease_name)
        else:
            n = sum(1 for _ in reader)
    for f in files:
        ont.update(Ontology.from_json(f))
    return ont, n


def _chunks(it: Iterable[RawRow], size: int) -> Iterable[list[RawRow]]:
    buf: list[RawRow] = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def make_budget(spec: str) -> TextBudget:
    """'auto' | 'none' | 'tokens:77' | 'words:35' | 'chars:300' -> TextBudget ('auto': tokens:77 if the
    tokenizer imports, else words:35)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return default_budget(77)
    if spec == "none":
        return TextBudget.none()
    kind, _, num = spec.partition(":")
    try:
        limit = int(num)
    except ValueError:
        raise ValueError(f"bad budget {spec!r}: use auto, none, tokens:N, words:N or chars:N") from None
    if kind == "tokens":
        return TextBudget.tokens(limit)
    if kind == "words":
        return TextBudget.words(limit)
    if kind == "chars":
        return TextBudget.chars(limit)
    raise ValueError(f"bad budget {spec!r}: use auto, none, tokens:N, words:N or chars:N")


def run(args: argparse.Namespace, explicit: Iterable[str] = ()) -> Summary:
    """Run the tool for parsed arguments (see ``build_parser``). Raises ColumnError / ValueError on bad setup."""
    from tqdm import tqdm

    columns = Columns(
        caption=args.caption_col,
        ontology=args.ontology_col or None,
        concept=args.concept_col or None,
        filename=args.filename_col or None,
        disease_name=args.disease_name_col or None,
    )
    encoding = getattr(args, "encoding", None)
    with TableReader(args.input, args.delimiter, encoding) as reader:
        fieldnames = list(reader.fieldnames)
        delimiter = reader.delimiter
    columns = check_columns(fieldnames, columns, explicit)
    if args.output and not args.check and os.path.exists(args.output) and os.path.samefile(args.output, args.input):
        raise ValueError("output must not be the input file")
    if not args.check and not args.output:
        raise ValueError("an output path is required (or use --check)")
    for out in ([] if args.check else [args.output]) + [getattr(args, "rejects", None), args.summary_json]:
        if out:  # before any work (an LLM pass can take hours)
            check_writable(os.path.dirname(os.path.abspath(out)), f"the folder of {out}")
    budget = make_budget(args.budget)
    if getattr(args, "llm_prompt", None) and args.extractor != "llm":
        raise ValueError("--llm-prompt needs --extractor llm")
    if args.budget == "auto" and budget.kind != "tokens":
        log.warning("make_jax.tokenizer unavailable: raw captions budgeted by words (%d)", DEFAULT_WORD_BUDGET)

    extractor = None
    ontology_size = 0
    if args.extractor in ("lexicon", "llm"):
        ontology, n_rows = build_ontology(args.input, columns, args.ontology or (), not args.no_derive_ontology,
                                          args.delimiter, encoding)  # fmt: skip
        ontology_size = len(ontology)
        lexicon = LexiconExtractor(ConceptLexicon.from_json(args.concept_terms), ontology)
        extractor = lexicon
        if args.extractor == "llm":
            from .llm_extract import DEFAULT_PROMPT, LLMConfig, LLMExtractor, load_prompt_file

            prompt = load_prompt_file(args.llm_prompt) if getattr(args, "llm_prompt", None) else DEFAULT_PROMPT
            cfg = LLMConfig.from_env(
                concurrency=args.llm_concurrency, max_retries=args.llm_retries, timeout=args.llm_timeout,
                backoff=args.llm_backoff, json_mode=args.llm_json_mode, max_requests=args.llm_max_requests,
            )  # fmt: skip
            cache = args.llm_cache or ((args.output or args.input) + ".llm-cache.jsonl")
            extractor = LLMExtractor(cfg, lexicon, cache_path=cache, unknown_disease=args.llm_unknown_disease,
                                     prompt=prompt)
            log.info("LLM extractor: model %s at %s, prompt %s, cache %s", cfg.model, cfg.safe_endpoint,
                     prompt.name, cache)
    else:
        n_rows = csv_io.count_rows(args.input, args.delimiter, encoding)

    builder = KnowledgeBuilder(fieldnames, columns, extractor, budget, provenance=args.provenance)
    s = builder.summary
    s.extractor, s.ontology_size = args.extractor, ontology_size
    rejects_path = args.rejects or (None if args.check else args.output + ".rejects.csv")
    s.rejects = rejects_path or ""
    out_tmp = None
    writer = out_fh = None
    if not args.check:
        out_tmp = args.output + ".partial"
        out_fh = open(out_tmp, "w", newline="", encoding="utf-8")
        writer = csv.DictWriter(out_fh, builder.output_fields, delimiter=delimiter, extrasaction="ignore", restval="")
        writer.writeheader()
    rej_fh = open(rejects_path if rejects_path else os.devnull, "w", newline="", encoding="utf-8")
    rej = csv.DictWriter(rej_fh, REJECT_COLUMNS)
    rej.writeheader()
    chunk = max(64, 16 * int(getattr(args, "llm_concurrency", 1) or 1))
    try:
        with TableReader(args.input, args.delimiter, encoding) as reader, tqdm(
            total=n_rows, unit="row", disable=args.no_progress, file=sys.stderr, desc="knowledge"
        ) as bar:
            for raws in _chunks(reader, chunk):
                rows, issues = builder.process(raws)
                if writer is not None:
                    writer.writerows(rows)
                for it in issues:
                    rej.writerow(it.as_row())
                bar.update(len(raws))
    finally:
        rej_fh.close()
        if out_fh is not None:
            out_fh.close()
        if extractor is not None and hasattr(extractor, "close"):
            extractor.close()
    if out_tmp is not None:
        os.replace(out_tmp, args.output)
        s.output = args.output
    if args.extractor == "llm":
        st = extractor.stats
        s.llm = {
            "captions": st.captions, "cache hits": st.cache_hits, "requests": extractor.client.requests,
            "retries": extractor.client.retries, "answered": st.answered, "request failures": st.request_failures,
            "answers rejected": st.parse_failures, "concepts dropped": st.dropped_concepts,
            "unknown diseases": st.unknown_diseases,
        }  # fmt: skip
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(s.to_dict(), fh, indent=1)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m make_jax.knowledge",
        allow_abbrev=False,
        description="Build or check the MAKE knowledge-set columns (aspect texts, subtexts, masks) of a table.",
    )
    p.add_argument("input", help="input CSV/TSV (MAKE training CSV or Derm1M-style table)")
    p.add_argument("-o", "--output", help="output CSV (written atomically; required unless --check)")
    p.add_argument("--rejects", help="rejects/issues CSV (default: OUTPUT.rejects.csv; none with --check)")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.add_argument("--check", action="store_true",
                   help="only compare rebuilt MAKE columns with the existing ones; exit 1 on a mismatch")  # fmt: skip
    g = p.add_argument_group("columns")
    g.add_argument("--caption-col", default=DEFAULT_CAPTION_COL)
    g.add_argument("--ontology-col", default=DEFAULT_ONTOLOGY_COL,
                   help="disease hierarchy path, comma-separated general -> specific ('' = none)")  # fmt: skip
    g.add_argument("--concept-col", default=DEFAULT_CONCEPT_COL, help="comma-separated concept list ('' = none)")
    g.add_argument("--filename-col", default=DEFAULT_FILENAME_COL, help="image path ('' = do not require one)")
    g.add_argument("--disease-name-col", default=DEFAULT_DISEASE_NAME_COL,
                   help="disease names for deriving the ontology from the table ('' = path's last level)")  # fmt: skip
    g.add_argument("--delimiter", help="field delimiter (default: tab for .tsv, else comma)")
    g.add_argument("--encoding", help="text encoding of the input (default: UTF-8; a file that is not is refused, "
                                      "naming the first bad line and byte offset)")
    e = p.add_argument_group("extraction (rows whose path/concept field is empty)")
    e.add_argument("--extractor", choices=("none", "lexicon", "llm"), default="lexicon")
    e.add_argument("--ontology", action="append", metavar="JSON",
                   help="disease ontology JSON (repeatable; layouts: make_jax.knowledge.lexicon.Ontology)")  # fmt: skip
    e.add_argument("--no-derive-ontology", action="store_true",
                   help="do not derive disease paths from the input rows that have them")  # fmt: skip
    e.add_argument("--concept-terms", help="concept vocabulary JSON (default: resources/ConceptTerms.json)")
    e.add_argument("--budget", default="auto",
                   help="raw caption budget: auto (tokens:77 if make_jax.tokenizer imports, else words:35), "
                        "tokens:N, words:N, chars:N or none")  # fmt: skip
    e.add_argument("--provenance", action="store_true",
                   help="add disease_source, concept_source, knowledge_note columns")  # fmt: skip
    l = p.add_argument_group(  # noqa: E741
        "LLM extractor (endpoint from MAKE_LLM_BASE_URL, MAKE_LLM_MODEL, MAKE_LLM_API_KEY)"
    )
    l.add_argument("--llm-concurrency", type=int, default=4)
    l.add_argument("--llm-retries", type=int, default=4, help="retries after the first attempt")
    l.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    l.add_argument("--llm-backoff", type=float, default=1.0, help="first retry delay, doubled each retry")
    l.add_argument("--llm-max-requests", type=int, help="stop asking after this many requests (lexicon after)")
    l.add_argument("--llm-cache", help="answer cache JSONL (default: OUTPUT.llm-cache.jsonl)")
    l.add_argument("--llm-json-mode", action="store_true", help="send response_format json_object")
    l.add_argument("--llm-prompt", help="prompt file (JSON; docs/knowledge.md) instead of the built-in prompt, e.g. "
                                        "the paper's two prompts")
    l.add_argument("--llm-unknown-disease", choices=("drop", "keep"), default="drop",
                   help="a disease the ontology does not know: drop it (default) or keep the bare name")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


_EXPLICIT_FLAGS = {"--ontology-col": "ontology", "--concept-col": "concept", "--disease-name-col": "disease_name"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO if not args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    explicit = {
        attr for flag, attr in _EXPLICIT_FLAGS.items() if any(a == flag or a.startswith(flag + "=") for a in argv)
    }
    try:
        summary = run(args, explicit)
    except (ColumnError, ValueError, OSError) as e:  # InputError (tables, ontologies, outputs) is a ValueError
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary.text(), file=sys.stderr)
    if args.check and any(summary.mismatches.values()):
        return 1
    return 0

