"""How well 智问智搜 finds the right bundle: `data/search_eval.yaml` scored against the search.

`load_eval` reads the evaluation set (every problem as `file:line: …`, like the catalog's other
files); `evaluate` is a pure function of the index and the cases; `search_eval_command` is
`onething catalog search-eval`, which prints top-1 and top-3 accuracy, the figure per style of
query, and every miss with what was found instead.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .loader import DEFAULT_ROOT, CatalogError, Problem, read_yaml
from .model import Catalog
from .search import SearchIndex, build_index, search
from .search_terms import load_search_terms

__all__ = ["EvalCase", "EvalReport", "load_eval", "evaluate", "search_eval_command", "EVAL_FILE", "STYLES"]

EVAL_FILE = "data/search_eval.yaml"
STYLES = ("colloquial", "typo", "pinyin", "initials", "english", "official")
SETS = ("tuning", "holdout")


@dataclass(frozen=True)
class EvalCase:
    query: str
    bundle: str
    style: str
    line: int
    set: str = "tuning"   # "tuning": seen while the ranking was tuned; "holdout": never


@dataclass(frozen=True)
class Outcome:
    case: EvalCase
    found: tuple[str, ...]   # the bundle codes returned, best first

    @property
    def rank(self) -> int | None:
        """1-based place of the right bundle, None when it was not found at all."""
        return self.found.index(self.case.bundle) + 1 if self.case.bundle in self.found else None


@dataclass(frozen=True)
class EvalReport:
    outcomes: tuple[Outcome, ...]

    def accuracy(self, k: int, style: str | None = None, set_: str | None = None) -> float:
        chosen = [o for o in self.outcomes if (style is None or o.case.style == style)
                  and (set_ is None or o.case.set == set_)]
        if not chosen:
            return 0.0
        return sum(1 for o in chosen if o.rank is not None and o.rank <= k) / len(chosen)

    def misses(self, k: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.rank is None or o.rank > k]

    @property
    def bundles(self) -> set[str]:
        return {o.case.bundle for o in self.outcomes}


def load_eval(catalog: Catalog, root: str | Path | None = None) -> list[EvalCase]:
    """The evaluation cases; an unknown bundle or style, or a malformed entry, raises CatalogError."""
    path = Path(root or DEFAULT_ROOT) / EVAL_FILE
    problems: list[Problem] = []
    doc = read_yaml(path, problems)
    rel = os.path.relpath(path)
    name = str(path) if rel.startswith("..") else rel
    cases: list[EvalCase] = []
    if not problems and not isinstance(doc, list):
        problems.append(Problem(name, getattr(doc, "line", 1), "the file must be a list of {q, bundle, style}"))
    for i, item in enumerate(doc if isinstance(doc, list) and not problems else []):
        line = doc.at(i)
        if not isinstance(item, dict):
            problems.append(Problem(name, line, "each case is {q: …, bundle: …, style: …}"))
            continue
        q, bundle, style = item.get("q"), item.get("bundle"), item.get("style", "colloquial")
        which = item.get("set", "tuning")
        extra = set(item) - {"q", "bundle", "style", "set"}
        if extra:
            problems.append(Problem(name, line, f"unknown key(s) {sorted(extra)} (allowed: q, bundle, style, set)"))
        if which not in SETS:
            problems.append(Problem(name, line, f"unknown set {which!r} (one of {', '.join(SETS)})"))
            continue
        if not isinstance(q, str) or not q.strip():
            problems.append(Problem(name, line, "'q' (the query) must be non-empty text"))
            continue
        if bundle not in catalog.bundles:
            problems.append(Problem(name, line, f"unknown bundle {bundle!r}"))
            continue
        if style not in STYLES:
            problems.append(Problem(name, line, f"unknown style {style!r} (one of {', '.join(STYLES)})"))
            continue
        cases.append(EvalCase(str(q), bundle, style, line, which))
    if problems:
        raise CatalogError(problems)
    return cases


def evaluate(index: SearchIndex, cases: list[EvalCase], k: int = 3) -> EvalReport:
    """Each case searched, its top `k` bundles kept."""
    return EvalReport(tuple(Outcome(c, tuple(h.code for h in search(index, c.query, limit=k).bundles))
                            for c in cases))


@click.command("search-eval")
@click.pass_context
def search_eval_command(ctx: click.Context) -> None:
    """智问智搜: top-1 and top-3 accuracy of the search on data/search_eval.yaml, and the misses."""
    from .loader import load_catalog
    path = ctx.obj.get("path") if ctx.obj else None
    try:
        cat = load_catalog(path)
        terms = load_search_terms(cat, path)
        cases = load_eval(cat, path)
    except CatalogError as exc:
        raise click.ClickException(f"the catalog does not load:\n{exc}") from None
    report = evaluate(build_index(cat, terms), cases)
    uncovered = sorted(set(cat.bundles) - report.bundles)
    click.echo(f"智问智搜 evaluation: {len(cases)} queries over {len(report.bundles)} of {len(cat.bundles)} bundles")
    click.echo(f"top-1 accuracy: {report.accuracy(1):.1%}")
    click.echo(f"top-3 accuracy: {report.accuracy(3):.1%}")
    held = sum(1 for o in report.outcomes if o.case.set == "holdout")
    if held:
        click.echo(f"  hold-out   {held:>3} queries  top-1 {report.accuracy(1, set_='holdout'):6.1%}  "
                   f"top-3 {report.accuracy(3, set_='holdout'):6.1%}  (never used to tune the ranking)")
    for style in STYLES:
        n = sum(1 for o in report.outcomes if o.case.style == style)
        if n:
            click.echo(f"  {style:<10} {n:>3} queries  top-1 {report.accuracy(1, style):6.1%}  "
                       f"top-3 {report.accuracy(3, style):6.1%}")
    misses = report.misses(1)
    if misses:
        click.echo(f"not first ({len(misses)}):")
        for o in misses:
            where = f"#{o.rank}" if o.rank else "not in top 3"
            click.echo(f"  line {o.case.line}: {o.case.query!r} → want {o.case.bundle} ({where}); "
                       f"found {', '.join(o.found) or 'nothing'}")
    if uncovered:
        click.echo(f"bundles with no evaluation query: {', '.join(uncovered)}")
    sys.stdout.flush()
