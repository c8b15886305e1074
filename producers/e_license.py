"""电子证照 (e-licences, 免证办): documents the government already holds, fetched instead of uploaded.

A PostgreSQL stand-in for the e-licence library (tables `e_licenses`, `e_license_holders`,
migration 0005), seeded with synthetic demo people whose resident IDs carry valid GB 11643
checksums. Two uses:

- prefill: the merged form of a logged-in applicant is filled from the applicant's OWN
  licences (ID card, household register, marriage certificate), each value marked with the
  licence it came from;
- fetch: on submission every e-licence material the form needs is attached as source
  "fetched" with the licence number as ref. An ID card of someone other than the applicant
  is fetched only when that person is tied to the applicant by a marriage certificate
  (the father authorises the mother, as Xiamen's 闽政通 does); otherwise it must be uploaded.

Lookups go by the applicant's pseudonymous subject token, never by a resident ID typed into a
request — except to check that a spouse named in the form is the spouse on the certificate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg

from catalog.validators import resident_id_check_char

from .identity import subject_token

# material id → the licence kind that satisfies it, and whose licence it is
#   "self": the applicant's own;  "<field id>": the person whose resident ID that form field holds
MATERIAL_LICENCES: dict[str, tuple[str, str]] = {
    "applicant_id_card": ("id_card", "self"),
    "mother_id_card": ("id_card", "mother_resident_id"),
    "father_id_card": ("id_card", "father_resident_id"),
    "household_register": ("household_register", "self"),
    "marriage_certificate": ("marriage_certificate", "self"),
    "residence_permit": ("residence_permit", "self"),
    "property_certificate": ("property_certificate", "self"),
}
KIND_LABELS = {
    "id_card": ("居民身份证", "Resident identity card"),
    "household_register": ("居民户口簿", "Household register"),
    "marriage_certificate": ("结婚证", "Marriage certificate"),
    "residence_permit": ("居住证", "Residence permit"),
    "property_certificate": ("不动产权证书", "Real-estate title certificate"),
}


def _rid(region: str, born: str, seq: str) -> str:
    first17 = f"{region}{born}{seq}"
    return first17 + resident_id_check_char(first17)


@dataclass(frozen=True)
class DemoPerson:
    key: str
    name: str
    sex: str            # male | female (the 17th digit: odd male, even female)
    birth_date: str
    resident_id: str
    address: str
    region_code: str


# Synthetic people. The names are common, the IDs are computed, the addresses are public
# places: none of this describes a real person.
DEMO_PEOPLE: dict[str, DemoPerson] = {p.key: p for p in (
    DemoPerson("wang_fang", "王芳", "female", "1993-05-17", _rid("440203", "19930517", "128"),
               "广东省韶关市武江区惠民南路1号", "440203"),
    DemoPerson("li_qiang", "李强", "male", "1991-08-02", _rid("440203", "19910802", "135"),
               "广东省韶关市武江区惠民南路1号", "440203"),
    DemoPerson("zhang_wei", "张伟", "male", "1965-03-09", _rid("110105", "19650309", "019"),
               "北京市朝阳区朝阳门外大街2号", "110105"),
    DemoPerson("liu_li", "刘丽", "female", "1967-11-23", _rid("110105", "19671123", "046"),
               "北京市朝阳区朝阳门外大街2号", "110105"),
    DemoPerson("chen_jing", "陈静", "female", "1990-02-14", _rid("310104", "19900214", "022"),
               "上海市徐汇区漕溪北路3号", "310104"),
    DemoPerson("zhao_min", "赵敏", "male", "1985-07-30", _rid("510107", "19850730", "071"),
               "四川省成都市武侯区人民南路4号", "510107"),
)}
# (head, members) of each household register; (spouse, spouse, date) of each marriage
_HOUSEHOLDS = {
    "EL-HR-440203-0001": ("wang_fang", ("li_qiang",)),
    "EL-HR-110105-0001": ("zhang_wei", ("liu_li",)),
    "EL-HR-310104-0001": ("chen_jing", ()),
    "EL-HR-510107-0001": ("zhao_min", ()),
}
_MARRIAGES = {
    "EL-MC-440203-0001": ("li_qiang", "wang_fang", "2019-10-01"),
    "EL-MC-110105-0001": ("zhang_wei", "liu_li", "1990-05-20"),
}
_ISSUERS = {"id_card": "police", "household_register": "police", "marriage_certificate": "civil_affairs",
            "residence_permit": "police", "property_certificate": "natural_resources"}


def id_card_no(person: DemoPerson) -> str:
    return f"EL-ID-{person.region_code}-{person.resident_id[-4:]}"


def _demo_licences() -> list[tuple[str, str, str, dict, list[tuple[DemoPerson, str]]]]:
    """(licence_no, kind, issued_on, data, [(holder, relation)]) for every demo licence."""
    out = []
    for p in DEMO_PEOPLE.values():
        out.append((id_card_no(p), "id_card", "2015-06-01",
                    {"name": p.name, "sex": p.sex, "ethnicity": "汉", "birth_date": p.birth_date,
                     "address": p.address, "resident_id": p.resident_id,
                     "authority": f"{p.region_code}公安局"}, [(p, "holder")]))
    for no, (head_key, member_keys) in _HOUSEHOLDS.items():
        head = DEMO_PEOPLE[head_key]
        members = [head] + [DEMO_PEOPLE[k] for k in member_keys]
        out.append((no, "household_register", "2016-03-15",
                    {"address": head.address, "region_code": head.region_code, "household_type": "家庭户",
                     "head_name": head.name,
                     "members": [{"name": m.name, "resident_id": m.resident_id,
                                  "relation": "户主" if m is head else "配偶"} for m in members]},
                    [(head, "head")] + [(m, "member") for m in members[1:]]))
    for no, (a_key, b_key, registered) in _MARRIAGES.items():
        a, b = DEMO_PEOPLE[a_key], DEMO_PEOPLE[b_key]
        out.append((no, "marriage_certificate", registered,
                    {"registered_on": registered,
                     "spouses": [{"name": s.name, "resident_id": s.resident_id, "sex": s.sex} for s in (a, b)]},
                    [(a, "spouse"), (b, "spouse")]))
    return out


def seed_demo_people(conn: psycopg.Connection) -> int:
    """Insert (or refresh) the demo people's licences; idempotent. Returns the licence count.

    Holder tokens are recomputed on every call, so re-seeding after a change of
    ONETHING_PSEUDONYM_SECRET brings the lookups back in line.
    """
    licences = _demo_licences()
    with conn.transaction():
        store_licences(conn, [(no, kind, _ISSUERS[kind], issued_on, data, holders)
                              for no, kind, issued_on, data, holders in licences])
    return len(licences)


def store_licences(conn: psycopg.Connection,
                   licences: list[tuple[str, str, str, str, dict, list[tuple[DemoPerson, str]]]]) -> None:
    """(licence_no, kind, issuer, issued_on, data, [(holder, relation)]) into the library, each
    holder under the pseudonym of its resident ID; a licence already there is refreshed."""
    for no, kind, issuer, issued_on, data, holders in licences:
        conn.execute(
            "INSERT INTO e_licenses (licence_no, kind, issuer, issued_on, data, demo) "
            "VALUES (%s, %s, %s, %s, %s, true) ON CONFLICT (licence_no) DO UPDATE SET "
            "kind = EXCLUDED.kind, issuer = EXCLUDED.issuer, issued_on = EXCLUDED.issued_on, "
            "data = EXCLUDED.data, demo = true",
            (no, kind, issuer, issued_on, json.dumps(data, ensure_ascii=False)))
        for person, relation in holders:
            conn.execute(
                "INSERT INTO e_license_holders (licence_no, holder_resident_id, holder_token, relation) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (licence_no, holder_resident_id) DO UPDATE SET "
                "holder_token = EXCLUDED.holder_token, relation = EXCLUDED.relation",
                (no, person.resident_id, subject_token(person.resident_id), relation))


@dataclass(frozen=True)
class Licence:
    licence_no: str
    kind: str
    data: dict[str, Any]
    relation: str
    holder_resident_id: str


@dataclass
class Wallet:
    """One applicant's own licences, and what can be read off them."""
    licences: list[Licence] = field(default_factory=list)

    def first(self, kind: str) -> Licence | None:
        return next((lic for lic in self.licences if lic.kind == kind), None)

    @property
    def id_card(self) -> Licence | None:
        return self.first("id_card")

    @property
    def marriage(self) -> Licence | None:
        return self.first("marriage_certificate")

    def spouse(self) -> dict[str, Any] | None:
        """The other party of the applicant's marriage certificate."""
        m, me = self.marriage, self.id_card
        if m is None:
            return None
        own = me.data["resident_id"] if me else m.holder_resident_id
        return next((s for s in m.data.get("spouses", []) if s["resident_id"] != own), None)


