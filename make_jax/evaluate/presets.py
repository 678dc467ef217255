"""Named class lists, templates and concept resources shipped in make_jax/resources.

Class-list presets (label i of an evaluation CSV = position i of the list):

| preset | file | classes |
|---|---|---|
| PAD | classnames_PAD.json | 6 |
| F17K | classnames_F17K_113.json | 114 (the public code's "113" list holds 114 distinct names) |
| SNU-134 | classnames_SNU_134.json | 134 |
| SD-128 | classnames_SD_128.json | 128 |

`load_classnames` also takes a path: a JSON list of names, a JSON object with a "classnames" list (the shape of
the resource files and of SynthDerm's classnames.json), or a text file with one name per line.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

__all__ = ["CLASS_PRESETS", "ClassList", "DEFAULT_CONCEPT_SCALE", "load_classnames", "load_concept_prompts",
           "load_concept_terms", "load_templates", "resource_path"]

CLASS_PRESETS: dict[str, str] = {
    "PAD": "classnames_PAD.json",
    "F17K": "classnames_F17K_113.json",
    "SNU-134": "classnames_SNU_134.json",
    "SD-128": "classnames_SD_128.json",
}
_ALIASES = {"pad": "PAD", "pad-ufes-20": "PAD", "f17k": "F17K", "f17k-113": "F17K", "f17k_113": "F17K",
            "fitzpatrick17k": "F17K", "snu": "SNU-134", "snu-134": "SNU-134", "snu_134": "SNU-134",
            "sd-128": "SD-128", "sd_128": "SD-128", "sd128": "SD-128"}

# calculate_concept_presence_score in the public MAKE code: temp = 1 / exp(4.5944) → logits × exp(4.5944) ≈ 98.94.
DEFAULT_CONCEPT_SCALE = math.exp(4.5944)


def resource_path(name: str) -> Path:
    return Path(str(resources.files("make_jax") / "resources" / name))


class ClassList(list):
    """A list of class names that remembers where it came from (`source`: preset name or file path)."""

    def __init__(self, names, source: str):
        super().__init__(names)
        self.source = source


def _validate_names(names, where: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where}: expected a non-empty list of class names")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{where}: class names must be non-empty strings; bad entries at positions {bad[:10]}")
    seen: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names):
        if n in seen:
            dups.append(f"{n!r} at {seen[n]} and {i}")
        seen.setdefault(n, i)
    if dups:
        raise ValueError(f"{where}: duplicate class names: {', '.join(dups[:5])}")
    return [n.strip() for n in names]


def load_classnames(spec: str | Path) -> ClassList:
    """A preset name (PAD, F17K, SNU-134, SD-128; case-insensitive aliases) or a file path → ClassList."""
    key = str(spec)
    preset = key if key in CLASS_PRESETS else _ALIASES.get(key.lower())
    if preset is not None and not Path(key).exists():
        path = resource_path(CLASS_PRESETS[preset])
        data = json.loads(path.read_text(encoding="utf-8"))
        return ClassList(_validate_names(data["classnames"], str(path)), preset)
    path = Path(key)
    if not path.is_file():
        raise FileNotFoundError(f"class list {key!r}: neither a preset ({', '.join(CLASS_PRESETS)}) nor a file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            if "classnames" not in data:
                raise ValueError(f"{path}: a JSON object needs a 'classnames' list (keys here: {sorted(data)[:10]})")
            names = _validate_names(data["classnames"], str(path))
            declared = data.get("num_classes")
            if declared is not None and int(declared) != len(names):
                raise ValueError(f"{path}: 'num_classes' says {declared} but 'classnames' holds {len(names)} names")
        else:
            names = _validate_names(data, str(path))
    else:
        names = _validate_names([ln.strip() for ln in text.splitlines() if ln.strip()], str(path))
    return ClassList(names, str(path))


def load_templates(spec: str | Path | list | None = None) -> list[str]:
    """Zero-shot templates: None → the 8 of resources/templates.json; a JSON file (list, or object with
    "templates"); or a list of strings. Each template must contain exactly one "{}"."""
    if spec is None:
        path = resource_path("templates.json")
        templates = json.loads(path.read_text(encoding="utf-8"))["templates"]
        where = str(path)
    elif isinstance(spec, (list, tuple)):
        templates, where = list(spec), "templates"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"templates file {path} not found")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        templates = data["templates"] if isinstance(data, dict) else data
        where = str(path)
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{where}: expected a non-empty list of templates")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"{where}: template {i} ({t!r}) must be a string with exactly one '{{}}'")
    return templates


def load_concept_terms(path: str | Path | None = None) -> dict[str, list[str]]:
    """concept → synonyms (resources/ConceptTerms.json by default)."""
    p = Path(path) if path is not None else resource_path("ConceptTerms.json")
    if not p.is_file():
        raise FileNotFoundError(f"concept terms file {p} not found")
    data = json.loads(p.read_text(encoding="utf-8-sig"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected an object concept → list of synonyms")
    out = {}
    for k, v in data.items():
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError(f"{p}: synonyms of {k!r} must be a list of strings")
        out[k] = [s for s in v if s.strip()]
    return out


def load_concept_prompts(path: str | Path | None = None) -> tuple[list[str], list[list[str]]]:
    """(templates, reference prompt lists) of resources/concept_prompts.json: six templates with "{}" and six
    reference lists (template k is paired with reference list k)."""
    p = Path(path) if path is not None else resource_path("concept_prompts.json")
    data = json.loads(p.read_text(encoding="utf-8-sig"))
    templates = data["concept_prompt_template_list"]
    refs = data["concept_prompt_ref_list"]
    refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    if len(templates) != len(refs):
        raise ValueError(f"{p}: {len(templates)} templates but {len(refs)} reference lists (they pair up)")
    for i, t in enumerate(templates):
        if t.count("{}") != 1:
            raise ValueError(f"{p}: concept template {i} ({t!r}) needs exactly one '{{}}'")
    return templates, refs
