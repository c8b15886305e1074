"""A filled-in newborn application (synthetic people, valid checksums) for tests, the demo and the benchmark."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

from catalog.validators import resident_id_check_char
from events.envelope import Actor, Event, new_event


def resident_id(region: str = "440203", born: date = date(1993, 5, 17), seq: str = "128") -> str:
    first17 = f"{region}{born:%Y%m%d}{seq}"
    return first17 + resident_id_check_char(first17)


def as_event_form(values: dict) -> dict[str, str]:
    """The event's form is text: booleans as true/false, everything else as written."""
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in values.items()}


def newborn_form(today: date | None = None) -> dict:
    today = today or date.today()
    return {
        "child_name": "李小满", "child_sex": "female", "birth_date": (today - timedelta(days=3)).isoformat(),
        "birth_hospital": "韶关市妇幼保健院", "mother_name": "王芳", "contact_mobile": "13800138000",
        "residence_address": "广东省韶关市武江区惠民南路1号", "mother_resident_id": resident_id(),
        "father_known": False, "parents_married": False, "household_address": "广东省韶关市武江区惠民南路1号",
        "region_code": "440203", "bank_name": "中国工商银行", "bank_account_no": "6222020200112233445",
        "registration_parent": "mother", "mailing_address": "广东省韶关市武江区惠民南路1号",
    }


def newborn_materials(promised: tuple[str, ...] = ()) -> list[dict]:
    mats = [
        {"code": "mother_id_card", "source": "fetched", "ref": "EL-ID-0001"},
        {"code": "household_register", "source": "fetched", "ref": "EL-HR-0001"},
        {"code": "medical_invoice", "source": "uploaded", "ref": "doc-invoice-1"},
        {"code": "discharge_summary", "source": "uploaded", "ref": "doc-discharge-1"},
    ]
    for m in mats:
        if m["code"] in promised:
            m.update(source="promised", ref=None)
    return mats


def submission(case_id: str | None = None, *, promised: tuple[str, ...] = (), services=None,
               channel: str = "online") -> Event:
    from catalog.loader import load_catalog

    case_id = case_id or f"case-{uuid.uuid4().hex[:12]}"
    services = services or list(load_catalog().select(bundle_code="newborn").services)
    return new_event(
        "ApplicationSubmitted", case_id,
        {"bundle_code": "newborn", "services": services, "form": as_event_form(newborn_form()),
         "materials": newborn_materials(promised), "receipt_no": f"R-{case_id[-8:]}", "idempotency_key": None},
        actor=Actor("p_test_applicant", "applicant", channel), region_code="440203",
    )
