"""Each service's register and how it issues a record: the per-service part of the simulation.

`REGISTERS` maps a service to the table it writes (migration 0006) and a small function that
makes the record's number, the outputs the decision returns and the register's own columns.
A service with no entry (bundles beyond the newborn one) writes `department_generic_records`
(the department's rows of it), each output numbered in its catalog format (formats.py) or, with
none, generically, so a simulated department can decide any service of the catalog; a rule-decided
service (免批秒办) also records `decided_by = 'rule'` and what it relied on (migration 0015).

Number formats (plausible, not official):
  childbirth_registration_no  SY + region + year + 6 digits       SY4402032025000001
  birth_certificate_no        O + province/city digits + 6 digits  O440000001 (letter + 9 digits)
  birth_medical_certificate   EL-BMC- + certificate number        (the e-license, 电子证照)
  vaccination_record_no       YM + region + year + 6 digits
  child_resident_id           GB 11643, 18 characters             (numbers.issue_resident_id)
  medical_insurance_enrolment_no  YB + region + 10 digits
  social_security_card_no     A + 8 digits                        (the card number, 9 characters)
No number has 18 digits in a row: the log masker would take it for a resident ID.
  premium_payment_no          SP + region + year + 7 digits
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from department_adapters.sdk import InvalidTask

from .numbers import issue_resident_id, next_value

GENERIC_TABLE = "department_generic_records"
#: 2024/2025 individual contribution to 城乡居民医保 (national minimum standard, yuan per year)
RESIDENT_PREMIUM_YUAN = Decimal("400.00")
#: 新生儿家庭访视: the first home visit within 7 days of discharge (基本公共卫生服务规范)
FIRST_HOME_VISIT_DAYS = 7


class NumberSource(Protocol):
    """Where an issuing function's numbers come from when not straight from the counters
    (numbers.Recorder / numbers.Allocated: a batch takes all its numbers at once)."""

    def number(self, counter: str) -> int: ...

    def resident_id(self, region: str, born: date, sex: str) -> str: ...


@dataclass(frozen=True)
class Issue:
    """What an issuing function may read, and the transaction to take numbers in."""
    conn: psycopg.Connection
    department: str
    service_id: str
    task_id: str
    case_id: str
    region: str                    # 6-digit region code (行政区划代码) of the task
    fields: Mapping[str, str]
    inputs: Mapping[str, str]
    today: date
    numbers: NumberSource | None = None   # None: each number taken from its counter when asked

    def number(self, counter: str) -> int:
        if self.numbers is not None:
            return self.numbers.number(counter)
        value = next_value(self.conn, counter)
        assert value is not None  # uncapped counters always give a value
        return value

    def resident_id(self, born: date, sex: str) -> str:
        """A new resident ID for a person born on `born`, registered in this task's region."""
        if self.numbers is not None:
            return self.numbers.resident_id(self.region, born, sex)
        return issue_resident_id(self.conn, self.region, born, sex)

    def birth_date(self, required: bool = False) -> date | None:
        raw = self.fields.get("birth_date")
        if not raw:
            if required:
                raise InvalidTask("required field birth_date is missing")
            return None
        try:
            born = date.fromisoformat(raw)
        except ValueError:
            raise InvalidTask("field birth_date is not an ISO date") from None
        if born > self.today:
            raise InvalidTask("field birth_date lies in the future")
        return born


@dataclass(frozen=True)
class Record:
    record_no: str
    outputs: dict[str, str]
    columns: dict[str, Any] = field(default_factory=dict)
    region: str | None = None  # when the record's region differs from the task's


@dataclass(frozen=True)
class Register:
    table: str
    issue: Callable[[Issue], Record]


# -- the issuing functions ---------------------------------------------------------------
def _childbirth_registration(i: Issue) -> Record:
    no = f"SY{i.region}{i.today:%Y}{i.number('health.childbirth_registration_no'):06d}"
    return Record(no, {"childbirth_registration_no": no})


def _birth_certificate(i: Issue) -> Record:
    no = f"O{i.region[:3]}{i.number(f'health.birth_certificate_no:{i.region[:3]}'):06d}"
    e_license = f"EL-BMC-{no}"
    return Record(no, {"birth_certificate_no": no, "birth_medical_certificate": e_license},
                  {"e_license_no": e_license, "birth_date": i.birth_date(), "child_sex": i.fields.get("child_sex")})


