"""`onething proactive`: the life-event rules checked and listed, and what they did, per rule."""
from __future__ import annotations

import sys

import click


@click.group(help="免申即享 / 主动服务: the life-event rules (catalog/rules/) and their figures.")
def proactive() -> None:
    pass


@proactive.command("rules", help="Check catalog/rules/*.yaml (file:line errors, exit 1) and list the rules.")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False), default=None,
              help="a rules directory other than the package's")
def rules_cmd(directory: str | None) -> None:
    from catalog.loader import CatalogError
    from catalog.proactive_rules import RULES_DIR, load_rules

    try:
        rules = load_rules(directory=directory or RULES_DIR)
    except CatalogError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for r in rules:
        t = r.trigger
        what = {"register": f"{t.register}.{t.change_kind}", "decision": f"{t.service} {t.outcome}",
                "date": f"{t.licence}.{t.field}" + (f" +{t.years}y" if t.years else " by sex/job" if t.age_by
                                                    else f" {t.retirement_age}" if t.retirement_age
                                                    else f" -{t.days_before}d")}[t.kind]
        basis = "estimate" if r.estimate else "source"
        click.echo(f"{r.code:36} {r.outcome.kind:11} {t.kind:8} {what:48} → {r.to:20} {basis:8} {r.zh}")
    click.echo(f"{len(rules)} rules")


@proactive.command("kpis", help="Offers, acceptances, grants, declines and lapses per rule (from proactive_items).")
def kpis_cmd() -> None:
    import psycopg

    from infra.settings import Settings

    with psycopg.connect(Settings.from_env().database_url) as conn:
        rows = conn.execute(
            "SELECT rule, count(*) FILTER (WHERE outcome <> 'grant'), count(*) FILTER (WHERE state = 'accepted'), "
            "count(*) FILTER (WHERE outcome = 'grant'), count(*) FILTER (WHERE state = 'declined'), "
            "count(*) FILTER (WHERE state = 'lapsed') FROM proactive_items GROUP BY rule ORDER BY rule").fetchall()
    click.echo(f"{'rule':36} {'offers':>7} {'accepted':>9} {'grants':>7} {'declined':>9} {'lapsed':>7}")
    for rule, offers, accepted, grants, declined, lapsed in rows:
        click.echo(f"{rule:36} {offers:7} {accepted:9} {grants:7} {declined:9} {lapsed:7}")
