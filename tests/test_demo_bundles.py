"""`onething demo --bundle CODE` / `--all`: which bundles it files, who files each, and that the form
it fills for every modelled bundle is one the API accepts (the catalog's own validation, the one
`POST /api/v1/applications` runs). Pure: the served form is built from the catalog as the API
serves it to a caller without e-licences (a scan is uploaded for each e-licence then)."""
from __future__ import annotations

from datetime import date

import pytest

from catalog.form import validate_form
from catalog.loader import load_catalog
from infra.demo_bundles import ROTATION, applicants, chosen_bundles
from infra.demo_forms import Applicant, fill_form, materials_plan, person_for
from producers import e_license
from producers.api_catalog import promisable

CATALOG = load_catalog()
MODELLED = [c for c, b in CATALOG.bundles.items() if b.modelled and b.members]


def served(code: str) -> dict:
    mf = CATALOG.merged_form(bundle_code=code)
    cond = lambda cs: [{"field": c.field, "op": c.op, "value": c.value} for c in cs]  # noqa: E731
    return {"fields": [{"id": ff.id, "type": ff.field.type, "required": ff.required, "required_when": cond(ff.required_when),
                        "options": [{"value": o.value} for o in ff.field.options], "min": ff.field.min,
                        "max": ff.field.max, "pattern": ff.field.pattern, "max_length": ff.field.max_length,
                        "value": None} for ff in mf.fields],
            "materials": [{"id": fm.id, "required": fm.required, "required_when": cond(fm.required_when),
                           "fetched": False, "promisable": promisable(CATALOG, fm.id)} for fm in mf.materials]}


@pytest.mark.parametrize("code", MODELLED)
def test_the_demo_fills_every_modelled_bundles_form_as_the_api_accepts_it(code):
    person = e_license.DEMO_PEOPLE[person_for(code)]
    form = served(code)
    values = fill_form(form, Applicant(person.name, person.resident_id, person.address, person.region_code,
                                       person.birth_date), today=date.today())
    plan = materials_plan(form, values)
    assert set(plan.values()) <= {"upload"}  # no e-licence library here: every document is a scan
    errors = validate_form(CATALOG, code, values, {m: "doc-ref" for m in plan})
    assert errors == [], [str(e) for e in errors]


def test_all_means_every_modelled_bundle_and_a_wrong_code_is_named():
    assert chosen_bundles(CATALOG, [], True) == MODELLED
    assert chosen_bundles(CATALOG, ["retirement", "newborn", "retirement"], False) == ["retirement", "newborn"]
    with pytest.raises(ValueError, match="no modelled bundle 'no_such_bundle'; choose from: .*newborn"):
        chosen_bundles(CATALOG, ["newborn", "no_such_bundle"], False)


def test_each_bundle_is_filed_by_a_person_it_fits_and_nobody_files_too_many():
    who = dict(applicants(MODELLED))
    assert who["newborn"] == "wang_fang" and who["retirement"] == "zhang_wei"
    per_person: dict[str, int] = {}
    for person in who.values():
        per_person[person] = per_person.get(person, 0) + 1
    assert max(per_person.values()) < 10  # the API's default submission rate per subject and minute
    assert set(who.values()) <= set(ROTATION) | {"wang_fang", "zhang_wei", "liu_li", "li_qiang"}