def _parenting_guidance(i: Issue) -> Record:
    born = i.birth_date()
    no = f"YE{i.region}{i.number('health.parenting_guidance'):08d}"
    return Record(no, {}, {"birth_date": born,
                           "first_home_visit_by": born + timedelta(days=FIRST_HOME_VISIT_DAYS) if born else None})


def _vaccination_record(i: Issue) -> Record:
    no = f"YM{i.region}{i.today:%Y}{i.number('disease_control.vaccination_record_no'):06d}"
    return Record(no, {"vaccination_record_no": no}, {"birth_date": i.birth_date()})


def _birth_registration(i: Issue) -> Record:
    born = i.birth_date(required=True)
    sex = i.fields.get("child_sex", "")
    rid = i.resident_id(born, sex)
    return Record(rid, {"child_resident_id": rid},
                  {"birth_date": born, "child_sex": sex, "registration_parent": i.fields.get("registration_parent"),
                   "birth_certificate_no": i.inputs.get("birth_certificate_no")},
                  region=rid[:6])


def _medical_insurance_enrolment(i: Issue) -> Record:
    no = f"YB{i.region}{i.number('medical_insurance.enrolment_no'):010d}"
    return Record(no, {"medical_insurance_enrolment_no": no}, {"child_resident_id": i.inputs.get("child_resident_id")})


def _childbirth_reimbursement(i: Issue) -> Record:
    no = f"BX{i.region}{i.today:%Y}{i.number('medical_insurance.reimbursement_no'):07d}"
    return Record(no, {}, {"birth_certificate_no": i.inputs.get("birth_certificate_no")})


def _social_security_card(i: Issue) -> Record:
    no = f"A{i.number('hrss.social_security_card_no'):08d}"
    return Record(no, {"social_security_card_no": no}, {"child_resident_id": i.inputs.get("child_resident_id")})


def _newborn_premium(i: Issue) -> Record:
    no = f"SP{i.region}{i.today:%Y}{i.number('tax.premium_payment_no'):07d}"
    return Record(no, {"premium_payment_no": no},
                  {"child_resident_id": i.inputs.get("child_resident_id"),
                   "medical_insurance_enrolment_no": i.inputs.get("medical_insurance_enrolment_no"),
                   "amount_yuan": RESIDENT_PREMIUM_YUAN})


REGISTERS: dict[str, Register] = {
    "health.childbirth_registration": Register("health_childbirth_registrations", _childbirth_registration),
    "health.birth_certificate": Register("health_birth_certificates", _birth_certificate),
    "health.parenting_guidance": Register("health_parenting_guidance", _parenting_guidance),
    "disease_control.vaccination_record": Register("disease_control_vaccination_records", _vaccination_record),
    "police.birth_registration": Register("police_household_register", _birth_registration),
    "medical_insurance.enrolment": Register("medical_insurance_enrolments", _medical_insurance_enrolment),
    "medical_insurance.childbirth_reimbursement": Register("medical_insurance_reimbursements",
                                                           _childbirth_reimbursement),
    "hrss.social_security_card": Register("hrss_social_security_cards", _social_security_card),
    "tax.newborn_premium": Register("tax_premium_declarations", _newborn_premium),
}


# -- any other service ------------------------------------------------------------------
def abbreviation(name: str) -> str:
    """`business_license_no` → `BLN`: a readable prefix for generic numbers."""
    return "".join(w[0] for w in name.replace(".", "_").split("_") if w).upper()


def generic_value(output: str, region: str, n: int, e_license: bool) -> str:
    return f"EL-{abbreviation(output)}-{region}-{n:08d}" if e_license else f"{abbreviation(output)}{region}{n:08d}"


