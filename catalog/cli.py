"""`onething catalog …`: read the bundle catalog from a terminal.

For policy staff checking what a bundle asks of citizens and which department sees what,
and for operators validating an edited catalog or a holiday arrangement before deploying it.
"""
from __future__ import annotations

import sys
from datetime import date

import click
from rich.console import Console
from rich.table import Table

from .figures import BundleFigures, Change, all_figures, bundle_figures, programme_figures
from .form import MergedForm, SelectionError, department_subsets, merged_form
from .loader import CatalogError, load_catalog
from .model import METRICS, Catalog, Claim, Condition, Figure

METRIC_LABELS = {"materials": "材料 materials", "steps": "环节 steps",
                 "time_days": "时限 working days", "trips": "跑动 trips"}


def _console() -> Console:
    # markup off: catalog text is full of brackets ("[U]", "[a, b]") that are not styles
    return Console(highlight=False, soft_wrap=False, markup=False)


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:g}"


def _pct(r: float | None) -> str:
    return "" if r is None else f" ({-r * 100:+.0f}%)"


def _change(c: Change) -> str:
    return f"{_num(c.before)} → {_num(c.after)}{_pct(c.reduction)}"


def _claimed(claim: Claim, metric: str) -> str:
    ch = claim.changes.get(metric)
    if ch is None:
        return ""
    if ch.before is None and ch.after is None:
        return f"{ch.change_pct:+g}%"
    return f"{_num(ch.before)} → {_num(ch.after)}{_pct(ch.reduction)}"


def _figure(f: Figure | None) -> str:
    if f is None:
        return "—"
    return f"{_num(f.value)}{'*' if f.estimate else ''}"


def _when(required: bool, conditions: tuple[Condition, ...]) -> str:
    if required:
        return "required"
    if conditions:
        return "when " + " or ".join(str(c) for c in conditions)
    return "optional"


def _load(ctx: click.Context) -> Catalog:
    try:
        return load_catalog(ctx.obj.get("path") if ctx.obj else None)
    except CatalogError as exc:
        raise click.ClickException(f"the catalog does not load:\n{exc}") from None


@click.group("catalog")
@click.option("--path", type=click.Path(exists=True, file_okay=False), default=None,
              help="A catalog directory (data/ and bundles/); default: the shipped catalog.")
@click.pass_context
def catalog(ctx: click.Context, path: str | None) -> None:
    """一件事 bundle catalog: bundles, services, merged forms, reform figures."""
    ctx.ensure_object(dict)
    ctx.obj["path"] = path


@catalog.command("list")
@click.pass_context
def list_bundles(ctx: click.Context) -> None:
    """Every bundle of the national lists, modelled or not."""
    cat = _load(ctx)
    table = Table(title="一件事 bundles", show_lines=False)
    for col in ("code", "名称", "kind", "batch", "list", "lead", "services", "modelled", "end to end"):
        table.add_column(col, overflow="fold")
    for b in sorted(cat.bundles.values(), key=lambda b: (b.listing.batch, b.kind, b.code)):
        runs, why = runs_end_to_end(cat, b.code)
        table.add_row(b.code, b.label.zh, b.kind, b.listing.batch,
                      f"{b.listing.document or '—'} ({b.listing.confidence})",
                      b.lead or "—", _services_cell(len(b.members), len(b.conditional)) if b.modelled else "—",
                      "yes" if b.modelled else "no (listed only)", "yes" if runs else f"no: {why}")
    _console().print(table)


def _services_cell(total: int, conditional: int) -> str:
    return f"{total} ({conditional} conditional)" if conditional else str(total)


def runs_end_to_end(cat: Catalog, code: str) -> tuple[bool, str]:
    """Whether `onething run` can complete an application of the bundle: it is modelled and every
    department of its services has a reference adapter (hosted by `onething run adapters`)."""
    b = cat.bundle(code)
    if not b.modelled:
        return False, "not modelled"
    missing = sorted({cat.services[s].department for s in b.services} - {
        c for c, d in cat.departments.items() if d.adapter is not None})
    return (not missing), ("no adapter for " + ", ".join(missing) if missing else "")