def wallet(conn: psycopg.Connection, holder_token: str) -> Wallet:
    rows = conn.execute(
        "SELECT l.licence_no, l.kind, l.data, h.relation, h.holder_resident_id FROM e_license_holders h "
        "JOIN e_licenses l USING (licence_no) WHERE h.holder_token = %s "
        "AND (l.valid_until IS NULL OR l.valid_until >= current_date) ORDER BY l.kind, l.licence_no",
        (holder_token,)).fetchall()
    return Wallet([Licence(no, kind, data, rel, rid) for no, kind, data, rel, rid in rows])


def _id_card_of(conn: psycopg.Connection, resident_id: str) -> str | None:
    row = conn.execute(
        "SELECT l.licence_no FROM e_license_holders h JOIN e_licenses l USING (licence_no) "
        "WHERE h.holder_resident_id = %s AND l.kind = 'id_card' "
        "AND (l.valid_until IS NULL OR l.valid_until >= current_date) ORDER BY l.issued_on DESC LIMIT 1",
        (resident_id,)).fetchone()
    return row[0] if row else None


# -- prefill -------------------------------------------------------------------------------

def _person(lic: Licence | None) -> dict[str, Any] | None:
    return lic.data if lic else None


def prefill(wallet_: Wallet, field_ids: set[str]) -> dict[str, tuple[Any, Licence]]:
    """field id → (value, the licence it was read from), for fields of this form only."""
    out: dict[str, tuple[Any, Licence]] = {}
    me_lic, marriage, household = wallet_.id_card, wallet_.marriage, wallet_.first("household_register")
    me = _person(me_lic)
    spouse = wallet_.spouse()

    def put(fid: str, value: Any, lic: Licence | None) -> None:
        if fid in field_ids and value not in (None, "") and lic is not None:
            out[fid] = (value, lic)

    if me:
        for prefix in ("applicant", "guardian"):
            put(f"{prefix}_name", me["name"], me_lic)
            put(f"{prefix}_resident_id", me["resident_id"], me_lic)
        put("residence_address", me.get("address"), me_lic)
        put("mailing_address", me.get("address"), me_lic)
    for parent, sex in (("mother", "female"), ("father", "male")):
        if me and me.get("sex") == sex:
            put(f"{parent}_name", me["name"], me_lic)
            put(f"{parent}_resident_id", me["resident_id"], me_lic)
        elif spouse and spouse.get("sex") == sex:
            put(f"{parent}_name", spouse["name"], marriage)
            put(f"{parent}_resident_id", spouse["resident_id"], marriage)
    if marriage:
        put("parents_married", True, marriage)
        put("father_known", True, marriage)
    if household:
        put("household_address", household.data.get("address"), household)
        put("region_code", household.data.get("region_code"), household)
    return out


