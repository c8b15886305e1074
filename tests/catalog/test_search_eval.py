"""智问智搜's evaluation set (catalog/data/search_eval.yaml): the search finds the right bundle in its
top three for at least 90 % of queries written as citizens type them; the set covers every bundle
of the catalog (a bundle added without an evaluation query fails here); it stays honest (no query
is copied from the word list); and `onething catalog search-eval` prints the figures."""
from __future__ import annotations

from click.testing import CliRunner

from catalog import load_catalog
from catalog.cli import catalog as catalog_cli
from catalog.search import build_index
from catalog.search_eval import evaluate, load_eval
from catalog.search_terms import fold, load_search_terms

CATALOG = load_catalog()
TERMS = load_search_terms(CATALOG)
CASES = load_eval(CATALOG)


def test_at_least_150_queries_covering_every_bundle():
    assert len(CASES) >= 150
    missing = sorted(set(CATALOG.bundles) - {c.bundle for c in CASES})
    assert not missing, f"bundles with no evaluation query (add some to search_eval.yaml): {missing}"


def test_top3_accuracy_is_at_least_90_percent():
    report = evaluate(build_index(CATALOG, TERMS), CASES)
    misses = [(o.case.line, o.case.query, o.case.bundle, o.found) for o in report.misses(3)]
    assert report.accuracy(3) >= 0.90, misses
    assert report.accuracy(1) >= 0.80, report.accuracy(1)


def test_no_evaluation_query_is_a_term_of_the_word_list():
    terms = {fold(t.text) for ts in TERMS.by_bundle.values() for t in ts}
    copied = [c.query for c in CASES if fold(c.query) in terms]
    assert not copied, f"evaluation queries copied from search_terms.yaml: {copied}"


def test_the_command_prints_top1_top3_and_the_misses():
    result = CliRunner().invoke(catalog_cli, ["search-eval"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{len(CASES)} queries over {len(CATALOG.bundles)} of {len(CATALOG.bundles)} bundles" in out
    top1 = float(out.split("top-1 accuracy: ")[1].split("%")[0])
    top3 = float(out.split("top-3 accuracy: ")[1].split("%")[0])
    assert 0 < top1 <= top3 <= 100 and top3 >= 90
    if top1 < 100:
        assert "not first (" in out and "→ want" in out


def test_a_broken_evaluation_file_names_its_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "search_eval.yaml").write_text(
        "- {q: 生孩子了, bundle: newborn}\n- {q: 开饭店, bundle: no_such}\n- {q: '', bundle: newborn}\n"
        "- {q: x, bundle: newborn, style: poetry}\n", encoding="utf-8")
    try:
        load_eval(CATALOG, tmp_path)
    except ValueError as exc:
        text = str(exc)
    else:
        raise AssertionError("a broken evaluation file loaded")
    assert "search_eval.yaml:2: unknown bundle 'no_such'" in text
    assert "search_eval.yaml:3: 'q' (the query) must be non-empty text" in text
    assert "search_eval.yaml:4: unknown style 'poetry'" in text