def _print_application(console: Console, cat: Catalog, form: MergedForm, bundle_code: str | None) -> None:
    sel = form.selection
    bundle = cat.bundle(bundle_code) if bundle_code else None
    for a in sel.added:
        console.print(f"+ {a.reason}")

    services = Table(title="事项 services (in dispatch order)")
    for col in ("wave", "service", "名称", "department", "statutory", "promised", "waits for", "applies"):
        services.add_column(col, overflow="fold")
    for i, wave in enumerate(sel.waves, 1):
        for sid in wave:
            s = cat.services[sid]
            member = bundle.member(sid) if bundle else None
            waits = ", ".join(f"{d.upstream} ({d.output})" for d in sel.upstream_of(sid)) or "—"
            applies = f"when {member.applies_when}" if member and member.applies_when else "always"
            if s.auto_decision is not None:
                applies += "; 免批秒办 (decided by rule)"
            services.add_row(str(i), sid, s.label.zh, f"{s.department} {cat.departments[s.department].label.zh}",
                             _figure(s.statutory), _figure(member.promised if member else None), waits, applies)
    console.print(services)
    console.print("Dispatch waves (并联审批): " + "  ⇒  ".join("[" + ", ".join(w) + "]" for w in sel.waves))
    departments = sorted({cat.services[s].department for s in sel.services})
    console.print(f"{len(departments)} departments: {', '.join(departments)}")

    fields = Table(title="一表申报 merged form: fields (each asked once)")
    for col in ("field", "标签", "label", "type", "asked", "pii", "services"):
        fields.add_column(col, overflow="fold")
    for f in form.fields:
        fields.add_row(f.id, f.field.label.zh, f.field.label.en, f.field.type, _when(f.required, f.required_when),
                       "pii" if f.field.pii else "", str(len(f.services)))
    console.print(fields)

    materials = Table(title="材料 materials (each asked once)")
    for col in ("material", "名称", "how", "asked", "services"):
        materials.add_column(col, overflow="fold")
    for m in form.materials:
        materials.add_row(m.id, m.material.label.zh, "e-license, fetched (免证办)" if m.fetched else "upload",
                          _when(m.required, m.required_when), str(len(m.services)))
    console.print(materials)
    if form.left_out:
        outputs = sorted({(d.output, d.upstream) for d in form.left_out})
        console.print("Not asked, passed between services: "
                      + ", ".join(f"{o} (from {u})" for o, u in outputs))

    subsets = Table(title="数据最小化 what each department receives")
    for col in ("department", "services", "fields", "materials"):
        subsets.add_column(col, overflow="fold")
    for dept, sub in department_subsets(cat, bundle_code=bundle_code,
                                        services=None if bundle_code else sel.picked).items():
        subsets.add_row(dept, "\n".join(sub.services), ", ".join(sub.fields), ", ".join(sub.materials) or "—")
    console.print(subsets)


def _print_figures(console: Console, figures: BundleFigures) -> None:
    table = Table(title="Reform figures: computed (before → after) next to the seeds' claims")
    table.add_column("metric")
    table.add_column("computed", overflow="fold")
    for claim in figures.claims:
        table.add_column(f"claimed: {claim.place}", overflow="fold")
    for metric in METRICS:
        mark = " *" if metric in figures.estimated else ""
        table.add_row(METRIC_LABELS[metric], _change(figures.metric(metric)) + mark,
                      *(_claimed(c, metric) for c in figures.claims))
    console.print(table)
    console.print(f"Critical path (promised): {' → '.join(figures.critical_path)}")
    console.print("* rests on estimated figures (see the notes in the catalog data); time before = statutory "
                  "limits one after another, after = longest chain of promised limits; trips after = online channel.")
    for claim in figures.claims:
        console.print(f"  {claim.place}: {claim.source}" + (f" — {claim.note}" if claim.note else ""))


@catalog.command("show")
@click.argument("code")
@click.pass_context
def show(ctx: click.Context, code: str) -> None:
    """One bundle: services and departments, dispatch waves, merged form, per-department data, figures."""
    cat = _load(ctx)
    if code not in cat.bundles:
        raise click.ClickException(f"no bundle {code!r}; `catalog list` shows them all")
    b = cat.bundle(code)
    console = _console()
    console.print(f"{b.label.zh} ({b.label.en}) — {b.code}, {b.kind}, batch {b.listing.batch} "
                  f"{b.listing.document or ''} [{b.listing.confidence}]")
    if b.lead:
        console.print(f"牵头部门 lead: {b.lead} {cat.departments[b.lead].label.zh} — {b.lead_source}")
    if b.promised_total:
        console.print(f"Promised in total: {_figure(b.promised_total)} working days — "
                      f"{b.promised_total.source or b.promised_total.note}")
    if not b.modelled:
        console.print("Listed but not modelled yet (modelled: false): no services, form or figures.")
        return
    _print_application(console, cat, merged_form(cat, bundle_code=code), code)
    _print_figures(console, bundle_figures(cat, code))
    if b.note:
        console.print(f"Note: {b.note.strip()}")


