"""Life-event rules (catalog/rules/, catalog/proactive_rules.py) and what they call for
(projectors/proactive_plan.py): pure, no broker, no database."""
from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.loader import CatalogError, load_catalog
from catalog.proactive_rules import load_rules
from catalog.working_days import add_working_days, is_working_day
from events import codec
from events.compatibility import check_full_transitive
from events.schema_store import SCHEMAS_DIR, SchemaStore
from projectors import proactive_plan as pp

CATALOG = load_catalog()
RULES = load_rules(CATALOG)
NEW_TYPES = ("ServiceOffered", "BenefitGranted", "OfferAccepted", "OfferDeclined", "OfferLapsed")


def test_at_least_eight_rules_across_the_bundles_each_with_a_source_or_marked_estimate():
    assert len(RULES) >= 8
    bundles = {r.bundle for r in RULES} | {"enterprise" for r in RULES if r.trigger.register == "company"}
    assert {"newborn", "retirement", "veteran_discharge", "disability_services", "after_death", "enterprise"} <= bundles
    assert {r.outcome.kind for r in RULES} == {"grant", "offer", "pre_service"}
    assert {r.trigger.kind for r in RULES} == {"register", "decision", "date"}
    for r in RULES:
        assert r.source or (r.estimate and r.note), r.code


def _write(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "bad.yaml").write_text(text, encoding="utf-8")
    return d


def test_a_bad_rule_is_refused_with_file_line_and_what_is_wrong(tmp_path):
    d = _write(tmp_path, """\
- code: r1
  zh: 一
  en: One
  trigger:
    date: {licence: passport, field: birth_date, years: 80}
  outcome:
    grant:
      department: civil_affairs
      benefit: {code: b, zh: 津贴, en: Allowance}
      decline_within: {working_days: 10, estimate: true}
  source: "x"
- code: r2
  zh: 二
  en: Two
  bundle: retirement
  trigger:
    register: {register: person, change_kind: born}
  outcome:
    offer:
      presets: {no_such_field: x}
      lapse_after: {working_days: 60}
""")
    with pytest.raises(CatalogError) as exc:
        load_rules(CATALOG, d)
    text = str(exc.value)
    assert "bad.yaml:5: rule r1: trigger.date: licence must be one of" in text
    assert "bad.yaml:17: rule r2: trigger.register: change_kind must be one of" in text
    assert "rule r2: give a `source`" in text
    assert "rule r2: outcome.offer: presets: 'no_such_field' is not a field of the retirement form" in text
    assert "outcome.offer.lapse_after: give a `source` or mark it `estimate: true`" in text


def test_an_unknown_service_department_or_recipient_is_named(tmp_path):
    d = _write(tmp_path, """\
- code: r3
  zh: 三
  en: Three
  trigger:
    decision: {service: police.no_such_service}
  to: neighbour
  outcome:
    grant:
      department: ministry_of_magic
      benefit: {code: b, zh: 津贴, en: Allowance}
      decline_within: {working_days: 10, estimate: true}
  estimate: true
""")
    with pytest.raises(CatalogError) as exc:
        load_rules(CATALOG, d)
    text = str(exc.value)
    assert "bad.yaml:5: rule r3: trigger.decision: 'police.no_such_service' is not a service of the catalog" in text
    assert "bad.yaml:6: rule r3: to must be one of" in text
    assert "rule r3: outcome.grant: 'ministry_of_magic' is not a department of the catalog" in text
    assert "rule r3: an estimate needs a `note`" in text


# -- dates ------------------------------------------------------------------------------------------
RETIREMENT = RULES.get("retirement_offer").trigger
EIGHTY = RULES.get("senior_allowance_80").trigger
DISCHARGE = RULES.get("veteran_pre_service").trigger


def test_retirement_age_by_sex_and_job_type():
    # the 2025 reform (catalog/retirement_age.py, tests/test_retirement_age.py): 60y1m for a man born 1965-01..04
    assert pp.trigger_date(RETIREMENT, {"birth_date": "1965-03-09", "sex": "male"}) == date(2025, 4, 9)
    assert pp.trigger_date(RETIREMENT, {"birth_date": "1970-01-02", "sex": "female", "job_type": "worker"}) \
        == date(2020, 1, 2)   # born before 1975: the original 50
    # the job type unknown: 干部's later age (never offered too early), 55y1m from 1970-01
    assert pp.trigger_date(RETIREMENT, {"birth_date": "1970-01-02", "sex": "female"}) == date(2025, 2, 2)
    assert pp.trigger_date(RETIREMENT, {"birth_date": "1970-01-02"}) is None   # no sex recorded: no age
    assert pp.trigger_date(EIGHTY, {"birth_date": "1944-02-29"}) == date(2024, 2, 29)
    assert pp.trigger_date(EIGHTY, {"birth_date": "1948-02-29"}) == date(2028, 2, 29)
    assert pp.trigger_date(EIGHTY, {"birth_date": "1947-02-28"}) == date(2027, 2, 28)
    assert pp.trigger_date(EIGHTY, {"birth_date": "not a date"}) is None


def test_a_discharge_list_is_due_thirty_days_ahead_and_for_a_while_after():
    on = date(2026, 6, 30)
    assert not pp.due(DISCHARGE, on, on - timedelta(days=31))
    assert pp.due(DISCHARGE, on, on - timedelta(days=30))
    assert pp.due(DISCHARGE, on, on + timedelta(days=30))
    assert not pp.due(DISCHARGE, on, on + timedelta(days=31))


