"""Reform figures computed from the catalog, shown next to what the seeds claim.

Localities report 材料精简率, 时限压缩率 and fewer 跑动次数 for their bundles; computing
the same figures from the modelled services keeps both honest: a claim the model cannot
reproduce points at a service modelled wrongly, or at a claim counted differently.

How each figure is computed ("before" = every service applied for separately):
- materials: before, the sum over services of the documents each asks for on its own
  (including outputs of other services, which the applicant would have carried over, and
  documents the reform abolished); after, the merged form's uploads (asked once, e-licenses
  fetched, outputs passed between services);
- steps: before, the sum of each service's applicant-facing steps; after, one form and one
  delivery, plus one in-person step if any service needs the person present;
- time: before, statutory limits one after another; after, the longest chain of promised
  limits through the dependency graph (services in parallel overlap);
- trips: before, one visit per department (more where a service needs more); after, for
  the online channel, 0, or 1 if any service needs the person present.

A conditional service (`applies_when`: employer registration only for a company with staff)
is counted as applying: the figures are those of the fullest application of the bundle.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean

from . import dag
from .form import merged_form
from .model import Catalog, Claim

__all__ = ["Change", "BundleFigures", "ProgrammeFigures", "bundle_figures", "all_figures", "programme_figures"]


@dataclass(frozen=True)
class Change:
    before: float
    after: float

    @property
    def reduction(self) -> float | None:
        """Share saved, 0..1 (negative if the reform added work); None when nothing was there before."""
        return 1 - self.after / self.before if self.before else None


@dataclass(frozen=True)
class BundleFigures:
    bundle: str
    services: int
    departments: int
    materials: Change
    steps: Change
    time_days: Change
    trips: Change
    critical_path: tuple[str, ...]
    estimated: frozenset[str]  # metrics that rest on at least one estimated figure
    claims: tuple[Claim, ...]
    conditional: int = 0       # services that apply only under a condition (counted as applying)

    def metric(self, name: str) -> Change:
        return getattr(self, name)


def bundle_figures(catalog: Catalog, bundle_code: str) -> BundleFigures:
    bundle = catalog.bundle(bundle_code)
    if not bundle.modelled:
        raise ValueError(f"bundle {bundle_code!r} is listed but not modelled yet: no figures to compute")
    form = merged_form(catalog, bundle_code=bundle_code)
    services = [catalog.services[sid] for sid in form.selection.services]
    departments = sorted({s.department for s in services})

    materials_before = len(bundle.dropped_materials) + sum(
        len({n.id for n in s.materials} | {c for c in s.consumes if c in catalog.materials}) for s in services)
    in_person = any(s.in_person for s in services)

    statutory = [s.statutory for s in services]
    promised = {sid: bundle.member(sid).promised for sid in form.selection.services}
    graph: dict[str, set[str]] = {sid: set() for sid in form.selection.services}
    for d in form.selection.dependencies:
        graph[d.downstream].add(d.upstream)
    longest, path = dag.critical_path(graph, {sid: p.value for sid, p in promised.items()})

    trips_before = sum(max(s.trips for s in services if s.department == d) for d in departments)
    estimated = {"steps", "trips"}  # modelled per service, not published anywhere
    if any(f.estimate for f in statutory) or any(promised[sid].estimate for sid in path):
        estimated.add("time_days")
    return BundleFigures(
        bundle=bundle_code, services=len(services), departments=len(departments),
        materials=Change(materials_before, len(form.uploads)),
        steps=Change(sum(s.steps for s in services), 2 + (1 if in_person else 0)),
        time_days=Change(sum(f.value for f in statutory), longest),
        trips=Change(trips_before, 1 if in_person else 0),
        critical_path=path, estimated=frozenset(estimated), claims=bundle.claims,
        conditional=len(bundle.conditional))


def all_figures(catalog: Catalog) -> list[BundleFigures]:
    return [bundle_figures(catalog, code) for code, b in sorted(catalog.bundles.items()) if b.modelled]


@dataclass(frozen=True)
class ProgrammeFigures:
    """Mean reductions over the modelled bundles, next to programme-wide claims (鹤山, 江西)."""
    bundles: int
    reductions: dict[str, float]
    claims: tuple[Claim, ...]


def programme_figures(catalog: Catalog) -> ProgrammeFigures:
    """Unweighted means: the seeds weight by case volume, which the catalog does not know."""
    figures = all_figures(catalog)
    reductions = {}
    for metric in ("time_days", "materials", "steps", "trips"):
        values = [r for f in figures if (r := f.metric(metric).reduction) is not None]
        if values:
            reductions[metric] = mean(values)
    return ProgrammeFigures(len(figures), reductions, catalog.claims)