@catalog.command("combine")
@click.argument("services", nargs=-1, required=True)
@click.pass_context
def combine(ctx: click.Context, services: tuple[str, ...]) -> None:
    """随意组合: the merged form of any services picked together (their dependencies are added)."""
    cat = _load(ctx)
    try:
        form = merged_form(cat, services=list(services))
    except SelectionError as exc:
        raise click.ClickException(str(exc)) from None
    _print_application(_console(), cat, form, None)


@catalog.command("figures")
@click.pass_context
def figures(ctx: click.Context) -> None:
    """材料精简率, 时限压缩率 and fewer trips for every modelled bundle, next to the seeds' claims."""
    cat = _load(ctx)
    table = Table(title="Reform figures, computed from the catalog (before → after)")
    for col in ("bundle", "名称", "services", "depts", "materials", "steps", "working days", "trips (online)",
                "claimed"):
        table.add_column(col, overflow="fold")
    for f in all_figures(cat):
        b = cat.bundle(f.bundle)
        cell = {m: _change(f.metric(m)) + (" *" if m in f.estimated else "") for m in METRICS}
        claimed = "\n".join(
            f"{c.place}: " + "; ".join(f"{m} {_claimed(c, m)}" for m in METRICS if m in c.changes)
            for c in f.claims)
        table.add_row(f.bundle, b.label.zh, _services_cell(f.services, f.conditional), str(f.departments),
                      cell["materials"], cell["steps"],
                      cell["time_days"], cell["trips"], claimed or "—")
    prog = programme_figures(cat)
    means = {m: f"{-prog.reductions[m] * 100:+.0f}%" if m in prog.reductions else "?" for m in METRICS}
    claimed = "\n".join(f"{c.place}: " + "; ".join(f"{m} {_claimed(c, m)}" for m in METRICS if m in c.changes)
                        for c in prog.claims)
    table.add_row("all", f"mean of {prog.bundles}", "", "", means["materials"], means["steps"],
                  means["time_days"], means["trips"], claimed or "—")
    console = _console()
    console.print(table)
    console.print("* rests on estimated figures. Time before = statutory limits one after another; after = "
                  "the longest chain of promised limits. Materials after = uploads left in the merged form "
                  "(conditional ones included; e-licenses fetched). Steps and trips as modelled per service. "
                  "Conditional services (applies_when) are counted as if they applied: the figures of the "
                  "fullest application.")
    for c in prog.claims:
        console.print(f"  {c.place}: {c.source}" + (f" — {c.note}" if c.note else ""))


@catalog.command("validate")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
def validate(path: str | None) -> None:
    """Load a catalog directory and report every problem with file and line (exit 1 if any)."""
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{len(exc.problems)} problem(s)", err=True)
        sys.exit(1)
    modelled = sum(b.modelled for b in cat.bundles.values())
    click.echo(f"ok: {len(cat.bundles)} bundles ({modelled} modelled), {len(cat.services)} services, "
               f"{len(cat.fields)} fields, {len(cat.materials)} materials, {len(cat.departments)} departments")


@catalog.command("calendar")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="Check a holiday arrangement file before installing it.")
@click.argument("years", nargs=-1, type=int)
def calendar(file_: str | None, years: tuple[int, ...]) -> None:
    """Which years have a holiday arrangement (工作日 calendar), or check an arrangement file."""
    from .working_days import CalendarFileError, covered_years, default_calendar, load_arrangement
    if file_:
        try:
            a = load_arrangement(file_)
        except CalendarFileError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"ok: {a.year}: {len(a.holidays)} holidays, {len(a.make_up_workdays)} make-up working days"
                   f"{' (estimate)' if a.estimate else ''} — {a.source}")
        return
    this_year = date.today().year
    for year, state in covered_years(default_calendar(), years or range(this_year - 1, this_year + 3)).items():
        click.echo(f"{year}: {state}")


# 智问智搜's evaluation (catalog/search_eval.py): `onething catalog search-eval`
from .search_eval import search_eval_command  # noqa: E402

catalog.add_command(search_eval_command)