@settings(max_examples=300, deadline=None)
@given(born=st.dates(date(1900, 1, 1), date(2020, 12, 31)), years=st.integers(1, 100))
def test_add_years_lands_on_the_same_day_or_the_end_of_february(born, years):
    d = pp.add_years(born, years)
    assert d.year == born.year + years
    assert (d.month, d.day) == (born.month, born.day) or (born.month, born.day, d.day) == (2, 29, 28)


@settings(max_examples=200, deadline=None)
@given(on=st.dates(date(2024, 1, 1), date(2026, 12, 31)), today=st.dates(date(2024, 1, 1), date(2026, 12, 31)))
def test_an_item_opens_no_earlier_than_today_and_closes_sixty_working_days_after_it_opens(on, today):
    rule = RULES.get("veteran_pre_service")
    p = pp.plan(rule, subject="s", recipient="s", trigger_kind="date", trigger_key=pp.date_trigger_key(on),
                trigger_on=on, today=today, region_code="440203", items=rule.outcome.items)
    assert p.available_on == max(on, today)
    assert p.closes_on == add_working_days(p.available_on, 60)
    assert is_working_day(p.closes_on)


@given(rule=st.sampled_from(sorted(r.code for r in RULES)), subject=st.text(min_size=1, max_size=20),
       key=st.text(min_size=1, max_size=20))
def test_the_item_id_depends_on_rule_subject_and_trigger_only(rule, subject, key):
    assert pp.item_id(rule, subject, key) == pp.item_id(rule, subject, key)
    assert pp.item_id(rule, subject, key) != pp.item_id(rule, subject + "x", key)
    assert pp.item_id(rule, subject, key) != pp.item_id(rule, subject, key + "x")


def test_conditions_not_applied_licence_and_alive():
    retire = RULES.get("retirement_offer")
    assert pp.eligible(retire, pp.Facts())
    assert not pp.eligible(retire, pp.Facts(applied=frozenset({"hrss.pension_retirement"})))
    reward = RULES.get("only_child_parent_reward")
    assert not pp.eligible(reward, pp.Facts())
    assert pp.eligible(reward, pp.Facts(licences=frozenset({"only_child_certificate"})))
    assert not pp.eligible(RULES.get("senior_allowance_80"), pp.Facts(deceased=True))


def test_the_pre_service_list_drops_an_id_card_valid_past_the_discharge():
    rule = RULES.get("veteran_pre_service")
    on = date(2026, 6, 30)
    services = lambda until: [i.service for i in pp.list_items(rule, {"id_card": until}, on)]  # noqa: E731
    assert "police.resident_id_card_issue" in services(date(2026, 1, 1))     # expired before the day
    assert "police.resident_id_card_issue" in services(None)                 # no card at all
    assert "police.resident_id_card_issue" not in services(date(2036, 1, 1))
    assert {"hrss.veteran_social_security_card", "medical_insurance.veteran_transfer"} <= set(services(None))


def test_register_and_decision_triggers_match_only_their_event():
    moved = RULES.get("enterprise_relocation_offer").trigger
    assert pp.register_matches(moved, {"register": "company", "change_kind": "changed", "changes": {"address": "x"}})
    assert not pp.register_matches(moved, {"register": "company", "change_kind": "changed", "changes": {"name": "x"}})
    birth = RULES.get("newborn_medical_insurance").trigger
    ok = {"kind": "case_service", "service_id": "police.birth_registration", "outcome": "approved"}
    assert pp.decision_matches(birth, ok)
    assert not pp.decision_matches(birth, ok | {"outcome": "rejected"})
    assert not pp.decision_matches(birth, ok | {"kind": "register_sync"})


# -- the new events: published, fully compatible, round-trip ----------------------------------------
def test_the_five_events_are_published_full_transitive_and_round_trip():
    store = SchemaStore(SCHEMAS_DIR)
    for t in NEW_TYPES:
        versions = store.by_type[t]
        for v in versions:
            assert not check_full_transitive(v.schema, versions), t
    rule = RULES.get("retirement_offer")
    p = pp.plan(rule, subject="tok", recipient="tok", trigger_kind="date", trigger_key="date:2025-03-09",
                trigger_on=date(2025, 3, 9), today=date(2025, 3, 10), region_code="110105",
                services=("hrss.pension_retirement",), prefilled_fields=("applicant_name",))
    for event in (pp.item_event(p), pp.lapsed_event(p.item_id, rule.code, "tok", "110105", date(2025, 6, 9)),
                  pp.item_event(pp.plan(RULES.get("senior_allowance_80"), subject="t", recipient="t",
                                        trigger_kind="date", trigger_key="date:2026-01-05",
                                        trigger_on=date(2026, 1, 5), today=date(2026, 1, 5), region_code="110105"))):
        back = codec.decode(codec.encode(event))
        assert back.payload == event.payload and back.id == event.id


def test_onething_proactive_rules_lists_them_and_fails_with_file_line(tmp_path):
    from click.testing import CliRunner

    from projectors.proactive_cli import proactive

    ok = CliRunner().invoke(proactive, ["rules"])
    assert ok.exit_code == 0 and f"{len(RULES)} rules" in ok.output and "veteran_pre_service" in ok.output
    d = _write(tmp_path, "- code: x\n  zh: 叉\n  en: X\n  trigger: {date: {licence: id_card, field: birth_date}}\n")
    bad = CliRunner().invoke(proactive, ["rules", "--dir", str(d)])
    assert bad.exit_code == 1 and "bad.yaml:4: rule x: trigger.date: give exactly one of years" in bad.output