# -- fetching materials ----------------------------------------------------------------------

def fetch_material(conn: psycopg.Connection, material_id: str, wallet_: Wallet,
                   form: dict[str, Any]) -> str | None:
    """The licence number that satisfies an e-licence material for this applicant, or None."""
    spec = MATERIAL_LICENCES.get(material_id)
    if spec is None:
        return None
    kind, whose = spec
    if whose == "self":
        lic = wallet_.first(kind)
        return lic.licence_no if lic else None
    # someone named in the form: the applicant themself, or the spouse on their certificate
    rid = form.get(whose)
    if not isinstance(rid, str) or not rid:
        return None
    me = wallet_.id_card
    if me and me.data.get("resident_id") == rid:
        return me.licence_no
    spouse = wallet_.spouse()
    if spouse and spouse.get("resident_id") == rid:
        return _id_card_of(conn, rid)
    return None


def material_preview(material_id: str, wallet_: Wallet,
                     prefilled: dict[str, tuple[Any, Licence]]) -> dict[str, Any] | None:
    """At form time, whether an e-licence material will be fetched: {"licence_no", "holder"}.

    The spouse's own licence number is not shown to the applicant; it is resolved on submission.
    """
    spec = MATERIAL_LICENCES.get(material_id)
    if spec is None:
        return None
    kind, whose = spec
    if whose == "self":
        lic = wallet_.first(kind)
        return {"licence_no": lic.licence_no, "holder": "self"} if lic else None
    me = wallet_.id_card
    value = prefilled.get(whose)
    if me and value and value[0] == me.data.get("resident_id"):
        return {"licence_no": me.licence_no, "holder": "self"}
    if value and value[1].kind == "marriage_certificate":
        return {"licence_no": None, "holder": "spouse"}
    return None
