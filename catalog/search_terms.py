"""智问智搜's word list: `data/search_terms.yaml` → `SearchTerms`, every mistake as `file:line: …`.

Kept apart from `catalog.loader` (the bundles' own loader): the search words are edited by other
people (the service-desk staff who hear what citizens ask) and more often, and a mistake in them
must name its line exactly like a mistake in a bundle does. The checks are the ones that would make
the search quietly wrong: a bundle code that does not exist (its words would find nothing), a term
given twice, an empty or overlong term, and a term that is another bundle's official name (it would
take that name's first place away from its own bundle).
"""
from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .loader import DEFAULT_ROOT, CatalogError, Problem, read_yaml
from .model import Catalog, Origin

__all__ = ["SearchTerms", "Term", "load_search_terms", "TERMS_FILE", "MAX_TERM_LENGTH"]

TERMS_FILE = "data/search_terms.yaml"
MAX_TERM_LENGTH = 30
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class Term:
    """One everyday phrasing of a bundle, in one language, with the line it came from."""
    text: str
    lang: str
    origin: Origin | None = None


@dataclass(frozen=True)
class SearchTerms:
    """bundle code → its phrasings. A bundle with none is still found by its name and services."""
    by_bundle: Mapping[str, tuple[Term, ...]] = field(default_factory=dict)

    def of(self, bundle_code: str) -> tuple[Term, ...]:
        return self.by_bundle.get(bundle_code, ())


def fold(text: str) -> str:
    """The form two terms are compared in: NFKC (full-width → half-width), lower case, no spaces."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def load_search_terms(catalog: Catalog, root: str | Path | None = None) -> SearchTerms:
    """Read `<root>/data/search_terms.yaml` (default: the shipped catalog's) against `catalog`.

    A missing file is an empty word list (the search still knows every name); any problem raises
    `CatalogError` listing all of them, each with file and line.
    """
    path = Path(root or DEFAULT_ROOT) / TERMS_FILE
    if not path.exists():
        return SearchTerms({})
    problems: list[Problem] = []
    doc = read_yaml(path, problems)
    name = _display(path)
    if problems:
        raise CatalogError(problems)
    out = _parse(doc, name, catalog, problems)
    if problems:
        raise CatalogError(problems)
    return out


def _display(path: Path) -> str:
    """Relative to the working directory when inside it, as the catalog's loader prints paths."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _parse(doc: Any, name: str, catalog: Catalog, problems: list[Problem]) -> SearchTerms:
    def problem(line: int, message: str) -> None:
        problems.append(Problem(name, line, message))

    if doc is None:
        return SearchTerms({})
    if not isinstance(doc, dict):
        problem(getattr(doc, "line", 1), "the file must map bundle codes to their terms")
        return SearchTerms({})
    official = {fold(b.label.zh): b.code for b in catalog.bundles.values()}
    official.update({fold(b.label.en): b.code for b in catalog.bundles.values()})
    by_bundle: dict[str, tuple[Term, ...]] = {}
    for code, body in doc.items():
        line = doc.at(code)
        if code not in catalog.bundles:
            problem(line, f"unknown bundle {code!r} (bundles: catalog/bundles/*.yaml)")
            continue
        if not isinstance(body, dict):
            problem(line, f"bundle {code!r}: give its terms as {{zh: [...], en: [...]}}")
            continue
        for key in body:
            if key not in LANGUAGES:
                problem(body.at(key), f"bundle {code!r}: unknown key {key!r} (allowed: zh, en)")
        if "zh" not in body:
            problem(line, f"bundle {code!r}: missing 'zh' (its Chinese phrasings)")
        terms: list[Term] = []
        seen: dict[str, int] = {}
        for lang in LANGUAGES:
            if lang not in body:
                continue
            items = body[lang]
            if not isinstance(items, list):
                problem(body.at(lang), f"bundle {code!r}: {lang!r} must be a list of phrasings")
                continue
            for i, item in enumerate(items):
                at = items.at(i) if hasattr(items, "at") else body.at(lang)
                if not isinstance(item, str) or not item.strip():
                    problem(at, f"bundle {code!r}: {lang} term #{i + 1} must be non-empty text")
                    continue
                text = " ".join(item.split())
                if len(text) > MAX_TERM_LENGTH:
                    problem(at, f"bundle {code!r}: term {text!r} is longer than {MAX_TERM_LENGTH} characters")
                    continue
                key = fold(text)
                if key in seen:
                    problem(at, f"bundle {code!r}: term {text!r} is given twice (first on line {seen[key]})")
                    continue
                other = official.get(key)
                if other is not None and other != code:
                    problem(at, f"bundle {code!r}: term {text!r} is the official name of bundle {other!r}")
                    continue
                seen[key] = at
                terms.append(Term(text, lang, Origin(name, at)))
        by_bundle[code] = tuple(terms)
    return SearchTerms(by_bundle)
