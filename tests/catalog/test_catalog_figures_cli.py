"""Reform figures and the `catalog` CLI, as an operator or policy officer would use them."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from catalog import load_catalog
from catalog.cli import catalog
from catalog.figures import all_figures, bundle_figures, programme_figures


def run(*args: str):
    result = CliRunner().invoke(catalog, list(args), env={"COLUMNS": "250"})
    return result


def test_figures_of_a_small_catalog_follow_the_definitions(write_catalog):
    cat = load_catalog(write_catalog())
    f = bundle_figures(cat, "birth")
    # before: cert asks id_card+invoice (2), register id_card+invoice (2), guidance none → 4;
    # after: id_card is an e-license, invoice asked once → 1
    assert (f.materials.before, f.materials.after) == (4, 1)
    assert (f.time_days.before, f.time_days.after) == (16, 3)   # 5+10+1 in a row; cert 1 → register 2
    assert f.critical_path == ("health.cert", "police.register")
    assert (f.trips.before, f.trips.after) == (2, 0)            # two departments; nobody in person
    assert "time_days" in f.estimated                            # police.register's limit is an estimate
    assert f.materials.reduction == pytest.approx(0.75)


def test_computed_promises_fit_each_bundles_published_total(shipped):
    for f in all_figures(shipped):
        total = shipped.bundle(f.bundle).promised_total
        if total is not None:
            assert f.time_days.after <= total.value, f.bundle
        assert f.time_days.after < f.time_days.before and f.materials.after <= f.materials.before, f.bundle
    newborn = bundle_figures(shipped, "newborn")
    assert newborn.time_days.after == 5 and newborn.materials.after == 2 and newborn.trips.after == 1
    assert newborn.departments >= 5
    prog = programme_figures(shipped)
    assert prog.bundles == len(shipped.bundles) == 29 and {c.place for c in prog.claims} == {"鹤山", "江西"}


def test_catalog_figures_prints_one_table_for_all_bundles(shipped):
    result = run("figures")
    assert result.exit_code == 0, result.output
    for code, b in shipped.bundles.items():
        assert (code in result.output) == b.modelled
    assert "32 → 5 (-84%)" in result.output             # 青海's claim next to newborn
    assert "鹤山: time_days -88%; materials -55%; trips -86%" in result.output
    newborn_row = next(line for line in result.output.splitlines() if line.startswith("│ newborn"))
    assert "15 → 2 (-87%)" in newborn_row and "35 → 5 (-86%)" in newborn_row


def test_catalog_show_newborn(shipped):
    result = run("show", "newborn")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "新生儿出生" in out
    for dept in ("health", "police", "medical_insurance", "hrss", "tax", "disease_control"):
        assert f"│ {dept}" in out  # a row in the per-department table
    assert "6 departments" in out
    assert "Dispatch waves (并联审批): [disease_control.vaccination_record, health.birth_certificate" in out
    assert "mother_resident_id" in out and "母亲公民身份号码" in out
    assert "e-license, fetched (免证办)" in out
    assert "child_resident_id (from police.birth_registration)" in out
    figures = out[out.index("Reform figures"):]
    assert "claimed: 青海" in figures and "35 → 5 (-86%)" in figures and "32 → 5 (-84%)" in figures
    assert "9 → 2 (-78%)" in figures


def test_catalog_show_list_and_combine_for_people():
    listed = run("list")
    assert listed.exit_code == 0 and "credit_report_query" in listed.output and "end to end" in listed.output
    assert "no (listed only)" not in listed.output   # issue 14: every bundle is modelled
    unknown = run("show", "moon_landing")
    assert unknown.exit_code != 0 and "no bundle 'moon_landing'" in unknown.output
    combined = run("combine", "tax.newborn_premium")
    assert combined.exit_code == 0
    assert "+ added police.birth_registration because tax.newborn_premium needs its output child_resident_id" \
        in combined.output
    bad = run("combine", "tax.nothing")
    assert bad.exit_code != 0 and "unknown service 'tax.nothing'" in bad.output


def test_catalog_validate_points_at_the_broken_line(write_catalog, tmp_path):
    ok = run("validate", str(write_catalog()))
    assert ok.exit_code == 0 and "ok: 1 bundles" in ok.output
    services = tmp_path / "data" / "services.yaml"
    services.write_text(services.read_text(encoding="utf-8").replace("department: police", "department: polise"),
                        encoding="utf-8")
    broken = run("validate", str(tmp_path))
    assert broken.exit_code == 1
    assert "services.yaml:" in broken.output and "unknown department 'polise'" in broken.output
    assert run("--path", str(tmp_path), "list").exit_code != 0


def test_catalog_calendar_checks_an_arrangement_file(tmp_path):
    good = tmp_path / "2030.yaml"
    good.write_text("year: 2030\nsource: test\nholidays: [2030-02-04]\nmake_up_workdays: [2030-02-09]\n")
    result = run("calendar", "--file", str(good))
    assert result.exit_code == 0 and "ok: 2030: 1 holidays, 1 make-up working days" in result.output
    good.write_text("year: 2030\nsource: test\nmake_up_workdays: [2030-02-04]\n")
    result = run("calendar", "--file", str(good))
    assert result.exit_code != 0 and "is a weekday already" in result.output
    covered = run("calendar", "2025", "2031")
    assert "2025: builtin" in covered.output and "2031: weekends only" in covered.output