def make_generic(produces: tuple[str, ...], e_licenses: frozenset[str], catalog: Any = None,
                 auto: Any = None) -> Callable[[Issue], Record]:
    """Any service's register: each output in its catalog format (formats.py) where the catalog
    gives one, else a generic number; a rule-decided service (免批秒办) records what it relied on."""
    from . import automatic, formats

    def issue(i: Issue) -> Record:
        n = i.number(f"generic:{i.service_id}")
        outputs: dict[str, str] = {}
        columns: dict[str, Any] = {"department": i.department}
        relied_on = automatic.basis(catalog, auto, i.fields, i.inputs) if auto is not None and catalog else None
        if relied_on is not None:
            columns.update(decided_by="rule", basis=Jsonb(relied_on))
        numbered: list[str] = []   # outputs that are numbers of this record (not a check's answer)
        for o in produces:
            if relied_on is not None and o == auto.basis:
                outputs[o] = automatic.basis_text(catalog, relied_on)
                continue
            value = formats.output_value(catalog, o, region=i.region, today=i.today, n=n, fields=i.fields) \
                if catalog is not None and o not in e_licenses else None
            if value is None or formats.is_number(catalog, o):
                numbered.append(value or generic_value(o, i.region, n, o in e_licenses))
            outputs[o] = value if value else generic_value(o, i.region, n, o in e_licenses)
        record_no = next(iter(numbered), None) or f"{abbreviation(i.service_id)}{i.region}{n:08d}"
        return Record(record_no, outputs, columns)
    return issue


def register_for(service_id: str, produces: tuple[str, ...] = (), e_licenses: frozenset[str] = frozenset(), *,
                 catalog: Any = None, auto: Any = None) -> Register:
    return REGISTERS.get(service_id) or Register(GENERIC_TABLE, make_generic(produces, e_licenses, catalog, auto))


# -- writing and reading ------------------------------------------------------------------
# statements rendered once per table (and column set), not at every call
@lru_cache(maxsize=None)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns))).as_string()


@lru_cache(maxsize=None)
def _void_sql(table: str) -> str:
    where = "department = %s AND task_id = %s AND status = 'valid'" if table == GENERIC_TABLE \
        else "task_id = %s AND status = 'valid'"
    return (sql.SQL("UPDATE {} SET status = 'cancelled', cancelled_at = now() WHERE ").format(sql.Identifier(table))
            + sql.SQL(where)).as_string()


@lru_cache(maxsize=None)
def _find_sql(table: str) -> str:
    return sql.SQL("SELECT * FROM {} WHERE task_id = %s").format(sql.Identifier(table)).as_string()


def _columns(issue: Issue, record: Record) -> dict[str, Any]:
    return {
        "record_no": record.record_no, "task_id": issue.task_id, "case_id": issue.case_id,
        "service_id": issue.service_id, "region_code": record.region or issue.region,
        "outputs": Jsonb(record.outputs), **record.columns,
    }


def insert(conn: psycopg.Connection, table: str, issue: Issue, record: Record) -> None:
    cols = _columns(issue, record)
    conn.execute(_insert_sql(table, tuple(cols)), list(cols.values()))


def insert_many(conn: psycopg.Connection, records: Sequence[tuple[str, Issue, Record]]) -> None:
    """`insert` for many (table, issue, record), one statement per table and column set, in
    their order within it (pipelined by psycopg: no round trip each)."""
    groups: dict[tuple[str, tuple[str, ...]], list[list[Any]]] = {}
    for table, issue, record in records:
        cols = _columns(issue, record)
        groups.setdefault((table, tuple(cols)), []).append(list(cols.values()))
    for (table, names), rows in groups.items():
        if len(rows) == 1:
            conn.execute(_insert_sql(table, names), rows[0])
        else:
            conn.cursor().executemany(_insert_sql(table, names), rows)


def void(conn: psycopg.Connection, table: str, task_id: str, department: str) -> int:
    """Mark the task's record cancelled; returns how many records changed (0 or 1)."""
    params = [department, task_id] if table == GENERIC_TABLE else [task_id]
    return conn.execute(_void_sql(table), params).rowcount


def find(conn: psycopg.Connection, table: str, task_id: str) -> dict[str, Any] | None:
    """The record a task left in a register (for operators and tests), as a dict."""
    cur = conn.execute(_find_sql(table), (task_id,))
    row = cur.fetchone()
    return dict(zip([c.name for c in cur.description], row)) if row else None
