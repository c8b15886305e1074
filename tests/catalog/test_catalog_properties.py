"""Property tests over generated catalogs and service sets: the rules of the merged form and of
dispatch hold for any catalog, not only the shipped one."""
from __future__ import annotations

from itertools import permutations

from hypothesis import given, settings, strategies as st

from catalog import dag
from tests.support.scale import scaled
from catalog.form import department_subsets, merged_form, select
from catalog.model import Catalog, Condition, Department, Field, Label, Material, Need, Service

DEPARTMENTS = ("health", "police", "tax")
PLAIN_FIELDS = tuple(f"f{i}" for i in range(8))
MATERIALS = tuple(f"m{i}" for i in range(5))
FLAG = "flag"  # a boolean every service may condition on


def _label(x: str) -> Label:
    return Label(f"{x}中", x)


@st.composite
def catalogs(draw):
    """Services s0..sn; service i may need outputs of services j < i (as consumes or as a plain
    field it would otherwise ask the applicant), so the catalog is acyclic by construction."""
    n = draw(st.integers(1, 8))
    outputs: list[list[str]] = []
    services = {}
    for i in range(n):
        dept = draw(st.sampled_from(DEPARTMENTS))
        sid = f"{dept}.s{i}"
        earlier = [o for outs in outputs for o in outs]
        consumes = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        plain = draw(st.lists(st.sampled_from(PLAIN_FIELDS), unique=True, max_size=5))
        as_field = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        as_field = [o for o in as_field if o not in consumes and o.startswith("o")]
        fields = [Need(f, required=draw(st.booleans())) for f in plain + as_field]
        if draw(st.booleans()):
            fields.append(Need(FLAG))
            if plain:
                fields[0] = Need(plain[0], required=False, when=Condition(FLAG, "equals", True))
        materials = [Need(m, required=draw(st.booleans()))
                     for m in draw(st.lists(st.sampled_from(MATERIALS), unique=True, max_size=3))]
        made = [f"o{i}_{k}" for k in range(draw(st.integers(0, 2)))]
        if draw(st.booleans()):
            made.append(f"doc{i}")  # a material output, like 出生医学证明
        outputs.append(made)
        services[sid] = Service(sid, dept, _label(sid), tuple(fields), tuple(materials), tuple(consumes),
                                tuple(made))
    all_outputs = [o for outs in outputs for o in outs]
    fields = {f: Field(f, "string", _label(f)) for f in PLAIN_FIELDS + tuple(o for o in all_outputs if o.startswith("o"))}
    fields[FLAG] = Field(FLAG, "boolean", _label(FLAG))
    materials = {m: Material(m, _label(m), e_license=(m == "m0"))
                 for m in MATERIALS + tuple(o for o in all_outputs if o.startswith("doc"))}
    departments = {d: Department(d, _label(d)) for d in DEPARTMENTS}
    return Catalog(departments, fields, materials, services, {})


@st.composite
def catalog_and_pick(draw):
    cat = draw(catalogs())
    picked = draw(st.lists(st.sampled_from(sorted(cat.services)), min_size=1, unique=True))
    return cat, picked


def _wave_of(selection):
    return {sid: i for i, wave in enumerate(selection.waves) for sid in wave}


#: 200 examples at full size (ONETHING_TEST_SCALE=long), 60 in the suite: each draws a whole catalog
SETTINGS = settings(max_examples=scaled(200, 60), deadline=None)


@SETTINGS
@given(catalog_and_pick())
def test_a_merged_form_never_asks_twice(case):
    cat, picked = case
    form = merged_form(cat, services=picked)
    field_ids = [f.id for f in form.fields]
    material_ids = [m.id for m in form.materials]
    assert len(field_ids) == len(set(field_ids))
    assert len(material_ids) == len(set(material_ids))


