"""Subscriptions as data: the shipped file loads, is grounded where it claims to be, and the
cascade's minimisation rule (`targets`) never hands a department a field it does not keep."""
from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.loader import CatalogError, load_catalog
from catalog.subscriptions import load_subscriptions

SUBS = load_subscriptions()
CHANGEABLE = ("name", "address", "legal_representative_name", "business_scope", "registered_capital", "company_type")


def test_the_shipped_subscriptions_load_and_name_catalog_departments():
    departments = set(load_catalog().departments)
    assert set(SUBS.departments()) <= departments
    # 上海's six (税务, 人社, 医保, 公积金, 公安, with the bank notice) plus customs and commerce
    assert set(SUBS.departments("company")) == {"tax", "hrss", "medical_insurance", "housing_fund", "police", "bank",
                                                "customs", "commerce"}
    assert set(SUBS.departments("person")) == {"police", "hrss", "medical_insurance", "housing_fund", "civil_affairs",
                                               "funeral", "tax"}
    assert SUBS.register("company").master == "market_regulation"
    assert "market_regulation" not in SUBS.departments("company")


def test_counts_are_the_ones_the_file_documents():
    # subscriptions.yaml's header states these; 上海 reports 6 departments and 77 fields
    assert SUBS.pair_count("company") == 63
    assert SUBS.pair_count("person") == 23


def test_every_changeable_item_reaches_tax_and_each_one_reaches_someone_else():
    for f in CHANGEABLE:
        assert f in SUBS.fields_for("tax", "company")
        assert len(SUBS.targets("company", {f})) >= 2


def test_a_change_no_department_keeps_creates_no_target():
    assert SUBS.targets("company", set()) == {}
    only_funeral_and_police = SUBS.targets("person", {"death_certificate_no"})
    assert set(only_funeral_and_police) == {"funeral", "police"}
    move = SUBS.targets("person", {"household_address", "household_region_code", "household_moved_on"})
    assert "funeral" not in move and "housing_fund" not in move


@given(st.sampled_from(["company", "person"]).flatmap(
    lambda reg: st.tuples(st.just(reg), st.sets(st.sampled_from(sorted(SUBS.register(reg).fields))))))
def test_targets_are_exactly_the_changed_fields_each_department_keeps(case):
    register, changed = case
    targets = SUBS.targets(register, changed)
    for dept in SUBS.departments(register):
        mine = SUBS.fields_for(dept, register) & changed
        if mine:
            assert set(targets[dept]) == mine
        else:
            assert dept not in targets


def test_every_subscription_has_a_source_or_is_marked_an_estimate():
    for s in SUBS.subscriptions:
        assert s.source or (s.estimate and s.note), (s.department, s.register)


def _write(tmp_path, text: str):
    path = tmp_path / "subscriptions.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_mistakes_are_reported_with_file_and_line(tmp_path):
    path = _write(tmp_path, """\
        registers:
          company:
            zh: 登记簿
            en: Register
            key: USCC
            master: market_regulation
            fields:
              name: {zh: 名称, en: Name, type: text}
              kind: {zh: 类型, en: Kind, type: colour}
        subscriptions:
          tax:
            company:
              fields: [name, name, capital]
              source: somewhere
          martians:
            company: {fields: [name], source: x}
          market_regulation:
            company: {fields: [name], source: x}
          police:
            company: {fields: [name]}
        """)
    with pytest.raises(CatalogError) as err:
        load_subscriptions(path, departments={"tax", "police", "market_regulation"})
    text = str(err.value)
    assert "subscriptions.yaml:9: register company, field kind: type must be one of" in text
    assert "subscriptions.yaml:13: subscription tax/company: 'name' is listed twice" in text
    assert "subscriptions.yaml:13: subscription tax/company: 'capital' is not a field of the company register" in text
    assert "subscriptions.yaml:15: subscriptions: 'martians' is not a department" in text
    assert "market_regulation keeps the master register" in text
    assert "subscription police/company: give a `source`, or mark it `estimate: true`" in text
