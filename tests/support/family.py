"""A family of the test's own in the e-licence library: a mother and a father with fresh resident
IDs (valid check characters), their identity cards, one household register and a marriage
certificate, as the demo people have (producers/e_license.py) — removed afterwards.

For tests whose subject must be no other test's: an erasure judges every case of its subject, and
under pytest-xdist another worker files as the demo people at the same time."""
from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import psycopg

from infra.samples import resident_id
from producers.e_license import DemoPerson, store_licences

ADDRESS, REGION = "广东省韶关市武江区惠民南路1号", "440203"


def _person(key: str, name: str, sex: str, born: date) -> DemoPerson:
    odd = random.randrange(0, 50) * 2 + (1 if sex == "male" else 0)
    rid = resident_id(REGION, born, f"{random.randrange(10):d}{odd:02d}")
    return DemoPerson(key, name, sex, born.isoformat(), rid, ADDRESS, REGION)


@contextmanager
def fresh_family(database_url: str) -> Iterator[tuple[DemoPerson, DemoPerson]]:
    mother = _person("t_mother", "王芳", "female", date(1993, 5, 17))
    father = _person("t_father", "李强", "male", date(1991, 8, 2))
    prefix = f"EL-T-FAM-{uuid.uuid4().hex[:8]}-"
    licences = [
        *[(f"{prefix}ID-{p.key}", "id_card", "police", "2015-06-01",
           {"name": p.name, "sex": p.sex, "ethnicity": "汉", "birth_date": p.birth_date, "address": p.address,
            "resident_id": p.resident_id, "authority": f"{p.region_code}公安局"}, [(p, "holder")])
          for p in (mother, father)],
        (f"{prefix}HR", "household_register", "police", "2016-03-15",
         {"address": ADDRESS, "region_code": REGION, "household_type": "家庭户", "head_name": mother.name,
          "members": [{"name": mother.name, "resident_id": mother.resident_id, "relation": "户主"},
                      {"name": father.name, "resident_id": father.resident_id, "relation": "配偶"}]},
         [(mother, "head"), (father, "member")]),
        (f"{prefix}MC", "marriage_certificate", "civil_affairs", "2019-10-01",
         {"registered_on": "2019-10-01",
          "spouses": [{"name": s.name, "resident_id": s.resident_id, "sex": s.sex} for s in (father, mother)]},
         [(father, "spouse"), (mother, "spouse")]),
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        store_licences(conn, licences)
    try:
        yield mother, father
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM e_license_holders WHERE licence_no LIKE %s", (prefix + "%",))
            conn.execute("DELETE FROM e_licenses WHERE licence_no LIKE %s", (prefix + "%",))