@SETTINGS
@given(catalog_and_pick())
def test_every_required_need_is_asked_or_produced_earlier(case):
    cat, picked = case
    form = merged_form(cat, services=picked)
    sel = form.selection
    wave = _wave_of(sel)
    asked = {f.id: f for f in form.fields} | {m.id: m for m in form.materials}
    assert set(picked) <= set(sel.services)
    for sid in sel.services:
        s = cat.services[sid]
        for out in s.consumes:
            producer = cat.producers[out]
            assert producer in wave and wave[producer] < wave[sid]
        for need in s.fields + s.materials:
            producer = cat.producers.get(need.id)
            if producer in wave:
                assert wave[producer] < wave[sid] and need.id not in asked  # never ask an output
            else:
                assert need.id in asked
                if need.required and need.when is None:
                    assert asked[need.id].required
                elif need.when is not None:
                    assert asked[need.id].required or need.when in asked[need.id].required_when


@SETTINGS
@given(catalog_and_pick())
def test_a_department_never_receives_what_its_services_do_not_declare(case):
    cat, picked = case
    sel = select(cat, services=picked)
    subsets = department_subsets(cat, services=picked)
    assert set(subsets) == {cat.services[s].department for s in sel.services}
    for dept, subset in subsets.items():
        mine = [cat.services[s] for s in sel.services if cat.services[s].department == dept]
        assert set(subset.services) == {s.id for s in mine}
        declared = {n for s in mine for n in s.needs}
        assert set(subset.fields) <= declared and set(subset.fields) <= set(cat.fields)
        assert set(subset.materials) <= declared and set(subset.materials) <= set(cat.materials)
        assert set(subset.fields) | set(subset.materials) == declared  # and nothing declared is withheld


@SETTINGS
@given(catalog_and_pick())
def test_dispatch_waves_respect_every_dependency(case):
    cat, picked = case
    sel = select(cat, services=picked)
    wave = _wave_of(sel)
    assert sorted(wave) == sorted(sel.services)
    for d in sel.dependencies:
        assert wave[d.upstream] < wave[d.downstream]
    for sid, i in wave.items():  # and nothing waits longer than it must
        assert i == 0 or any(wave[d.upstream] == i - 1 for d in sel.upstream_of(sid))


# --- the graph functions themselves on random graphs -----------------------------------------

@st.composite
def dags(draw):
    n = draw(st.integers(1, 7))
    nodes = [f"n{i}" for i in range(n)]
    deps = {node: set(draw(st.lists(st.sampled_from(nodes[:i]), unique=True))) if i else set()
            for i, node in enumerate(nodes)}
    weights = {node: draw(st.integers(0, 10)) for node in nodes}
    return deps, weights


@SETTINGS
@given(dags())
def test_critical_path_is_the_longest_chain(graph):
    deps, weights = graph
    length, path = dag.critical_path(deps, weights)
    for a, b in zip(path, path[1:]):
        assert a in deps[b]
    assert length == sum(weights[n] for n in path)

    def longest_ending_at(node):
        return weights[node] + max((longest_ending_at(p) for p in deps[node]), default=0)

    assert length == max(longest_ending_at(n) for n in deps)


@SETTINGS
@given(dags(), st.data())
def test_a_planted_back_edge_is_always_found(graph, data):
    deps, _ = graph
    edges = [(node, p) for node, ps in deps.items() for p in ps]
    if not edges:
        assert dag.find_cycle(deps) is None
        return
    node, prereq = data.draw(st.sampled_from(edges))
    deps = {k: set(v) for k, v in deps.items()}
    deps[prereq].add(node)  # prereq now also waits for node
    cycle = dag.find_cycle(deps)
    assert cycle is not None and cycle[0] == cycle[-1]
    for a, b in zip(cycle, cycle[1:]):
        assert b in deps[a]


def test_topological_order_brute_force_small():
    deps = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}
    order = dag.topological_order(deps)
    valid = [p for p in permutations(deps) if all(p.index(x) < p.index(n) for n in deps for x in deps[n])]
    assert order in valid
    assert dag.waves(deps) == (("a",), ("b", "c"), ("d",))
