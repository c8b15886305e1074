"""The proactive processor's daily tick against the real PostgreSQL, the day moved by ONETHING_TODAY:
an offer made on one day lapses the working day after its 60 working days, once; a scan on any
later day — or the same day again, as a replay would — never makes it anew. The tick's events
are collected from its checkpoint step (the runtime sends them; tests/test_proactive_e2e.py
covers that with the processes running)."""
from __future__ import annotations

from datetime import date

import psycopg
import pytest

from catalog.working_days import add_working_days
from infra import migrations
from projectors.checkpoint import Step
from projectors.proactive import ProactiveProcessor

from .test_proactive_e2e import LICENCE_PREFIX, Person, _id_card, _licence

pytestmark = [pytest.mark.postgres]
OFFERED_ON = date(2025, 3, 10)


def _tick(conn, processor: ProactiveProcessor, day: date, monkeypatch) -> list:
    monkeypatch.setenv("ONETHING_TODAY", day.isoformat())
    processor._last_scan = None   # a new day, or a restarted member: the scan runs
    step = Step(conn)
    with conn.transaction():
        processor.tick(step)
    return step.out


def test_an_offer_lapses_after_sixty_working_days_once_and_is_never_made_again(database_url, monkeypatch):
    migrations.migrate(database_url)
    retiree = Person(date(1965, 2, 7), "male", "何文军")   # 60 years and 1 month on 2025-03-07 (the 2025 reform)
    processor = ProactiveProcessor(name="proactive")
    with psycopg.connect(database_url, autocommit=True) as conn:
        _id_card(conn, retiree)
        _licence(conn, retiree, "household_register", {"address": "北京市朝阳区朝阳门外大街2号", "region_code": "110105",
                                                       "members": []}, relation="head")
        try:
            out = [e for _t, e in _tick(conn, processor, OFFERED_ON, monkeypatch) if e.key == retiree.token]
            (offered,) = out
            assert offered.type == "ServiceOffered" and offered.payload["rule"] == "retirement_offer"
            lapses_on = add_working_days(OFFERED_ON, 60)
            assert offered.payload["lapses_on"] == lapses_on
            assert {"applicant_name", "applicant_resident_id", "household_address"} <= set(
                offered.payload["prefilled_fields"])
            offer_id = offered.payload["offer_id"]

            assert not [e for _t, e in _tick(conn, processor, OFFERED_ON, monkeypatch) if e.key == retiree.token]
            assert not [e for _t, e in _tick(conn, processor, lapses_on, monkeypatch) if e.key == retiree.token]
            state = conn.execute("SELECT state FROM proactive_items WHERE item_id = %s", (offer_id,)).fetchone()[0]
            assert state == "offered", "still open on its last day"

            after = date.fromordinal(lapses_on.toordinal() + 1)
            lapsed = [e for _t, e in _tick(conn, processor, after, monkeypatch) if e.key == retiree.token]
            assert [(e.type, e.payload["offer_id"]) for e in lapsed] == [("OfferLapsed", offer_id)]
            assert conn.execute("SELECT state FROM proactive_items WHERE item_id = %s",
                                (offer_id,)).fetchone()[0] == "lapsed"
            for day in (after, OFFERED_ON):   # later, and the day of the trigger again (a replay's view)
                assert not [e for _t, e in _tick(conn, processor, day, monkeypatch) if e.key == retiree.token]
            assert conn.execute("SELECT count(*) FROM proactive_items WHERE subject_token = %s",
                                (retiree.token,)).fetchone()[0] == 1
        finally:
            conn.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (LICENCE_PREFIX + "%",))
